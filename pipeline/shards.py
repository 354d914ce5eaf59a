"""Teacher logit shards on disk: naming, manifest, loading with verification, and inspection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io import sha256_file

MANIFEST_NAME = "_manifest.json"  # leading "_": pyarrow/pandas skip it when reading the folder
SHARD_GLOB = "part-*.parquet"


class ShardError(ValueError):
    """Shards are missing, corrupted, or disagree with their manifest; the message names the file."""


def shard_name(index: int) -> str:
    """File name of shard ``index``: part-00000.parquet, part-00001.parquet, ..."""
    return f"part-{index:05d}.parquet"


def read_manifest(shard_dir: Path) -> dict[str, Any]:
    """The manifest written by the score stage."""
    path = shard_dir / MANIFEST_NAME
    if not path.is_file():
        raise ShardError(f"{path}: manifest not found; run the score stage first")
    return json.loads(path.read_text(encoding="utf-8"))


def verify_shards(shard_dir: Path) -> list[str]:
    """Problems found comparing shard files with the manifest (empty list = all good)."""
    manifest = read_manifest(shard_dir)
    problems = []
    listed = {entry["file"] for entry in manifest["shards"]}
    for path in sorted(shard_dir.glob(SHARD_GLOB)):
        if path.name not in listed:
            problems.append(f"{path}: not listed in the manifest")
    for entry in manifest["shards"]:
        path = shard_dir / entry["file"]
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{path}: checksum mismatch (corrupted or modified since scoring)")
    return problems


def load_shards(shard_dir: Path, columns: list[str] | None = None, verify: bool = True) -> pa.Table:
    """All shards of a task as one table, in row order; by default checked against the manifest first."""
    if verify:
        problems = verify_shards(shard_dir)
        if problems:
            raise ShardError("; ".join(problems))
    manifest = read_manifest(shard_dir)
    tables = []
    for entry in manifest["shards"]:
        path = shard_dir / entry["file"]
        try:
            tables.append(pq.read_table(path, columns=columns))
        except (pa.ArrowInvalid, OSError) as exc:
            raise ShardError(f"{path}: unreadable shard: {exc}") from None
    return pa.concat_tables(tables)


def logits_matrix(table: pa.Table) -> np.ndarray:
    """The ``logits`` column as a float32 array of shape [rows, num_outputs]."""
    column = table.column("logits").combine_chunks()
    width = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width).astype(np.float32, copy=False)

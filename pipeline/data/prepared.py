"""Reading the prepare stage's normalised Parquet splits."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import paths
from pipeline.data.tasks import Task

if TYPE_CHECKING:
    import pyarrow as pa


def dev_splits(task: Task, prepared_dir: Path = paths.PREPARED_DIR) -> dict[str, pa.Table]:
    """The task's prepared dev split(s), by name."""
    return _read_splits(task, task.dev_splits, prepared_dir)


def eval_splits(task: Task, prepared_dir: Path = paths.PREPARED_DIR) -> dict[str, pa.Table]:
    """The splits evaluate scores, by name: dev split(s) first, then the task's test split when it has one."""
    return _read_splits(task, task.eval_splits, prepared_dir)


def _read_splits(task: Task, splits: tuple[str, ...], prepared_dir: Path) -> dict[str, pa.Table]:
    import pyarrow.parquet as pq

    return {split: pq.read_table(paths.prepared_split(task.name, split, prepared_dir)) for split in splits}

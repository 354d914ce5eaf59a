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
    import pyarrow.parquet as pq

    return {split: pq.read_table(paths.prepared_split(task.name, split, prepared_dir)) for split in task.dev_splits}

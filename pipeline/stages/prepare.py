"""``prepare`` stage: validate a task's GLUE TSV files, write normalised Parquet splits (optionally a seeded subset)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline import paths
from pipeline.data.glue import read_glue_tsv
from pipeline.data.io import write_parquet
from pipeline.data.tasks import Task
from pipeline.errors import GlueFormatError
from pipeline.params import GLUE_DIR_ENV, Params

log = logging.getLogger(__name__)


def subsample(table: pa.Table, max_rows: int | None, seed: int) -> pa.Table:
    """A seeded random subset of at most ``max_rows`` rows, in original order (whole table if None)."""
    if max_rows is None or table.num_rows <= max_rows:
        return table
    keep = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=max_rows, replace=False))
    return table.take(pa.array(keep))


def run_prepare(task: Task, params: Params, out_root: Path = paths.PREPARED_DIR) -> dict[str, int]:
    """Validate and convert every split of ``task``; return row counts per split."""
    glue_dir = params.data.resolved_glue_dir()
    task_dir = glue_dir / task.glue_dir_name
    if not task_dir.is_dir():
        raise GlueFormatError(
            f"{task_dir}: GLUE data folder for task {task.name} not found "
            f"(set data.glue_dir in params.yaml or the {GLUE_DIR_ENV} environment variable)"
        )
    tables = {split: read_glue_tsv(task, task_dir / f"{split}.tsv", params.data.skip_bad_rows) for split in task.splits}
    tables["train"] = subsample(tables["train"], params.data.max_train_examples, params.seed)
    for split, table in tables.items():
        write_parquet(table, paths.prepared_split(task.name, split, out_root))
        log.info("%s/%s: %d rows", task.name, split, table.num_rows)
    return {split: table.num_rows for split, table in tables.items()}

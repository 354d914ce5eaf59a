"""``baseline`` stage: the student BiLSTM trained on the labelled train split only, no teacher (the no-KD baseline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline import paths
from pipeline.data.tasks import Task
from pipeline.params import Params
from pipeline.training.device import (
    pick_device,
)
from pipeline.training.distributed import Processes
from pipeline.training.losses import supervised_loss_fn
from pipeline.training.student_data import _train_single_task, labels_and_mask


def train_baseline(
    task: Task, params: Params, prepared_dir: Path, teacher_dir: Path, out_dir: Path, log_dir: Path
) -> dict[str, Any]:
    """Train the same BiLSTM on the labelled train split only (CE, or MSE for regression); no teacher logits.

    ``teacher_dir`` is read only for the ``wordpiece`` tokenizer and embedding init.
    """
    table = pq.read_table(paths.prepared_split(task.name, "train", prepared_dir))
    targets = {"label": labels_and_mask(task, table.column("label"))[0]}
    return _train_single_task(
        task, params, params.baseline, table, targets, supervised_loss_fn(task),
        prepared_dir, teacher_dir, out_dir, log_dir, "baseline", Processes(0, 1, pick_device()),
    )  # fmt: skip

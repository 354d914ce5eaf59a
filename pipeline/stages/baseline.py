"""``baseline`` stage: the student BiLSTM trained on the labelled train split only, no teacher (the no-KD baseline);
DDP under a launcher, and a killed run resumes from its last epoch checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline import paths
from pipeline.data.tasks import Task
from pipeline.params import Params
from pipeline.training.checkpoint import CheckpointPlan, stage_checkpoint_dir
from pipeline.training.losses import supervised_loss_fn
from pipeline.training.student_data import labels_and_mask, train_single_task


def train_baseline(
    task: Task, params: Params, prepared_dir: Path, teacher_dir: Path, out_dir: Path, log_dir: Path,
    checkpoint_dir: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Train the same BiLSTM on the labelled train split only (CE, or MSE for regression); no teacher logits.

    ``teacher_dir`` is read only for the ``wordpiece`` tokenizer and embedding init. Under ``torchrun`` /
    ``accelerate launch`` every process trains on its share of each batch; the main process saves and logs. Epochs
    are checkpointed in ``checkpoint_dir`` (default: ``checkpoints/baseline/<task>`` when ``out_dir`` is the
    workspace's ``models/baseline/<task>``, else none).
    """
    train_path = paths.prepared_split(task.name, "train", prepared_dir)
    table = pq.read_table(train_path)
    targets = {"label": labels_and_mask(task, table.column("label"))[0]}
    plan = CheckpointPlan(
        stage_checkpoint_dir(checkpoint_dir, [out_dir], [paths.baseline_dir(task.name)], "baseline", task.name),
        {"seed": params.seed, "threads": params.threads, "baseline": params.baseline, "bilstm": params.bilstm},
        [train_path, paths.prepared_split(task.name, task.dev_splits[0], prepared_dir), teacher_dir],
    )
    return train_single_task(
        task, params, params.baseline, table, targets, supervised_loss_fn(task),
        prepared_dir, teacher_dir, out_dir, log_dir, "baseline", plan,
    )  # fmt: skip

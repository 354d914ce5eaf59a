"""``student`` stage: distil the teacher's logit shards into Tang et al.'s BiLSTM student (DDP under a launcher)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data.tasks import Task
from pipeline.params import Params
from pipeline.training.device import (
    pick_device,
)
from pipeline.training.distributed import processes
from pipeline.training.losses import distillation_loss_fn
from pipeline.training.student_data import _train_single_task, distillation_targets, read_shards


def train_student(
    task: Task, params: Params, shard_dir: Path, prepared_dir: Path, teacher_dir: Path, out_dir: Path, log_dir: Path
) -> dict[str, Any]:
    """Distil the teacher's logits (all shard rows) into the BiLSTM student; save it; return a summary.

    Under ``torchrun`` / ``accelerate launch`` every process reads and trains on its part of the shards (DDP).
    """
    part = processes(pick_device())
    table = read_shards(task, shard_dir, part)
    return _train_single_task(
        task, params, params.student, table, distillation_targets(task, table),
        distillation_loss_fn(task, params.student.alpha), prepared_dir, teacher_dir, out_dir, log_dir, "student", part,
    )  # fmt: skip

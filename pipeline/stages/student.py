"""``student`` stage: distil the teacher's logit shards into Tang et al.'s BiLSTM student (DDP under a launcher);
a killed run resumes from its last epoch checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.data.tasks import Task
from pipeline.params import Params
from pipeline.training.checkpoint import CheckpointPlan, stage_checkpoint_dir
from pipeline.training.losses import distillation_loss_fn
from pipeline.training.student_data import distillation_targets, read_shards, train_single_task


def train_student(
    task: Task, params: Params, shard_dir: Path, prepared_dir: Path, teacher_dir: Path, out_dir: Path, log_dir: Path,
    checkpoint_dir: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Distil the teacher's logits (all shard rows) into the BiLSTM student; save it; return a summary.

    Under ``torchrun`` / ``accelerate launch`` every process reads all shards and trains on its share of each batch
    (DDP). Epochs are checkpointed in ``checkpoint_dir`` (default: ``checkpoints/student/<task>`` when ``out_dir``
    is the workspace's ``models/student/<task>``, else none).
    """
    table = read_shards(task, shard_dir)
    plan = CheckpointPlan(
        stage_checkpoint_dir(checkpoint_dir, [out_dir], [paths.student_dir(task.name)], "student", task.name),
        {"seed": params.seed, "threads": params.threads, "student": params.student, "bilstm": params.bilstm},
        [shard_dir, paths.prepared_split(task.name, task.dev_splits[0], prepared_dir), teacher_dir],
    )
    return train_single_task(
        task, params, params.student, table, distillation_targets(task, table, params.student.logit_temperature),
        distillation_loss_fn(task, params.student.alpha), prepared_dir, teacher_dir, out_dir, log_dir, "student", plan,
    )  # fmt: skip

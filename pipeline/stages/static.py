"""``static`` stage: distil the teacher's logit shards into the static student (model2vec-initialised token
embeddings, mean-pooled, an MLP head; ``pipeline.students.static``) with the KD loop the BiLSTM student uses; DDP
under a launcher, and a killed run resumes from its last epoch checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.data.tasks import Task
from pipeline.params import Params
from pipeline.serving.teacher import resolve_checkpoint
from pipeline.training.checkpoint import CheckpointPlan, stage_checkpoint_dir
from pipeline.training.losses import distillation_loss_fn
from pipeline.training.student_data import distillation_targets, read_shards, train_single_task


def distill_source(params: Params, teacher_dir: Path) -> Path:
    """The folder model2vec distils the embeddings from (``static.distill_from``): the fine-tuned teacher
    ``teacher_dir``, or ``teacher.checkpoint`` resolved to its folder (both carry the same tokenizer)."""
    if params.static.distill_from == "teacher":
        return teacher_dir
    return Path(resolve_checkpoint(params.teacher.checkpoint))


def train_static(
    task: Task, params: Params, shard_dir: Path, prepared_dir: Path, teacher_dir: Path, out_dir: Path, log_dir: Path,
    checkpoint_dir: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Distil the teacher's logits (all shard rows) into the static student; save it; return a summary.

    Epochs are checkpointed in ``checkpoint_dir`` (default: ``checkpoints/static/<task>`` when ``out_dir`` is the
    workspace's ``models/static/<task>``, else none).
    """
    hp = params.static.training
    source = distill_source(params, teacher_dir)
    table = read_shards(task, shard_dir)
    fingerprinted: dict[str, Any] = {"seed": params.seed, "threads": params.threads, "static": params.static}
    if params.static.distill_from == "checkpoint":
        fingerprinted["teacher.checkpoint"] = params.teacher.checkpoint
    plan = CheckpointPlan(
        stage_checkpoint_dir(checkpoint_dir, [out_dir], [paths.static_dir(task.name)], "static", task.name),
        fingerprinted, [shard_dir, paths.prepared_split(task.name, task.dev_splits[0], prepared_dir), source],
    )  # fmt: skip
    return train_single_task(
        task, params, hp, table, distillation_targets(task, table, hp.logit_temperature),
        distillation_loss_fn(task, hp.alpha), prepared_dir, source, out_dir, log_dir, "static", plan,
        architecture="static", hp_key="static.training",
    )  # fmt: skip

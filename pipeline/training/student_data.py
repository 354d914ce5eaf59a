"""What the student stages train on, and the single-task training run they share.

Logit shards (``read_shards``) or labelled splits become ``fit``'s ``TaskData``: encoded inputs, per-row targets and a
loss. ``train_single_task`` builds Tang et al.'s BiLSTM for one task and fits it on the Accelerate stack (one process,
or DDP under a launcher: every process reads all rows and trains on its share of each batch), checkpointing every
epoch; the main process saves the student and logs, and the checkpoints go once the student is saved.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from pipeline import paths
from pipeline.data.schema import table_texts
from pipeline.data.shards import load_shards, logits_matrix
from pipeline.data.tasks import Task
from pipeline.errors import ShardError
from pipeline.params import Params, TrainParams
from pipeline.students.architectures import get_architecture, save_student
from pipeline.students.base import StudentModel, count_parameters
from pipeline.students.encoding import EncodedInputs, StudentEncoder
from pipeline.training.accelerator import accelerated
from pipeline.training.checkpoint import CheckpointPlan
from pipeline.training.device import (
    seed_everything,
    use_threads,
)
from pipeline.training.fit import FitResult, TaskData, fit
from pipeline.training.losses import LossFn

log = logging.getLogger(__name__)
SHARD_COLUMNS = ["source_id", "is_original", "text_a", "text_b", "label", "logits"]


def labels_and_mask(task: Task, column: pa.ChunkedArray) -> tuple[torch.Tensor, torch.Tensor]:
    """Label tensor (nulls filled with 0) and its validity mask."""
    dtype = torch.float32 if task.is_regression else torch.long
    values = torch.tensor(pc.fill_null(column, 0).to_numpy(), dtype=dtype)
    return values, torch.from_numpy(pc.is_valid(column).to_numpy())


def encode_table(encoder: StudentEncoder, task: Task, table: pa.Table) -> EncodedInputs:
    """The model inputs for a table with ``text_a`` (and ``text_b`` for pairs)."""
    return encoder.encode_inputs(*table_texts(task, table))


def all_texts(task: Task, table: pa.Table) -> Iterator[str]:
    """Every sentence of the table, lazily (only word vocabularies read them)."""
    for column in ("text_a", "text_b") if task.is_pair else ("text_a",):
        yield from table.column(column).to_pylist()


def distillation_targets(task: Task, table: pa.Table, logit_temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """Per-row targets of shard rows: teacher logits (a classification task's divided by ``logit_temperature``),
    gold labels (0 where missing) and where labels exist."""
    labels, label_mask = labels_and_mask(task, table.column("label"))
    teacher = torch.tensor(logits_matrix(table))
    if not task.is_regression:
        teacher = teacher / logit_temperature
    return {"teacher": teacher, "label": labels, "label_mask": label_mask}


def dev_split(task: Task, prepared_dir: Path) -> tuple[str, pa.Table]:
    """Name and table of the task's first dev split (early stopping and reported dev metrics)."""
    name = task.dev_splits[0]
    return name, pq.read_table(paths.prepared_split(task.name, name, prepared_dir))


def build_task_data(
    task: Task, encoder: StudentEncoder, train: pa.Table, targets: dict[str, torch.Tensor], loss_fn: LossFn,
    prepared_dir: Path,
) -> TaskData:  # fmt: skip
    """Encode a task's training table and its dev split for ``fit``."""
    _, dev = dev_split(task, prepared_dir)
    return TaskData(
        task, encode_table(encoder, task, train), targets, loss_fn, encode_table(encoder, task, dev),
        dev.column("label").to_numpy(),
    )  # fmt: skip


def read_shards(task: Task, shard_dir: Path) -> pa.Table:
    """The columns students need from all the logit shards, verified against the score manifest."""
    table = load_shards(shard_dir, columns=SHARD_COLUMNS)
    width = table.schema.field("logits").type.list_size
    if width != task.num_outputs:
        raise ShardError(f"{shard_dir}: logits have {width} values per row, task {task.name} needs {task.num_outputs}")
    return table


def training_summary(model: StudentModel, result: FitResult, train_rows: dict[str, int]) -> dict[str, Any]:
    """What a saved student records about its training: rows, the length rule used, epochs, best dev metrics,
    parameter counts."""
    return {
        "train_rows": train_rows,
        "length": result.length,
        "epochs_run": len(result.curve),
        "best_epoch": result.best_epoch,
        "dev": result.best_metrics,
        "parameters": count_parameters(model, include_embeddings=False),
        "parameters_with_embeddings": count_parameters(model, include_embeddings=True),
    }


def train_single_task(
    task: Task, params: Params, hp: TrainParams, train: pa.Table, targets: dict[str, torch.Tensor], loss_fn: LossFn,
    prepared_dir: Path, teacher_dir: Path, out_dir: Path, log_dir: Path, desc: str, plan: CheckpointPlan,
    architecture: str = "bilstm", hp_key: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Build a student of ``architecture`` (Tang et al.'s BiLSTM by default) for one task, fit it (checkpoints per
    ``plan``), save it (main process) and delete the checkpoints; return the training summary. ``hp_key``: the params
    key of ``hp`` named in the log (default ``desc``)."""
    with accelerated(hp.mixed_precision, several_tasks=False) as accelerator:
        seed_everything(params.seed)
        use_threads(params.threads)
        model, encoder = get_architecture(architecture).build(
            params, [task], teacher_dir, all_texts(task, train), params.seed
        )
        data = {task.name: build_task_data(task, encoder, train, targets, loss_fn, prepared_dir)}
        checkpoints = plan.open(accelerator)
        result = fit(
            model, data, hp, params.seed, accelerator, log_dir, desc=f"{desc} {task.name}", checkpoints=checkpoints,
            length_keys=(f"{hp_key or desc}.epochs", f"{hp_key or desc}.steps"),
        )  # fmt: skip
        summary = training_summary(model, result, {task.name: train.num_rows})
        if accelerator.is_main_process:
            save_student(model, encoder, out_dir, summary)
        if checkpoints is not None:
            checkpoints.remove(accelerator)
        accelerator.wait_for_everyone()
    return summary

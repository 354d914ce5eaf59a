"""One training loop for every student: single-task (Tang et al.) and multi-task (MKD), any architecture.

``fit`` trains a ``StudentModel`` on one or several tasks: each mini-batch comes from one task (``TaskBatchSampler``),
the loss is that task's (distillation from teacher logits, or supervised on gold labels), and after every epoch the
dev split of every task is scored; early stopping follows the mean of the tasks' primary dev metrics and the best
epoch's weights are kept. ``train_student`` and ``train_baseline`` are the single-task stages built on it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from pipeline import paths
from pipeline.batching import length_sorted_batches
from pipeline.device import autocast, autocast_dtype, pick_device, seed_everything, training_precision, use_threads
from pipeline.distributed import Processes, common_count, processes, shard_part, take
from pipeline.metrics import compute_metrics
from pipeline.params import Params, TrainParams
from pipeline.sampling import SamplingScheme, TaskBatchSampler
from pipeline.shards import ShardError, load_shards, logits_matrix, shard_files
from pipeline.student.architectures import get_architecture, save_student
from pipeline.student.base import StudentModel, count_parameters
from pipeline.student.encoding import EncodedInputs, StudentEncoder, WordEncoder
from pipeline.student.optim import build_optimizers
from pipeline.tasks import Task
from pipeline.teacher import table_texts
from pipeline.tracking import TrainingLog, training_log

log = logging.getLogger(__name__)

# Batch size for dev-set evaluation after each epoch.
EVAL_BATCH_SIZE = 512
SHARD_COLUMNS = ["source_id", "is_original", "text_a", "text_b", "label", "logits"]

LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class TaskData:
    """One task's training inputs, per-row targets and loss, and its dev inputs with gold labels."""

    task: Task
    train: EncodedInputs
    targets: dict[str, torch.Tensor]
    loss_fn: LossFn
    dev: EncodedInputs
    dev_labels: np.ndarray


@dataclass(frozen=True)
class FitResult:
    """Per-epoch records (``epoch``, ``train/loss``, ``dev/...``), the best epoch and its dev metrics per task."""

    curve: list[dict[str, float]]
    best_epoch: int
    best_metrics: dict[str, dict[str, float]]


def supervised_loss(logits: torch.Tensor, targets: torch.Tensor, regression: bool) -> torch.Tensor:
    """Cross-entropy to class indices, or MSE of the single output to scores (regression)."""
    if regression:
        return F.mse_loss(logits[:, 0], targets.float())
    return F.cross_entropy(logits, targets)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    label_mask: torch.Tensor,
    alpha: float,
    regression: bool,
) -> torch.Tensor:
    """``alpha * CE + (1 - alpha) * MSE(student_logits, teacher_logits)`` (Tang et al. eq. 3).

    The hard target is the gold label where ``label_mask`` is true, else the teacher's argmax (its score for
    regression, where the "CE" term is an MSE). The logit MSE is the mean over all elements (batch x logits).
    """
    if regression:
        teacher_hard = teacher_logits[:, 0]
        labels = labels.to(teacher_hard.dtype)
    else:
        teacher_hard = teacher_logits.argmax(dim=-1)
    hard = torch.where(label_mask, labels, teacher_hard)
    ce = supervised_loss(student_logits, hard, regression)
    return alpha * ce + (1 - alpha) * F.mse_loss(student_logits, teacher_logits)


def distillation_loss_fn(task: Task, alpha: float) -> LossFn:
    """The distillation loss over a batch's ``teacher``, ``label`` and ``label_mask`` targets."""

    def loss_fn(logits: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        return distillation_loss(
            logits, targets["teacher"], targets["label"], targets["label_mask"], alpha, task.is_regression
        )

    return loss_fn


def supervised_loss_fn(task: Task) -> LossFn:
    """The supervised loss over a batch's ``label`` targets (no teacher)."""

    def loss_fn(logits: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        return supervised_loss(logits, targets["label"], task.is_regression)

    return loss_fn


@torch.inference_mode()
def predict_encoded(model: StudentModel, task: str, inputs: EncodedInputs, batch_size: int) -> np.ndarray:
    """Logits ``[n, num_outputs]`` (float32, input order) of ``task``'s head, batched by length, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    out = np.empty((len(inputs), model.tasks[task].num_outputs), dtype=np.float32)
    for rows in length_sorted_batches(inputs.lengths, batch_size):
        out[rows] = model(task, inputs.batch(rows, device)).float().cpu().numpy()
    return out


def predict(
    model: StudentModel,
    encoder: StudentEncoder,
    task: str,
    text_a: Sequence[str],
    text_b: Sequence[str] | None,
    batch_size: int,
) -> np.ndarray:
    """Logits of ``task`` for raw texts (tokenisation included)."""
    return predict_encoded(model, task, encoder.encode_inputs(text_a, text_b), batch_size)


def training_autocast_dtype(device: torch.device, mixed_precision: str) -> torch.dtype | None:
    """Autocast dtype of student training: bf16 for ``bf16``, and for ``auto`` where bf16 is native (CUDA with bf16,
    a CPU with AVX512-BF16 or AMX); None (fp32) otherwise. Students never train in fp16 (there is no loss scaling)."""
    if mixed_precision == "auto":
        return torch.bfloat16 if training_precision(device, "auto") == "bf16" else None
    return autocast_dtype(device, mixed_precision)


def _metric_names(task: Task, metrics: dict[str, float], multi_task: bool) -> dict[str, float]:
    prefix = f"dev/{task.name}/" if multi_task else "dev/"
    return {prefix + name: value for name, value in metrics.items()}


def fit(
    model: StudentModel,
    data: dict[str, TaskData],
    hp: TrainParams,
    seed: int,
    tracker: TrainingLog,
    sampling: SamplingScheme = "proportional",
    temperature: float = 1.0,
    desc: str = "student",
    part: Processes | None = None,
) -> FitResult:
    """Train ``model`` on every task in ``data`` with early stopping; load the best epoch's weights into it.

    The early-stopping score is the mean over tasks of each task's primary dev metric (a NaN counts as worst).
    In a data-parallel run (``part.distributed``; ``data`` holds this process's training rows) the model is wrapped
    in DDP, its embedding tables get dense gradients (NCCL cannot all-reduce sparse ones), every process takes the
    same number of steps per epoch (the smallest count; each process's sampler is seeded with ``seed + index``)
    and every process scores the full dev sets, so all make the same early-stopping decisions.
    """
    part = part or Processes(0, 1, next(model.parameters()).device)
    device = part.device
    dtype = training_autocast_dtype(device, hp.mixed_precision)
    sampler = TaskBatchSampler(
        {name: d.train.lengths for name, d in data.items()},
        {name: hp.batch_size_for(d.task) for name, d in data.items()},
        sampling, temperature, seed + part.index,
    )  # fmt: skip
    steps_per_epoch = common_count(sampler.batches_per_epoch(), part)
    multi_task = len(data) > 1
    forward: torch.nn.Module = model
    if part.distributed:
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding):
                module.sparse = False
        forward = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=multi_task
        )
    optimizers, schedulers = build_optimizers(hp, model, hp.epochs * steps_per_epoch)
    if part.is_main:
        log.info("%s: %d process(es) on %s, autocast %s, %d steps per epoch",
                 desc, part.count, device, dtype or "off", steps_per_epoch)  # fmt: skip
    curve: list[dict[str, float]] = []
    best_score, best_epoch, best_state, best_metrics = -math.inf, 0, None, {}
    for epoch in range(1, hp.epochs + 1):
        model.train()
        total, rows_seen = torch.zeros((), device=device), 0
        batches = sampler.epoch()[:steps_per_epoch]
        for task, rows in tqdm(batches, desc=f"{desc} epoch {epoch}", unit="batch", disable=not part.is_main):
            batch_data = data[task]
            with autocast(device, dtype):
                logits = forward(task, batch_data.train.batch(rows, device))
            index = torch.from_numpy(rows)
            loss = batch_data.loss_fn(logits.float(), {k: t[index].to(device) for k, t in batch_data.targets.items()})
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            for scheduler in schedulers:
                scheduler.step()
            total += loss.detach() * len(rows)
            rows_seen += len(rows)
        metrics = {
            name: compute_metrics(d.task, predict_encoded(model, name, d.dev, EVAL_BATCH_SIZE), d.dev_labels)
            for name, d in data.items()
        }
        record = {"epoch": epoch, "train/loss": total.item() / rows_seen}
        for name, task_metrics in metrics.items():
            record.update(_metric_names(data[name].task, task_metrics, multi_task))
        curve.append(record)
        tracker.log_epoch({k: v for k, v in record.items() if k != "epoch"})
        log.info("%s epoch %d: %s", desc, epoch, record)
        primary = [metrics[name][d.task.primary_metric] for name, d in data.items()]
        score = -math.inf if any(math.isnan(value) for value in primary) else float(np.mean(primary))
        if best_state is None or score > best_score:
            best_score, best_epoch, best_metrics = score, epoch, metrics
            best_state = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
        elif epoch - best_epoch >= hp.patience:
            break
    assert best_state is not None  # hp.epochs >= 1
    model.load_state_dict(best_state)
    tracker.summary({"best_epoch": best_epoch, "epochs_run": len(curve), "best": best_metrics})
    return FitResult(curve, best_epoch, best_metrics)


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


def distillation_targets(task: Task, table: pa.Table) -> dict[str, torch.Tensor]:
    """Per-row targets of shard rows: teacher logits, gold labels (0 where missing) and where labels exist."""
    labels, label_mask = labels_and_mask(task, table.column("label"))
    return {"teacher": torch.tensor(logits_matrix(table)), "label": labels, "label_mask": label_mask}


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


def read_shards(task: Task, shard_dir: Path, part: Processes | None = None) -> pa.Table:
    """The columns students need from the logit shards (this process's part of them in a data-parallel run),
    verified against the score manifest."""
    part = part or Processes(0, 1, torch.device("cpu"))
    files, rows = shard_part(shard_files(shard_dir), part)
    if part.distributed:
        log.info("process %d of %d reads %s (rows %s)", part.index, part.count, ", ".join(files), rows)
    table = take(load_shards(shard_dir, columns=SHARD_COLUMNS, files=files), rows)
    width = table.schema.field("logits").type.list_size
    if width != task.num_outputs:
        raise ShardError(f"{shard_dir}: logits have {width} values per row, task {task.name} needs {task.num_outputs}")
    return table


def check_distributable(encoder: StudentEncoder, part: Processes) -> None:
    """Refuse a data-parallel run whose vocabulary was built from this process's rows (it would differ per process)."""
    if part.distributed and isinstance(encoder, WordEncoder):
        raise ValueError("data-parallel student training needs WordPiece embeddings (embeddings: wordpiece): a word "
                         "vocabulary built from each process's rows would differ between processes")


def training_summary(model: StudentModel, result: FitResult, train_rows: dict[str, int]) -> dict[str, Any]:
    """What a saved student records about its training: rows, epochs, best dev metrics, parameter counts."""
    return {
        "train_rows": train_rows,
        "epochs_run": len(result.curve),
        "best_epoch": result.best_epoch,
        "dev": result.best_metrics,
        "parameters": count_parameters(model, include_embeddings=False),
        "parameters_with_embeddings": count_parameters(model, include_embeddings=True),
    }


def _train_single_task(
    task: Task, params: Params, hp: TrainParams, train: pa.Table, targets: dict[str, torch.Tensor], loss_fn: LossFn,
    prepared_dir: Path, teacher_dir: Path, out_dir: Path, log_dir: Path, desc: str, part: Processes,
) -> dict[str, Any]:  # fmt: skip
    """Build Tang et al.'s BiLSTM for one task, fit it, save it (main process); return the training summary."""
    seed_everything(params.seed)
    use_threads(params.threads)
    model, encoder = get_architecture("bilstm").build(params, [task], teacher_dir, all_texts(task, train), params.seed)
    check_distributable(encoder, part)
    model.to(part.device)
    data = {task.name: build_task_data(task, encoder, train, targets, loss_fn, prepared_dir)}
    with training_log(log_dir, enabled=part.is_main) as tracker:
        result = fit(model, data, hp, params.seed, tracker, desc=f"{desc} {task.name}", part=part)
    summary = training_summary(model, result, {task.name: train.num_rows})
    if part.is_main:
        save_student(model, encoder, out_dir, summary)
    return summary


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

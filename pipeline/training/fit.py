"""The student training loop: any ``StudentModel`` on one or several tasks, early stopping on dev, best epoch kept."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from pipeline.data.metrics import compute_metrics
from pipeline.data.tasks import Task
from pipeline.params import TrainParams
from pipeline.students.base import StudentModel
from pipeline.students.encoding import EncodedInputs
from pipeline.students.inference import predict_encoded
from pipeline.training.device import (
    autocast,
    autocast_dtype,
    training_precision,
)
from pipeline.training.distributed import Processes, common_count
from pipeline.training.losses import LossFn
from pipeline.training.optim import build_optimizers
from pipeline.training.sampling import SamplingScheme, TaskBatchSampler
from pipeline.training.tracking import TrainingLog

# Batch size for dev-set evaluation after each epoch.
log = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 512


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

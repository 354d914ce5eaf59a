"""Teacher stages: fine-tune BERT sequence classifiers (one task, or several sharing one encoder); score text.

One training loop on Hugging Face Accelerate serves the single-task teacher (``python -m pipeline teacher``) and
the multi-task teacher (``python -m pipeline mt-teacher``, MT-DNN style): one encoder shared by one complete
``AutoModelForSequenceClassification`` per task, every mini-batch from one task (``pipeline.sampling``). The
single-task teacher is the one-task case. The same command runs in one process (CPU or one GPU) or as DDP under
``accelerate launch`` / ``torchrun``: every process builds the same global batch order from the seed and trains on
its own disjoint share of each batch (``pipeline.training.accelerator.process_rows``); only the main process
evaluates, logs (DVCLive) and saves. Given ``Checkpoints``, every epoch is checkpointed and a run continues after the
latest checkpoint's epoch, ending with the model an uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from pipeline import paths
from pipeline.data.metrics import compute_metrics
from pipeline.data.schema import table_texts
from pipeline.data.tasks import Task
from pipeline.params import TeacherParams
from pipeline.training.accelerator import RowTrace, process_rows
from pipeline.training.checkpoint import Checkpoints, Progress
from pipeline.training.sampling import TaskBatch, TaskBatchSampler
from pipeline.training.teacher_io import Encoded, batch_tensors, predict_logits, tokenize
from pipeline.training.tracking import training_log

log = logging.getLogger(__name__)

MAX_GRAD_NORM = 1.0
ADAMW_OPTIONS = {"fused": True}  # one fused kernel: 5.5x faster steps than foreach on CPU (MiniLM)
DEV_PRECISION_ON_CPU = "fp32"  # the dev evaluation during fine-tuning runs in full precision on CPU
OptimizerStep = list[TaskBatch]  # consecutive global batches whose gradients add up to one optimizer step


# ---- fine-tuning ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizedTask:
    """One task's tokenised training split (row ``i`` = row ``i`` of its train Parquet) and its dev split."""

    task: Task
    encoded: Encoded
    labels: np.ndarray
    dev: pa.Table

    def label_tensor(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        """Gold labels of ``rows``: float scores for regression, class indices otherwise."""
        dtype = torch.float32 if self.task.is_regression else torch.long
        return torch.as_tensor(self.labels[rows], dtype=dtype, device=device)


def load_task_data(
    task: Task, tokenizer: PreTrainedTokenizerBase, prepared_dir: Path, max_length: int
) -> TokenizedTask:
    """Tokenise the task's prepared train split; keep its first dev split (MNLI: dev_matched) for evaluation."""
    train = pq.read_table(paths.prepared_split(task.name, "train", prepared_dir))
    dev = pq.read_table(paths.prepared_split(task.name, task.dev_splits[0], prepared_dir))
    encoded = tokenize(tokenizer, *table_texts(task, train), max_length)
    return TokenizedTask(task, encoded, train.column("label").to_numpy(), dev)


class SharedEncoderTeacher(nn.Module):
    """One sequence-classification model per task, all holding the same encoder instance (MT-DNN).

    ``models[task]`` is a complete Hugging Face model (the shared encoder plus that task's output layer), so it
    saves and loads like any single-task teacher. With one task this is the single-task teacher.
    """

    def __init__(self, models: Mapping[str, PreTrainedModel]) -> None:
        super().__init__()
        self.models = nn.ModuleDict(dict(models))

    def forward(self, task: str, **inputs: torch.Tensor) -> torch.Tensor:
        """Logits of ``task``'s output layer for a batch of that task."""
        return self.models[task](**inputs).logits


def head_config(task: Task) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for the task's output layer (its classes, or one regression output)."""
    label_names = list(task.labels) if task.labels else ["score"]
    return {
        "num_labels": task.num_outputs,
        "problem_type": "regression" if task.is_regression else "single_label_classification",
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }


def build_teacher(checkpoint: str, tasks: Sequence[Task]) -> SharedEncoderTeacher:
    """A model per task from ``checkpoint``, each one's base model then replaced by the first task's."""
    models = {
        task.name: AutoModelForSequenceClassification.from_pretrained(checkpoint, **head_config(task)) for task in tasks
    }
    encoder = models[tasks[0].name].base_model
    for model in models.values():
        setattr(model, model.base_model_prefix, encoder)
    return SharedEncoderTeacher(models)


def summed_loss(task: Task, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The batch's loss summed over rows, in fp32: MSE for regression, cross-entropy otherwise."""
    if task.is_regression:
        return F.mse_loss(logits.float().squeeze(-1), labels, reduction="sum")
    return F.cross_entropy(logits.float(), labels, reduction="sum")


def training_schedule(sampler: TaskBatchSampler, epochs: float, accumulation_steps: int) -> list[list[OptimizerStep]]:
    """Per epoch, its optimizer steps of ``accumulation_steps`` consecutive batches each (an epoch's last step may
    have fewer: steps never cross epochs); a fractional last epoch keeps its first batches."""
    remaining = math.ceil(epochs * sampler.batches_per_epoch())
    schedule = []
    while remaining > 0:
        batches = sampler.epoch()[:remaining]
        remaining -= len(batches)
        schedule.append([batches[i : i + accumulation_steps] for i in range(0, len(batches), accumulation_steps)])
    return schedule


@dataclass
class FineTuningProgress(Progress):
    """Where a fine-tuning run stands after its last epoch; checkpointed with it."""

    epoch: int = 0
    dev: dict[str, dict[str, float]] = field(default_factory=dict)  # the last epoch's dev metrics (main process)


@dataclass
class FineTuning:
    """The prepared training objects of one run and the per-step / per-epoch work on them."""

    accelerator: Accelerator
    model: nn.Module  # SharedEncoderTeacher, wrapped by Accelerate (DDP, autocast)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    tokenizer: PreTrainedTokenizerBase
    data: Mapping[str, TokenizedTask]
    trace: RowTrace

    def train_step(self, step: OptimizerStep, epoch: int, loss_totals: dict[str, torch.Tensor]) -> None:
        """Accumulate the gradients of the step's batches (this process's share of each), then update once.

        Each share's summed loss is scaled by processes / rows in the step: after DDP averages gradients over the
        processes, the update is the gradient of the mean loss over every row of the step, each counted once. A
        process whose share of a batch is empty (fewer rows than processes) runs the batch's first row with weight
        0, so it still joins the gradient all-reduce and no row counts twice. ``loss_totals[task]`` accumulates
        (summed loss, rows) of this process's shares.
        """
        accelerator, device = self.accelerator, self.accelerator.device
        step_rows = sum(len(rows) for _, rows in step)
        for position, (name, batch) in enumerate(step):
            item = self.data[name]
            rows, counted = process_rows(batch, accelerator)
            weight = accelerator.num_processes / step_rows if counted else 0.0
            synchronise = position == len(step) - 1  # gradients are all-reduced once, on the step's last batch
            with contextlib.nullcontext() if synchronise else accelerator.no_sync(self.model):
                logits = self.model(name, **batch_tensors(self.tokenizer, item.encoded, rows, device))
                loss = summed_loss(item.task, logits, item.label_tensor(rows, device))
                accelerator.backward(loss * weight)
            if counted:
                loss_totals[name] += torch.stack([loss.detach(), torch.tensor(float(counted), device=device)])
            self.trace.record(epoch, name, rows[:counted])
        accelerator.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train_losses(self, loss_totals: dict[str, torch.Tensor]) -> dict[str, float]:
        """Mean training loss per row over all processes: per task, and over all tasks under ``""``."""
        totals = self.accelerator.reduce(torch.stack(list(loss_totals.values())), reduction="sum")
        losses = {
            name: float(total[0] / total[1]) for name, total in zip(loss_totals, totals, strict=True) if total[1] > 0
        }
        overall = totals.sum(dim=0)
        return {"": float(overall[0] / overall[1]), **losses}

    def train(
        self, schedule: list[list[OptimizerStep]], hp: TeacherParams, log_dir: Path,
        checkpoints: Checkpoints | None = None,
    ) -> dict[str, dict[str, float]]:  # fmt: skip
        """Every epoch of ``schedule``, each followed (main process) by a dev evaluation logged to DVCLive in
        ``log_dir`` and, with ``checkpoints``, by an epoch checkpoint; a run with a checkpoint continues after its
        epoch. Returns the last dev metrics per task (empty on the other processes)."""
        accelerator, several_tasks, main = self.accelerator, len(self.data) > 1, self.accelerator.is_main_process
        progress = FineTuningProgress()
        accelerator.register_for_checkpointing(progress)
        if checkpoints is not None and checkpoints.resume(accelerator, log_dir if main else None):
            log.info("teacher: resumed after epoch %d", progress.epoch)
        description = f"teacher {'+'.join(self.data)}"
        progress_bar = tqdm(
            total=sum(map(len, schedule)), initial=sum(map(len, schedule[: progress.epoch])), desc=description,
            disable=not main,
        )  # fmt: skip
        with training_log(log_dir, enabled=main, resume_step=progress.epoch) as tracking:
            for epoch, steps in enumerate(schedule[progress.epoch :], start=progress.epoch + 1):
                self.model.train()
                loss_totals = {name: torch.zeros(2, device=accelerator.device) for name in self.data}
                for step in steps:
                    self.train_step(step, epoch, loss_totals)
                    progress_bar.update()
                train_losses = self.train_losses(loss_totals)
                if main:
                    progress.dev = evaluate_dev(self.teacher(), self.tokenizer, self.data, hp)
                    metrics = epoch_metrics(train_losses, progress.dev, several_tasks)
                    tracking.log_epoch(metrics)
                    log.info("teacher epoch %d: %s", epoch, metrics)
                progress.epoch = epoch
                if checkpoints is not None:
                    checkpoints.save(accelerator, epoch, log_dir if main else None)
            if main:
                tracking.headline({name: progress.dev[name][self.data[name].task.primary_metric] for name in self.data})
        progress_bar.close()
        return progress.dev if main else {}

    def teacher(self) -> SharedEncoderTeacher:
        """The trained model without its Accelerate/DDP wrapping."""
        return self.accelerator.unwrap_model(self.model)


def evaluate_dev(
    teacher: SharedEncoderTeacher,
    tokenizer: PreTrainedTokenizerBase,
    data: Mapping[str, TokenizedTask],
    hp: TeacherParams,
) -> dict[str, dict[str, float]]:
    """Each task's metrics on its dev split: fp32 on CPU, ``teacher.mixed_precision`` inference on a GPU.

    Calls each task's model directly, outside the wrapper whose forward Accelerate runs under training autocast.
    """
    teacher.eval()
    results = {}
    for name, item in data.items():
        model = teacher.models[name]
        device = next(model.parameters()).device
        precision = DEV_PRECISION_ON_CPU if device.type == "cpu" else hp.mixed_precision
        text_a, text_b = table_texts(item.task, item.dev)
        logits = predict_logits(model, tokenizer, text_a, text_b, hp.eval_batch_size, hp.max_length, precision)
        results[name] = compute_metrics(item.task, logits, item.dev.column("label").to_numpy())
    return results


def epoch_metrics(
    train_losses: Mapping[str, float], dev: Mapping[str, Mapping[str, float]], several_tasks: bool
) -> dict[str, float]:
    """DVCLive names: ``train/loss`` and ``dev/<metric>``; with several tasks also ``train/<task>/loss`` and
    ``dev/<task>/<metric>`` instead of ``dev/<metric>``."""
    metrics = {"train/loss": train_losses[""]}
    for name, values in dev.items():
        prefix = f"{name}/" if several_tasks else ""
        if several_tasks and name in train_losses:
            metrics[f"train/{prefix}loss"] = train_losses[name]
        metrics.update({f"dev/{prefix}{metric}": value for metric, value in values.items()})
    return metrics

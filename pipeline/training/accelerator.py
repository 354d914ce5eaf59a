"""The one Accelerate setup every training stage uses: device, mixed precision, DDP (gloo on CPU, NCCL on GPUs)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, PartialState
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import parse_flag_from_env

from pipeline.training.device import (
    pick_device,
    training_precision,
)

ACCELERATE_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # ours -> Accelerator(mixed_precision=...)
USE_CPU_ENV = "ACCELERATE_USE_CPU"  # set by `accelerate launch --cpu`: train on CPU even where CUDA exists


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

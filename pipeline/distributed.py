"""Data-parallel student training across processes (``torchrun`` / ``accelerate launch``).

``processes()`` tells this process's index and the number of processes (one process: 0 of 1); under a launcher it
starts the process group through Accelerate (gloo on CPU, NCCL on GPUs). Each process reads only its part of the
logit shards (``shard_part``), trains a DDP copy of the student on it, and the processes average their gradients
every step, so one step is a global batch of ``processes x batch_size`` rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

WORLD_SIZE_ENV = "WORLD_SIZE"  # set by torchrun and accelerate launch
USE_CPU_ENV = "ACCELERATE_USE_CPU"  # set by `accelerate launch --cpu`: stay on CPU even where CUDA exists


@dataclass(frozen=True)
class Processes:
    """This process's place in a data-parallel run."""

    index: int
    count: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.index == 0

    @property
    def distributed(self) -> bool:
        return self.count > 1


def processes(default_device: torch.device) -> Processes:
    """This process's index, the number of processes and its device; a single process on ``default_device``
    unless started by a launcher (``WORLD_SIZE`` > 1)."""
    if int(os.environ.get(WORLD_SIZE_ENV, "1")) <= 1:
        return Processes(0, 1, default_device)
    state = PartialState(cpu=parse_flag_from_env(USE_CPU_ENV) or not torch.cuda.is_available())
    return Processes(state.process_index, state.num_processes, state.device)


def shard_part(files: list[str], part: Processes) -> tuple[list[str], slice]:
    """Which shard files this process reads, and which of their rows it keeps.

    With at least as many shards as processes, every process reads its own files (``files[index::count]``) and keeps
    all their rows; otherwise every process reads the (few) files and keeps every ``count``-th row from ``index``.
    """
    if len(files) >= part.count:
        return files[part.index :: part.count], slice(None)
    return files, slice(part.index, None, part.count)


def take(table: pa.Table, rows: slice) -> pa.Table:
    """The rows of ``table`` selected by a ``shard_part`` slice."""
    if rows == slice(None):
        return table
    return table.take(pa.array(np.arange(table.num_rows)[rows]))


def common_count(value: int, part: Processes) -> int:
    """The smallest ``value`` over all processes (e.g. batches per epoch, so every process takes as many steps)."""
    if not part.distributed:
        return value
    tensor = torch.tensor([value], device=part.device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MIN)
    return int(tensor.item())

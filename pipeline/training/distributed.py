"""Data-parallel student training across processes (``torchrun`` / ``accelerate launch``).

``processes()`` tells this process's index and the number of processes (one process: 0 of 1); under a launcher it
starts the process group through Accelerate (gloo on CPU, NCCL on GPUs). Each process reads only its part of the
logit shards (``shard_part``), trains a DDP copy of the student on it, and the processes average their gradients
every step, so one step is a global batch of ``processes x batch_size`` rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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


def common_count(value: int, part: Processes) -> int:
    """The smallest ``value`` over all processes (e.g. batches per epoch, so every process takes as many steps)."""
    if not part.distributed:
        return value
    tensor = torch.tensor([value], device=part.device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MIN)
    return int(tensor.item())

"""The interface every student architecture implements: shared layers plus one output layer per task.

A student is built for a list of tasks (one for Tang et al.'s single-task students, several for MKD). Its
``forward(task, batch)`` returns that task's logits. ``batch`` is what the architecture's encoder produced
(``EncodedInputs.batch``): for each named token array (e.g. ``a`` and ``b`` for the two sides of a pair, or
``ids`` and ``type_ids`` for one joint sequence) the padded ids ``[batch, time]`` under that name and their
lengths ``[batch]`` under ``<name>_lengths``. The training loop, evaluation and export only use this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from pipeline.data.tasks import Task
from pipeline.params import Params

Batch = dict[str, torch.Tensor]


def padding_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """``[batch, width]`` bool mask, true on real tokens (position < length)."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths.to(torch.long)[:, None]


class StudentModel(nn.Module, ABC):
    """Shared layers and a ``heads`` ModuleDict with one task-specific output layer per task."""

    architecture: ClassVar[str]  # registry name, e.g. "bilstm"

    def __init__(self, tasks: Sequence[Task]) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("a student needs at least one task")
        self.tasks = {task.name: task for task in tasks}

    @abstractmethod
    def forward(self, task: str, batch: Batch) -> torch.Tensor:
        """Logits ``[batch, tasks[task].num_outputs]`` (one column for regression)."""

    @classmethod
    @abstractmethod
    def build(
        cls, params: Params, tasks: Sequence[Task], teacher_dir: Path, training_texts: Iterable[str], seed: int
    ) -> tuple[StudentModel, Any]:
        """A freshly initialised student for ``tasks`` and its encoder (a ``StudentEncoder``).

        ``teacher_dir`` is a folder with the teacher's tokenizer and safetensors weights (WordPiece embeddings,
        Transformer layers); ``training_texts`` every training sentence (word vocabularies).
        """

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings that ``from_config`` needs to rebuild this model (before loading weights)."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: dict[str, Any], tasks: Sequence[Task]) -> StudentModel:
        """An uninitialised model of the same shape as the one whose ``config()`` this is."""

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Trainable embedding tables with sparse gradients (``nn.Embedding(sparse=True)``), for a sparse optimiser."""
        return [
            module.weight for module in self.modules()
            if isinstance(module, nn.Embedding) and module.sparse and module.weight.requires_grad
        ]  # fmt: skip

    def keep_tasks(self, names: Sequence[str]) -> None:
        """Drop every task (and its head) not in ``names``, e.g. to ship a per-task model from a multi-task one."""
        for name in [name for name in self.tasks if name not in names]:
            del self.tasks[name]
            del self.heads[name]  # type: ignore[attr-defined]  # every architecture keeps its heads in ``heads``


def count_parameters(model: nn.Module, include_embeddings: bool) -> int:
    """Number of parameters (trainable or frozen); without embedding tables, as Tang et al.'s 0.96M."""
    embedding_params = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if include_embeddings or id(p) not in embedding_params)

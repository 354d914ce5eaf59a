"""Layers shared by the student architectures."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data.tasks import Task


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse the first ``lengths[i]`` positions of each row of ``x`` ``[batch, time, ...]``; padding stays put."""
    batch, width = x.shape[:2]
    positions = torch.arange(width, device=x.device).expand(batch, width)
    reversed_positions = lengths.to(x.device, torch.long)[:, None] - 1 - positions
    index = torch.where(reversed_positions >= 0, reversed_positions, positions)
    return x.gather(1, index.view(batch, width, *([1] * (x.dim() - 2))).expand_as(x))


def stack_right_padded(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Rows of ``first`` ``[batch, Ta]`` then of ``second`` ``[batch, Tb]``, right-padded with 0 to ``max(Ta, Tb)``.

    The width is ``(Ta + Tb + |Ta - Tb|) // 2`` rather than Python's ``max``, which an ONNX trace would freeze to the
    branch taken at export time; written this way the exported graph keeps it dynamic.
    """
    width_first, width_second = first.shape[1], second.shape[1]
    width = (width_first + width_second + abs(width_first - width_second)) // 2
    return torch.cat([F.pad(first, (0, width - width_first)), F.pad(second, (0, width - width_second))])


class PaddedBiLSTM(nn.Module):
    """A one-layer bidirectional LSTM over right-padded batches, without packing.

    The forward direction reads each row as is (padding comes after every real token, so it never reaches a
    real position's output); the backward direction reads each row reversed within its length. Both run the
    plain (oneDNN) LSTM kernel on the padded tensor, which on CPU is several times faster than packed sequences,
    and the module exports to ONNX as two LSTM nodes. Outputs at padding positions are meaningless: mask them.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.forward_lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.backward_lstm = nn.LSTM(input_size, hidden_size, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position outputs ``[batch, time, 2 * hidden]`` and final states of both directions
        ``[batch, 2 * hidden]``."""
        forward_out, _ = self.forward_lstm(x)
        backward_reversed, _ = self.backward_lstm(reverse_padded(x, lengths))
        last = (lengths.to(x.device, torch.long) - 1).view(-1, 1, 1).expand(-1, 1, self.hidden_size)
        final = torch.cat([forward_out.gather(1, last)[:, 0], backward_reversed.gather(1, last)[:, 0]], dim=-1)
        return torch.cat([forward_out, reverse_padded(backward_reversed, lengths)], dim=-1), final


class MultichannelEmbedding(nn.Module):
    """Token embeddings from an initial matrix: a trainable table with sparse gradients, optionally concatenated
    with a frozen copy of the same matrix (Tang et al.'s "multichannel" input; the frozen channel comes first).

    The trainable table's gradients are sparse (only the rows of a batch's tokens), which keeps optimiser steps
    cheap for a 30k-row WordPiece vocabulary (``StudentModel.sparse_parameters`` finds it for the sparse optimiser).
    """

    def __init__(self, matrix: torch.Tensor, multichannel: bool) -> None:
        super().__init__()
        self.trainable = nn.Embedding.from_pretrained(matrix.clone(), freeze=False, sparse=True)
        self.frozen = nn.Embedding.from_pretrained(matrix.clone(), freeze=True) if multichannel else None
        self.output_size = matrix.shape[1] * (2 if multichannel else 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``[batch, time, output_size]`` vectors for ids ``[batch, time]``."""
        embedded = self.trainable(ids)
        if self.frozen is None:
            return embedded
        return torch.cat([self.frozen(ids), embedded], dim=-1)


def pair_features(h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
    """The siamese pair representation of two sentence vectors: ``[h1; h2; h1 * h2; |h1 - h2|]`` (Tang et al.)."""
    return torch.cat([h1, h2, h1 * h2, (h1 - h2).abs()], dim=-1)


def mlp_heads(tasks: Sequence[Task], sentence_width: int, hidden_size: int, dropout: float) -> nn.ModuleDict:
    """One output layer per task on a sentence vector (four of them side by side for a pair, ``pair_features``):
    dropout, a ReLU layer of ``hidden_size``, dropout, a linear layer to the task's outputs."""
    return nn.ModuleDict({
        task.name: nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(4 * sentence_width if task.is_pair else sentence_width, hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, task.num_outputs),
        )
        for task in tasks
    })  # fmt: skip

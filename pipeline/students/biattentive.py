"""MKD's bi-attentive LSTM student: McCann et al.'s (2017) Biattentive Classification Network, multi-task.

Per sentence side (as AllenNLP's ``biattentive_classification_network``)::

    embeddings -> dropout -> feed-forward ReLU -> BiLSTM encoder            X [time, 2 * encoder_size]
    bi-attention: A = X Y^T; X~ = softmax_rows(A) Y, Y~ = softmax_rows(A^T) X (softmax masked to the other side)
    integrator BiLSTM over [X; X - X~; X * X~]                             [time, 2 * integrator_size]
    pooling: [max; min; mean; self-attentive] over real tokens             p [8 * integrator_size]

A single sentence attends to itself (Y = X, as McCann et al. duplicate a single input). A pair encodes both
sentences in one LSTM pass (stacked along the batch, padded to a common width), each side attends to the other,
and both integrate in one pass. Every task's features are ``[p_a; p_b; |p_a - p_b|; p_a * p_b]``; for a single
sentence ``p_b = p_a``, so single-sentence and pair tasks share one feature layout and the output layers.

Shared: embeddings, feed-forward, both BiLSTMs, self-attentive pooling projection and the output layers
(``output_sizes``: maxout with ``maxout_pieces`` linear pieces, or ReLU). Task-specific (``heads``): one linear
layer per task to its logits, as MT-DNN's task-specific output layers.

Padding never contributes: the LSTMs never carry it into real positions (``PaddedBiLSTM``), masked softmaxes
give padded positions exactly zero weight, and max/min/mean pooling skip them. ``forward`` has no Python branching
on tensor values, so it exports to ONNX.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.data.tasks import Task
from pipeline.params import BiattentiveParams, Params
from pipeline.students.base import Batch, StudentModel, padding_mask
from pipeline.students.encoding import StudentEncoder, build_encoder
from pipeline.students.layers import MultichannelEmbedding, PaddedBiLSTM, stack_right_padded

# Pooled views of the integrated sequence: max, min, mean, self-attentive.
POOLINGS = 4
# Features per task: p_a, p_b, |p_a - p_b|, p_a * p_b.
PAIR_FEATURES = 4


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension giving exactly zero weight where ``mask`` (broadcastable) is false.

    Every row needs at least one true position (sentences are never empty).
    """
    return logits.masked_fill(~mask, float("-inf")).softmax(dim=-1)


class Maxout(nn.Module):
    """A linear layer with ``pieces`` outputs per unit, reduced by their maximum (Goodfellow et al. 2013)."""

    def __init__(self, input_size: int, output_size: int, pieces: int) -> None:
        super().__init__()
        self.output_size, self.pieces = output_size, pieces
        self.linear = nn.Linear(input_size, output_size * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).unflatten(-1, (self.output_size, self.pieces)).max(dim=-1).values


def output_layers(params: BiattentiveParams, input_size: int) -> nn.Sequential:
    """The shared layers between the features and the task heads: maxout or ReLU, each followed by dropout."""
    layers: list[nn.Module] = []
    for size in params.output_sizes:
        if params.output_layer == "maxout":
            layers.append(Maxout(input_size, size, params.maxout_pieces))
        else:
            layers += [nn.Linear(input_size, size), nn.ReLU()]
        layers.append(nn.Dropout(params.dropout))
        input_size = size
    return nn.Sequential(*layers)


class BiattentiveStudent(StudentModel):
    """Bi-attentive LSTM student for any mix of single-sentence and sentence-pair tasks (see the module docstring)."""

    architecture = "biattentive"

    def __init__(self, params: BiattentiveParams, embeddings: torch.Tensor, tasks: Sequence[Task]) -> None:
        super().__init__(tasks)
        self.params = params
        self.embedding = MultichannelEmbedding(embeddings, params.multichannel)
        self.embedding_dropout = nn.Dropout(params.embedding_dropout)
        self.feedforward = nn.Sequential(nn.Linear(self.embedding.output_size, params.feedforward_size), nn.ReLU())
        self.encoder = PaddedBiLSTM(params.feedforward_size, params.encoder_size)
        self.integrator = PaddedBiLSTM(3 * 2 * params.encoder_size, params.integrator_size)
        self.self_attentive = nn.Linear(2 * params.integrator_size, 1)
        features = PAIR_FEATURES * POOLINGS * 2 * params.integrator_size
        self.dropout = nn.Dropout(params.dropout)
        self.output_layers = output_layers(params, features)
        head_input = params.output_sizes[-1] if params.output_sizes else features
        self.heads = nn.ModuleDict({task.name: nn.Linear(head_input, task.num_outputs) for task in tasks})

    def forward(self, task: str, batch: Batch) -> torch.Tensor:
        integrated, lengths, mask, _ = self._integrate(task, batch)
        pooled = self._pool(integrated, lengths, mask)
        if self.tasks[task].is_pair:
            pooled_a, pooled_b = pooled.chunk(2)
        else:
            pooled_a = pooled_b = pooled
        features = torch.cat([pooled_a, pooled_b, (pooled_a - pooled_b).abs(), pooled_a * pooled_b], dim=-1)
        return self.heads[task](self.output_layers(self.dropout(features)))

    def attention_weights(self, task: str, batch: Batch) -> tuple[torch.Tensor, ...]:
        """The bi-attention weights: ``(a over a,)`` ``[batch, time, time]`` for a single sentence, ``(a over b,
        b over a)`` for a pair (both ``[batch, width, width]``, width the longer side's)."""
        return self._integrate(task, batch)[3]

    def _encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states ``[batch, time, 2 * encoder_size]`` (meaningless at padding) and the padding mask."""
        mask = padding_mask(lengths.to(ids.device), ids.shape[1])
        pre_encoded = self.feedforward(self.embedding_dropout(self.embedding(ids)))
        encoded, _ = self.encoder(pre_encoded, lengths)
        return encoded, mask

    def _integrate(
        self, task: str, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """Integrator states, lengths, mask and attention weights; a pair's sides are stacked on the batch (a first)."""
        if self.tasks[task].is_pair:
            ids_a, ids_b = batch["a"], batch["b"]
            ids = stack_right_padded(ids_a, ids_b)
            lengths = torch.cat([batch["a_lengths"], batch["b_lengths"]])
            encoded, mask = self._encode(ids, lengths)
            encoded_a, encoded_b = encoded.chunk(2)
            mask_a, mask_b = mask.chunk(2)
            affinity = encoded_a @ encoded_b.transpose(1, 2)
            weights: tuple[torch.Tensor, ...] = (
                masked_softmax(affinity, mask_b[:, None, :]),
                masked_softmax(affinity.transpose(1, 2), mask_a[:, None, :]),
            )
            attended = torch.cat([weights[0] @ encoded_b, weights[1] @ encoded_a])
        else:
            lengths = batch["a_lengths"]
            encoded, mask = self._encode(batch["a"], lengths)
            weights = (masked_softmax(encoded @ encoded.transpose(1, 2), mask[:, None, :]),)
            attended = weights[0] @ encoded
        integrated, _ = self.integrator(torch.cat([encoded, encoded - attended, encoded * attended], dim=-1), lengths)
        return integrated, lengths, mask, weights

    def _pool(self, states: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[max; min; mean; self-attentive]`` over real positions: ``[batch, 4 * width]``."""
        padded = ~mask[..., None]
        max_pool = states.masked_fill(padded, float("-inf")).max(dim=1).values
        min_pool = states.masked_fill(padded, float("inf")).min(dim=1).values
        mean_pool = states.masked_fill(padded, 0.0).sum(dim=1) / lengths.to(states)[:, None]
        self_weights = masked_softmax(self.self_attentive(states).squeeze(-1), mask)
        self_pool = (self_weights[:, None, :] @ states).squeeze(1)
        return torch.cat([max_pool, min_pool, mean_pool, self_pool], dim=-1)

    @classmethod
    def build(
        cls, params: Params, tasks: Sequence[Task], teacher_dir: Path, training_texts: Iterable[str], seed: int
    ) -> tuple[BiattentiveStudent, StudentEncoder]:
        encoder, embeddings = build_encoder(params.biattentive, teacher_dir, training_texts, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(params.biattentive, embeddings, tasks)
        return model, encoder

    def config(self) -> dict[str, Any]:
        vocab_size, embedding_dim = self.embedding.trainable.weight.shape
        return {
            "params": self.params.model_dump(mode="json"),
            "vocab_size": vocab_size,
            "embedding_dim": embedding_dim,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], tasks: Sequence[Task]) -> BiattentiveStudent:
        params = BiattentiveParams.model_validate(config["params"])
        return cls(params, torch.zeros(config["vocab_size"], config["embedding_dim"]), tasks)

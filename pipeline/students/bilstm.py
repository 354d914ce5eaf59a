"""The BiLSTM student of Tang et al. (2019): embeddings -> 1-layer BiLSTM -> sentence vector -> ReLU layer -> logits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.data.tasks import Task
from pipeline.params import BiLSTMParams, Params
from pipeline.students.base import Batch, StudentModel, padding_mask
from pipeline.students.encoding import StudentEncoder, build_encoder
from pipeline.students.layers import PaddedBiLSTM, mlp_heads, pair_features, stack_right_padded


class BiLSTMStudent(StudentModel):
    """Embeddings and a BiLSTM shared by all tasks; per task a ReLU layer and an output layer (the head).

    Single sentences are encoded to a sentence vector (max-pooling over time, or the final states of both directions);
    pairs by a siamese encoder (the same BiLSTM for both sides) with features ``[h1; h2; h1 * h2; |h1 - h2|]``.
    Multichannel embeddings: a frozen and a trainable copy of the same initial matrix, concatenated. The trainable
    table has sparse gradients (only the rows of a batch's tokens), which keeps optimiser steps cheap for a 30k-row
    WordPiece vocabulary.
    """

    architecture = "bilstm"

    def __init__(self, params: BiLSTMParams, embeddings: torch.Tensor, tasks: Sequence[Task]) -> None:
        super().__init__(tasks)
        self.params = params
        self.pooling = params.pooling
        self.embedding = nn.Embedding.from_pretrained(embeddings.clone(), freeze=False, sparse=True)
        self.frozen_embedding = (
            nn.Embedding.from_pretrained(embeddings.clone(), freeze=True) if params.multichannel else None
        )
        width = embeddings.shape[1] * (2 if params.multichannel else 1)
        self.lstm = PaddedBiLSTM(width, params.hidden_size)
        sentence = 2 * params.hidden_size
        self.heads = mlp_heads(tasks, sentence, params.fc_hidden, params.dropout)

    @classmethod
    def build(
        cls, params: Params, tasks: Sequence[Task], teacher_dir: Path, training_texts: Iterable[str], seed: int
    ) -> tuple[BiLSTMStudent, StudentEncoder]:
        encoder, embeddings = build_encoder(params.bilstm, teacher_dir, training_texts, seed)
        return cls(params.bilstm, embeddings, tasks), encoder

    def config(self) -> dict[str, Any]:
        vocab_size, dim = self.embedding.weight.shape
        return {"bilstm": self.params.model_dump(mode="json"), "vocab_size": vocab_size, "embedding_dim": dim}

    @classmethod
    def from_config(cls, config: dict[str, Any], tasks: Sequence[Task]) -> BiLSTMStudent:
        placeholder = torch.zeros(config["vocab_size"], config["embedding_dim"])
        return cls(BiLSTMParams.model_validate(config["bilstm"]), placeholder, tasks)

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Sentence vectors ``[batch, 2 * hidden]`` for padded ids ``[batch, time]`` (lengths >= 1)."""
        embedded = self.embedding(ids)
        if self.frozen_embedding is not None:
            embedded = torch.cat([self.frozen_embedding(ids), embedded], dim=-1)
        outputs, final = self.lstm(embedded, lengths)
        if self.pooling == "last":
            return final
        real = padding_mask(lengths, ids.shape[1]).to(outputs.device)
        return outputs.masked_fill(~real[..., None], float("-inf")).max(dim=1).values

    def forward(self, task: str, batch: Batch) -> torch.Tensor:
        head = self.heads[task]
        if not self.tasks[task].is_pair:
            return head(self.encode(batch["a"], batch["a_lengths"]))
        # One LSTM pass over both sides: pad to a common width and stack along the batch.
        ids = stack_right_padded(batch["a"], batch["b"])
        h1, h2 = self.encode(ids, torch.cat([batch["a_lengths"], batch["b_lengths"]])).chunk(2)
        return head(pair_features(h1, h2))

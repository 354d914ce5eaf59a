"""The BiLSTM student of Tang et al. (2019): embeddings -> 1-layer BiLSTM -> sentence vector -> ReLU layer -> logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from pipeline.params import BiLSTMParams


class BiLSTMStudent(nn.Module):
    """Single-sentence classifier/regressor, or a siamese one over sentence pairs (shared encoder).

    Multichannel embeddings: a frozen and a trainable copy of the same initial matrix, concatenated.
    The trainable table has sparse gradients (only the rows of a batch's tokens), which keeps optimiser steps
    cheap for a 30k-row WordPiece vocabulary. Pair features are ``[h1; h2; h1 * h2; |h1 - h2|]``.
    """

    def __init__(self, params: BiLSTMParams, embeddings: torch.Tensor, num_outputs: int, pair: bool) -> None:
        super().__init__()
        self.pooling = params.pooling
        self.pair = pair
        self.num_outputs = num_outputs
        self.embedding = nn.Embedding.from_pretrained(embeddings.clone(), freeze=False, sparse=True)
        self.frozen_embedding = (
            nn.Embedding.from_pretrained(embeddings.clone(), freeze=True) if params.multichannel else None
        )
        width = embeddings.shape[1] * (2 if params.multichannel else 1)
        self.lstm = nn.LSTM(width, params.hidden_size, num_layers=1, batch_first=True, bidirectional=True)
        sentence = 2 * params.hidden_size
        self.head = nn.Sequential(
            nn.Dropout(params.dropout),
            nn.Linear(4 * sentence if pair else sentence, params.fc_hidden),
            nn.ReLU(),
            nn.Dropout(params.dropout),
            nn.Linear(params.fc_hidden, num_outputs),
        )

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Sentence vectors ``[batch, 2 * hidden]`` for padded ids ``[batch, time]`` (lengths >= 1)."""
        embedded = self.embedding(ids)
        if self.frozen_embedding is not None:
            embedded = torch.cat([self.frozen_embedding(ids), embedded], dim=-1)
        if bool((lengths == lengths[0]).all()):
            # No padding (e.g. batch size 1): the plain LSTM kernel is several times faster than the packed one.
            outputs, (hidden, _) = self.lstm(embedded)
        else:
            packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
            packed_outputs, (hidden, _) = self.lstm(packed)
            outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True, padding_value=float("-inf"))
        if self.pooling == "last":
            return torch.cat([hidden[0], hidden[1]], dim=-1)
        return outputs.max(dim=1).values

    def forward(
        self,
        ids_a: torch.Tensor,
        lengths_a: torch.Tensor,
        ids_b: torch.Tensor | None = None,
        lengths_b: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[batch, num_outputs]``; pass ``ids_b``/``lengths_b`` for pair models."""
        if not self.pair:
            return self.head(self.encode(ids_a, lengths_a))
        if ids_b is None or lengths_b is None:
            raise ValueError("a pair model needs ids_b and lengths_b")
        # One LSTM pass over both sides: pad to a common width and stack along the batch.
        width = max(ids_a.shape[1], ids_b.shape[1])
        ids = torch.cat([F.pad(ids_a, (0, width - ids_a.shape[1])), F.pad(ids_b, (0, width - ids_b.shape[1]))])
        h1, h2 = self.encode(ids, torch.cat([lengths_a, lengths_b])).chunk(2)
        return self.head(torch.cat([h1, h2, h1 * h2, (h1 - h2).abs()], dim=-1))


def count_parameters(model: nn.Module, include_embeddings: bool) -> int:
    """Number of parameters (trainable or frozen); without embedding tables, as the paper's 0.96M."""
    embedding_params = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if include_embeddings or id(p) not in embedding_params)

"""The static student: mean-pooled static token embeddings and a small MLP head (issue 35, the fastest student).

The embedding table starts from the teacher distilled by the ``model2vec`` library (one forward pass per vocabulary
token, PCA to ``static.pca_dims``, SIF weighting by token rank), indexed by the teacher's own WordPiece ids, so the
student reads the teacher's tokenizer (``WordPieceEncoder``). A sentence is the mean of its tokens' vectors,
L2-normalised as model2vec does by default (``static.normalize``: SIF weighting leaves sentences of frequent tokens
with short means); a pair is encoded side by side and combined as ``[h1; h2; h1 * h2; |h1 - h2|]``, like the siamese
BiLSTM. Each task's head is dropout, one ReLU layer and a linear output layer. The table stays trainable with sparse
gradients, so this pipeline's KD loop trains the whole student on the teacher's logits over the transfer set (soft
targets, unlabelled and synthetic text), which model2vec's own classifier cannot use.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from pipeline.data.tasks import Task
from pipeline.params import Params, StaticParams
from pipeline.students.base import Batch, StudentModel, padding_mask
from pipeline.students.encoding import WordPieceEncoder
from pipeline.students.layers import mlp_heads, pair_features

log = logging.getLogger(__name__)


def distilled_embeddings(teacher_dir: Path, pca_dims: int | None) -> tuple[torch.Tensor, PreTrainedTokenizerBase]:
    """model2vec's static embeddings of the model in ``teacher_dir`` as a ``[len(tokenizer), dims]`` float32 matrix
    indexed by the folder's tokenizer ids, and that tokenizer. Tokens model2vec leaves out (special tokens such as
    ``[CLS]``, ``[unusedN]``) get zero rows."""
    from model2vec.distill import distill  # heavy (skeletoken, sklearn): imported only to build a student

    static = distill(model_name=str(teacher_dir), pca_dims=pca_dims, quantize_to="float32")
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    vectors = torch.from_numpy(static.embedding).float()
    matrix = torch.zeros(len(tokenizer), vectors.shape[1])
    vocab = tokenizer.get_vocab()
    pairs = [(vocab[token], row) for row, token in enumerate(static.tokens) if token in vocab]
    if not pairs:
        raise ValueError(f"{teacher_dir}: model2vec's vocabulary shares no token with the folder's tokenizer")
    ids, rows = torch.tensor(pairs).T
    matrix[ids] = vectors[rows]
    log.info(
        "static embeddings: %d of %d tokenizer ids from model2vec, width %d", len(pairs), len(matrix), len(vectors[0])
    )
    return matrix, tokenizer


class StaticStudent(StudentModel):
    """A trainable token-embedding table (sparse gradients) shared by all tasks, mean-pooled; per task an MLP head."""

    architecture = "static"

    def __init__(self, params: StaticParams, embeddings: torch.Tensor, tasks: Sequence[Task]) -> None:
        super().__init__(tasks)
        self.params = params
        self.embedding = nn.Embedding.from_pretrained(embeddings.clone(), freeze=False, sparse=True)
        width = embeddings.shape[1]
        self.heads = mlp_heads(tasks, width, params.hidden_size, params.dropout)

    @classmethod
    def build(
        cls, params: Params, tasks: Sequence[Task], teacher_dir: Path, training_texts: Iterable[str], seed: int
    ) -> tuple[StaticStudent, WordPieceEncoder]:
        """Distil ``teacher_dir`` (the caller's choice: the fine-tuned teacher or its base checkpoint, same tokenizer)
        with model2vec; ``training_texts`` and ``seed`` are not used (the heads draw from torch's seeded generator)."""
        matrix, tokenizer = distilled_embeddings(teacher_dir, params.static.pca_dims)
        return cls(params.static, matrix, tasks), WordPieceEncoder(tokenizer, len(matrix), params.static.max_length)

    def config(self) -> dict[str, Any]:
        vocab_size, dim = self.embedding.weight.shape
        static = self.params.model_dump(mode="json", exclude={"training"})
        return {"static": static, "vocab_size": vocab_size, "embedding_dim": dim}

    @classmethod
    def from_config(cls, config: dict[str, Any], tasks: Sequence[Task]) -> StaticStudent:
        placeholder = torch.zeros(config["vocab_size"], config["embedding_dim"])
        return cls(StaticParams.model_validate(config["static"]), placeholder, tasks)

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Sentence vectors ``[batch, dim]``: the mean of the real tokens' vectors (lengths >= 1), L2-normalised with
        ``static.normalize``."""
        real = padding_mask(lengths, ids.shape[1]).to(ids.device)
        summed = (self.embedding(ids) * real[..., None]).sum(dim=1)
        mean = summed / lengths.to(summed.device, summed.dtype)[:, None]
        return F.normalize(mean, dim=-1) if self.params.normalize else mean

    def forward(self, task: str, batch: Batch) -> torch.Tensor:
        head = self.heads[task]
        h1 = self.encode(batch["a"], batch["a_lengths"])
        if not self.tasks[task].is_pair:
            return head(h1)
        h2 = self.encode(batch["b"], batch["b_lengths"])
        return head(pair_features(h1, h2))

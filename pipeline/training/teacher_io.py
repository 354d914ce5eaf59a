"""The teacher's inputs and outputs: tokenise, pad into batches, score logits. Used by fine-tuning's dev evaluation
(``pipeline.training.finetune``) and by everything that scores with a teacher (``pipeline.serving.teacher`` re-exports
them)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.data.batching import length_sorted_batches
from pipeline.training.device import autocast, autocast_dtype

Encoded = dict[str, list[list[int]]]  # tokenizer output columns (input_ids, token_type_ids), one list per row


def tokenize(
    tokenizer: PreTrainedTokenizerBase, text_a: Sequence[str], text_b: Sequence[str] | None, max_length: int
) -> Encoded:
    """Unpadded ``input_ids`` (``[CLS] a [SEP] b [SEP]`` for pairs) plus ``token_type_ids`` where the model has them."""
    encoded = tokenizer(
        list(text_a), list(text_b) if text_b is not None else None,
        truncation=True, max_length=max_length, return_attention_mask=False,
    )  # fmt: skip
    return dict(encoded)


def token_lengths(encoded: Encoded) -> list[int]:
    """Tokens per row of a ``tokenize`` result."""
    return [len(ids) for ids in encoded["input_ids"]]


def batch_tensors(
    tokenizer: PreTrainedTokenizerBase, encoded: Encoded, rows: Sequence[int], device: torch.device
) -> dict[str, torch.Tensor]:
    """The given rows of a ``tokenize`` result, padded (with attention mask) into tensors on ``device``."""
    padded = tokenizer.pad({key: [values[i] for i in rows] for key, values in encoded.items()}, return_tensors="pt")
    return {key: value.to(device) for key, value in padded.items()}


@torch.inference_mode()
def predict_logits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text_a: Sequence[str],
    text_b: Sequence[str] | None,
    batch_size: int,
    max_length: int,
    mixed_precision: str = "auto",
    progress: bool = False,
) -> np.ndarray:
    """Teacher logits (float32, input order) for the given texts, batched by length."""
    device = next(model.parameters()).device
    dtype = autocast_dtype(device, mixed_precision)
    encoded = tokenize(tokenizer, text_a, text_b, max_length)
    out = np.empty((len(text_a), model.config.num_labels), dtype=np.float32)
    batches = length_sorted_batches(token_lengths(encoded), batch_size)
    for batch in tqdm(batches, disable=not progress, desc="teacher batches", leave=False):
        with autocast(device, dtype):
            logits = model(**batch_tensors(tokenizer, encoded, batch, device)).logits
        out[batch] = logits.float().cpu().numpy()
    return out

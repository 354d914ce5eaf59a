"""Student inference: logits of one task head for encoded inputs or raw texts, batched by length."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.data.batching import length_sorted_batches
from pipeline.students.base import StudentModel
from pipeline.students.encoding import EncodedInputs, StudentEncoder


@torch.inference_mode()
def predict_encoded(model: StudentModel, task: str, inputs: EncodedInputs, batch_size: int) -> np.ndarray:
    """Logits ``[n, num_outputs]`` (float32, input order) of ``task``'s head, batched by length, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    out = np.empty((len(inputs), model.tasks[task].num_outputs), dtype=np.float32)
    for rows in length_sorted_batches(inputs.lengths, batch_size):
        out[rows] = model(task, inputs.batch(rows, device)).float().cpu().numpy()
    return out


def predict(
    model: StudentModel,
    encoder: StudentEncoder,
    task: str,
    text_a: Sequence[str],
    text_b: Sequence[str] | None,
    batch_size: int,
) -> np.ndarray:
    """Logits of ``task`` for raw texts (tokenisation included)."""
    return predict_encoded(model, task, encoder.encode_inputs(text_a, text_b), batch_size)

"""Length-aware batching shared by teacher and student: less padding, same rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Training batches are sorted by length within random chunks of this many batches, then shuffled.
BUCKET_CHUNK_BATCHES = 100


def length_sorted_batches(lengths: Sequence[int] | np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length (longest first), for inference."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def bucket_batches(lengths: Sequence[int] | np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled training batches of row indices with similar lengths (sorted within random chunks)."""
    lengths = np.asarray(lengths)
    order = rng.permutation(len(lengths))
    chunk = batch_size * BUCKET_CHUNK_BATCHES
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def process_share(batch: np.ndarray, process_index: int, num_processes: int) -> np.ndarray:
    """This process's disjoint share of a global batch in a distributed run (every process holds the same batch).

    Contiguous slices whose sizes differ by at most one row (the first ``len(batch) % num_processes`` processes get
    the extra row); together the shares are the whole batch, each row in exactly one share. A batch with fewer rows
    than processes leaves the last processes an empty share: the caller decides what an empty share does (the
    teacher runs one row of the batch with zero loss weight, so every process joins the gradient all-reduce and
    no row counts twice).
    """
    return np.array_split(np.asarray(batch), num_processes)[process_index]

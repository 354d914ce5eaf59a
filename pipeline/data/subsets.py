"""Seeded subsets of transfer sets (MKD's per-task budget), shared by the scoring and MKD stages."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def kept_originals(source_ids: np.ndarray, max_originals: int | None, seed: int) -> np.ndarray | None:
    """A seeded random subset of at most ``max_originals`` of the distinct ``source_ids`` (None: keep all).

    Subsets of one seed are nested (the first ``max_originals`` of one seeded permutation), so a smaller budget keeps
    a subset of a larger one's originals.
    """
    distinct = np.unique(source_ids)
    if max_originals is None or len(distinct) <= max_originals:
        return None
    return np.random.default_rng(seed).permutation(distinct)[:max_originals]


def filter_originals(table: pa.Table, kept: np.ndarray | None) -> pa.Table:
    """The rows of ``table`` whose ``source_id`` is in ``kept`` (every row for None)."""
    if kept is None:
        return table
    return table.filter(pc.is_in(table.column("source_id"), value_set=pa.array(kept)))


def subset_originals(table: pa.Table, max_originals: int | None, seed: int) -> pa.Table:
    """The rows of a transfer set (or its shards) that belong to a seeded random subset of at most ``max_originals``
    original examples: each kept original with all its synthetic variants. ``None`` keeps every row.

    Depends only on the set of ``source_id`` values, so the transfer set and its logit shards give the same subset.
    """
    return filter_originals(table, kept_originals(table.column("source_id").to_numpy(), max_originals, seed))

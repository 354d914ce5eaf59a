"""Seeded subsets of transfer sets (MKD's per-task budget), shared by the scoring and MKD stages."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def subset_originals(table: pa.Table, max_originals: int | None, seed: int) -> pa.Table:
    """The rows of a transfer set (or its shards) that belong to a seeded random subset of at most ``max_originals``
    original examples: each kept original with all its synthetic variants. ``None`` keeps every row.

    Depends only on the set of ``source_id`` values, so the transfer set and its logit shards give the same subset;
    subsets of one seed are nested (the first ``max_originals`` of one seeded permutation), so a smaller budget
    keeps a subset of a larger one's originals.
    """
    source_ids = np.unique(table.column("source_id").to_numpy())
    if max_originals is None or len(source_ids) <= max_originals:
        return table
    kept = np.random.default_rng(seed).permutation(source_ids)[:max_originals]
    return table.filter(pc.is_in(table.column("source_id"), value_set=pa.array(kept)))

import numpy as np
import pytest

from pipeline.data.batching import process_share


@pytest.mark.parametrize(("rows", "processes"), [(32, 2), (33, 2), (7, 3), (1, 2), (2, 4), (0, 2)])
def test_process_shares_partition_the_batch(rows, processes):
    batch = np.random.default_rng(rows).permutation(100)[:rows]
    shares = [process_share(batch, index, processes) for index in range(processes)]
    assert sorted(np.concatenate(shares).tolist()) == sorted(batch.tolist())  # disjoint, together the whole batch
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # fewer rows than processes: the last processes get nothing


def test_process_share_keeps_batch_order_and_is_deterministic():
    batch = np.array([5, 3, 9, 1, 7])
    assert process_share(batch, 0, 2).tolist() == [5, 3, 9]
    assert process_share(batch, 1, 2).tolist() == [1, 7]
    assert process_share(batch, 0, 1).tolist() == batch.tolist()

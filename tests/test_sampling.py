"""TaskBatchSampler: one task per batch; proportional epochs cover every row once; uniform/temperature draw tasks
with the configured probabilities and read each task's rows in full shuffled passes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.training.sampling import TaskBatchSampler, batch_probabilities, task_probabilities

SIZES = {"big": 600, "mid": 150, "small": 37}
BATCH_SIZES = {"big": 16, "mid": 8, "small": 5}


def lengths(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {task: rng.integers(3, 60, size=size) for task, size in SIZES.items()}


def sampler(scheme: str, temperature: float = 1.0, seed: int = 0) -> TaskBatchSampler:
    return TaskBatchSampler(lengths(), BATCH_SIZES, scheme, temperature, seed)  # type: ignore[arg-type]


def mean_batch_rows() -> dict[str, float]:
    return {task: size / math.ceil(size / BATCH_SIZES[task]) for task, size in SIZES.items()}


def check_batch(task: str, rows: np.ndarray) -> None:
    """A batch holds rows of one task only: valid row indices of that task, at most its batch size, no repeats."""
    assert task in SIZES
    assert 1 <= len(rows) <= BATCH_SIZES[task]
    assert rows.min() >= 0 and rows.max() < SIZES[task]
    assert len(set(rows.tolist())) == len(rows)


def test_proportional_epoch_sees_every_row_once_with_expected_batch_counts():
    batch_sampler = sampler("proportional")
    expected_batches = {task: math.ceil(SIZES[task] / BATCH_SIZES[task]) for task in SIZES}
    assert batch_sampler.batches_per_epoch() == sum(expected_batches.values())
    orders = []
    for _ in range(3):
        epoch = batch_sampler.epoch()
        assert len(epoch) == batch_sampler.batches_per_epoch()
        for task, rows in epoch:
            check_batch(task, rows)
        for task in SIZES:
            task_batches = [rows for name, rows in epoch if name == task]
            assert len(task_batches) == expected_batches[task]
            seen = np.concatenate(task_batches)
            assert sorted(seen.tolist()) == list(range(SIZES[task])), f"{task}: not every row exactly once"
        orders.append([(task, rows.tolist()) for task, rows in epoch])
    assert orders[0] != orders[1], "epochs must be reshuffled"
    tasks_in_order = [task for task, _ in orders[0]]
    assert tasks_in_order != sorted(tasks_in_order, key=list(SIZES).index), "tasks' batches must be interleaved"


def test_same_seed_same_batches():
    first, second = sampler("temperature", 2.0, seed=3), sampler("temperature", 2.0, seed=3)
    for _ in range(2):
        assert [(t, r.tolist()) for t, r in first.epoch()] == [(t, r.tolist()) for t, r in second.epoch()]
    assert [(t, r.tolist()) for t, r in sampler("proportional", seed=4).epoch()] != [
        (t, r.tolist()) for t, r in sampler("proportional", seed=5).epoch()
    ]


def test_proportional_batches_are_length_bucketed():
    """Rows in a batch have similar lengths: the mean within-batch spread is far below a random batch's."""
    batch_sampler, task_lengths = sampler("proportional"), lengths()
    spreads = [np.ptp(task_lengths[task][rows]) for task, rows in batch_sampler.epoch() if len(rows) > 1]
    random_spread = np.mean([np.ptp(np.random.default_rng(i).choice(task_lengths["big"], 16)) for i in range(50)])
    assert np.mean(spreads) < random_spread / 3


@pytest.mark.parametrize(("scheme", "temperature"), [("uniform", 1.0), ("temperature", 2.0), ("temperature", 5.0)])
def test_sampled_task_frequencies_and_full_passes(scheme, temperature):
    batch_sampler = sampler(scheme, temperature)
    epochs = [batch_sampler.epoch() for _ in range(100)]
    batches = [batch for epoch in epochs for batch in epoch]
    assert all(len(epoch) == batch_sampler.batches_per_epoch() for epoch in epochs)
    expected = batch_probabilities(task_probabilities(SIZES, scheme, temperature), mean_batch_rows())
    for task in SIZES:
        frequency = sum(name == task for name, _ in batches) / len(batches)
        tolerance = 4 * math.sqrt(expected[task] * (1 - expected[task]) / len(batches))  # 4 binomial std devs
        assert abs(frequency - expected[task]) < tolerance, (task, frequency, expected[task])
    # Each task reads its rows in whole shuffled passes: no row repeats before all of the task's rows were seen.
    for task in SIZES:
        stream = np.concatenate([rows for name, rows in batches if name == task])
        for task_batch in (rows for name, rows in batches if name == task):
            check_batch(task, task_batch)
        complete_passes = len(stream) // SIZES[task]
        assert complete_passes >= 2, f"{task}: test needs at least two passes"
        for start in range(0, complete_passes * SIZES[task], SIZES[task]):
            assert sorted(stream[start : start + SIZES[task]].tolist()) == list(range(SIZES[task])), (task, start)


def test_task_probabilities():
    total = sum(SIZES.values())
    assert task_probabilities(SIZES, "proportional") == pytest.approx({t: n / total for t, n in SIZES.items()})
    assert task_probabilities(SIZES, "uniform") == pytest.approx({t: 1 / 3 for t in SIZES})
    assert task_probabilities(SIZES, "temperature", 1.0) == pytest.approx(task_probabilities(SIZES, "proportional"))
    hot = task_probabilities(SIZES, "temperature", 1000.0)
    assert max(hot.values()) - min(hot.values()) < 0.01  # a high temperature approaches uniform
    warm = task_probabilities(SIZES, "temperature", 2.0)
    assert warm["small"] > SIZES["small"] / total  # small tasks are up-sampled


@pytest.mark.parametrize(("scheme", "temperature"), [("temperature", 1.0), ("uniform", 1.0)])
def test_row_shares_hold_with_unequal_batch_sizes(scheme, temperature):
    """Tasks get their share of the rows trained on, not of the batches: with batch sizes 16 / 8 / 5, temperature 1
    trains each task on its proportional share of rows (as ``proportional`` does), uniform on equal rows."""
    batch_sampler = sampler(scheme, temperature)
    rows = {task: 0 for task in SIZES}
    for _ in range(200):
        for task, batch in batch_sampler.epoch():
            rows[task] += len(batch)
    total = sum(rows.values())
    expected = task_probabilities(SIZES, scheme, temperature)
    for task in SIZES:
        assert rows[task] / total == pytest.approx(expected[task], abs=0.01), (task, rows[task] / total)
    assert max(abs(batch_sampler.probabilities[t] - expected[t]) for t in SIZES) > 0.05  # batch sizes differ enough


def test_single_task_is_the_one_task_case():
    single = TaskBatchSampler({"only": lengths()["mid"]}, {"only": 8}, "proportional", seed=1)
    epoch = single.epoch()
    assert {task for task, _ in epoch} == {"only"}
    assert sorted(np.concatenate([rows for _, rows in epoch]).tolist()) == list(range(SIZES["mid"]))

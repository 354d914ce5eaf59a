"""Multi-task batch sampling (MT-DNN style): every mini-batch holds rows of one task.

``proportional`` (the default, as in MT-DNN) lists every task's batches of an epoch and shuffles them together, so
each example is seen exactly once per epoch and tasks appear in proportion to their sizes. ``uniform`` and
``temperature`` give task ``t`` a share of the training rows, equal or ``n_t ** (1/temperature)`` (normalised), and
draw the task of each batch with probability ``share_t / rows per batch_t`` (normalised), so that the shares hold in
rows whatever the tasks' batch sizes (``temperature`` 1 is ``proportional`` in expectation), for an epoch of the same
number of batches; each task then reads its rows from its own endless stream of shuffled passes, so no row of a task
repeats before every row of that task has been seen.

Single-task training is the one-task case of the same sampler. ``state_dict`` / ``load_state_dict`` save and restore
where the sampler stands (its RNG and each task's unread batches), so a resumed run draws the batches it would have.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.data.batching import bucket_batches
from pipeline.params import SamplingScheme

TaskBatch = tuple[str, np.ndarray]  # (task name, row indices into that task's training set)


def task_probabilities(sizes: Mapping[str, int], scheme: SamplingScheme, temperature: float = 1.0) -> dict[str, float]:
    """Each task's share of the training rows: proportional to size, uniform, or ``size ** (1/temperature)``."""
    if scheme == "uniform":
        weights = {task: 1.0 for task in sizes}
    elif scheme == "temperature":
        weights = {task: float(size) ** (1.0 / temperature) for task, size in sizes.items()}
    else:
        weights = {task: float(size) for task, size in sizes.items()}
    total = sum(weights.values())
    return {task: weight / total for task, weight in weights.items()}


def batch_probabilities(row_shares: Mapping[str, float], batch_rows: Mapping[str, float]) -> dict[str, float]:
    """Probability that a batch comes from each task, for the tasks to get ``row_shares`` of the rows trained on
    (``batch_rows``: each task's mean rows per batch)."""
    weights = {task: share / batch_rows[task] for task, share in row_shares.items()}
    total = sum(weights.values())
    return {task: weight / total for task, weight in weights.items()}


class TaskBatchSampler:
    """Yields an epoch's ``(task, rows)`` batches; rows are length-bucketed within each task.

    ``lengths[task]`` are the per-row token lengths of that task's training set (for bucketing);
    ``batch_sizes[task]`` its batch size. Deterministic for a given ``seed``.
    """

    def __init__(
        self,
        lengths: Mapping[str, np.ndarray],
        batch_sizes: Mapping[str, int],
        scheme: SamplingScheme = "proportional",
        temperature: float = 1.0,
        seed: int = 0,
    ) -> None:
        if not lengths:
            raise ValueError("the sampler needs at least one task")
        self.lengths = {task: np.asarray(values) for task, values in lengths.items()}
        self.batch_sizes = dict(batch_sizes)
        self.scheme = scheme
        shares = task_probabilities({t: len(v) for t, v in self.lengths.items()}, scheme, temperature)
        batch_rows = {t: len(v) / self._batch_count(t) for t, v in self.lengths.items()}  # the last batch is short
        self.probabilities = batch_probabilities(shares, batch_rows)  # of a batch's task
        self.rng = np.random.default_rng(seed)
        self._unread: dict[str, deque[np.ndarray]] = {task: deque() for task in self.lengths}  # current pass

    def _batch_count(self, task: str) -> int:
        """Batches in one pass over ``task``'s rows."""
        return -(-len(self.lengths[task]) // self.batch_sizes[task])

    def batches_per_epoch(self) -> int:
        """Batches in one epoch: enough to cover every row of every task once."""
        return sum(self._batch_count(task) for task in self.lengths)

    def epoch(self) -> list[TaskBatch]:
        """The next epoch's batches, in training order."""
        if self.scheme == "proportional":
            batches = [
                (task, rows)
                for task, values in self.lengths.items()
                for rows in bucket_batches(values, self.batch_sizes[task], self.rng)
            ]
            return [batches[i] for i in self.rng.permutation(len(batches))]
        tasks = list(self.probabilities)
        draws = self.rng.choice(len(tasks), size=self.batches_per_epoch(), p=[self.probabilities[t] for t in tasks])
        return [(tasks[i], self._next_batch(tasks[i])) for i in draws]

    def _next_batch(self, task: str) -> np.ndarray:
        """The next batch of ``task``'s endless stream: one shuffled, length-bucketed pass over its rows after
        another (a pass is drawn when the previous one is used up)."""
        if not self._unread[task]:
            self._unread[task].extend(bucket_batches(self.lengths[task], self.batch_sizes[task], self.rng))
        return self._unread[task].popleft()

    def state_dict(self) -> dict[str, Any]:
        """Where the sampler stands: its RNG state and each task's unread batches of the current pass."""
        return {"rng": self.rng.bit_generator.state, "unread": {t: list(b) for t, b in self._unread.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a ``state_dict``."""
        self.rng.bit_generator.state = state["rng"]
        self._unread = {task: deque(batches) for task, batches in state["unread"].items()}

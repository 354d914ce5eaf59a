"""Experiment tracking with DVCLive: per-epoch training curves and a summary, under stable per-run folders.

Each training run logs into its own folder (e.g. ``dvclive/teacher/sst2``): ``metrics.json`` holds the summary
(the last logged values plus anything added with ``summary``) and ``plots/metrics/<name>.tsv`` one curve per
metric, which ``dvc.yaml`` declares as metrics and plots. DVCLive runs with ``save_dvc_exp=False`` and no
``dvc.yaml`` of its own: the pipeline's stages are the experiment, so ``dvc exp run`` / ``dvc exp show`` see it.
Only the main process of a distributed run logs.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dvclive import Live


class TrainingLog:
    """Logs one value per metric per epoch (``log_epoch``) and extra summary values (``summary``)."""

    def __init__(self, live: Live | None) -> None:
        self._live = live

    def log_epoch(self, metrics: Mapping[str, float]) -> None:
        """Record one epoch's metrics (names like ``train/loss`` or ``dev/accuracy``) and advance the step."""
        if self._live is None:
            return
        for name, value in metrics.items():
            self._live.log_metric(name, float(value))
        self._live.next_step()

    def summary(self, values: Mapping[str, Any]) -> None:
        """Add values to ``metrics.json`` that are not per-epoch curves (best epoch, final dev metrics...)."""
        if self._live is not None:
            self._live.summary.update(values)


@contextlib.contextmanager
def training_log(directory: Path | str, enabled: bool = True) -> Iterator[TrainingLog]:
    """A fresh DVCLive log in ``directory`` (previous contents removed); a no-op log when not ``enabled``."""
    if not enabled:
        yield TrainingLog(None)
        return
    directory = Path(directory)
    shutil.rmtree(directory, ignore_errors=True)
    live = Live(str(directory), save_dvc_exp=False, dvcyaml=None)
    try:
        yield TrainingLog(live)
    finally:
        live.end()

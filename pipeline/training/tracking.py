"""Experiment tracking with DVCLive: per-epoch training curves and a summary, under stable per-run folders.

Each training run logs into its own folder (e.g. ``dvclive/teacher/sst2``): ``metrics.json`` holds the headline
(the kept model's primary dev metric per task, ``headline``) and ``plots/metrics/<name>.tsv`` one curve per
metric, which ``dvc.yaml`` declares as metrics and plots. DVCLive runs with ``save_dvc_exp=False`` and no
``dvc.yaml`` of its own: the pipeline's stages are the experiment, so ``dvc exp run`` / ``dvc exp show`` see it.
Only the main process of a distributed run logs. A run resumed from a checkpoint continues the log the checkpoint
restored, at the next step, so no epoch is logged twice.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

from dvclive import Live


class TrainingLog:
    """Logs one value per metric per epoch (``log_epoch``) and the run's headline summary (``headline``)."""

    def __init__(self, live: Live | None) -> None:
        self._live = live

    def log_epoch(self, metrics: Mapping[str, float]) -> None:
        """Record one epoch's metrics (names like ``train/loss`` or ``dev/accuracy``) and advance the step."""
        if self._live is None:
            return
        for name, value in metrics.items():
            self._live.log_metric(name, float(value))
        self._live.next_step()

    def headline(self, dev: Mapping[str, float], **counts: int) -> None:
        """Make ``metrics.json`` (a declared DVC metric) the run's headline only: the primary dev metric per task of
        the model the run keeps, ``dev.<task>``, plus ``counts`` (e.g. ``best_epoch``); DVCLive adds ``step``. The
        per-epoch values stay in the curves (``plots/metrics``)."""
        if self._live is not None:
            step = self._live.summary.get("step")  # end() reads the last step back from the summary
            self._live.summary.clear()
            self._live.summary.update({"dev": dict(dev), **counts, **({"step": step} if step is not None else {})})


@contextlib.contextmanager
def training_log(directory: Path | str, enabled: bool = True, resume_step: int = 0) -> Iterator[TrainingLog]:
    """A fresh DVCLive log in ``directory`` (previous contents removed), or with ``resume_step`` > 0 the log found
    there continued at that step (the number of epochs it holds); a no-op log when not ``enabled``."""
    if not enabled:
        yield TrainingLog(None)
        return
    directory = Path(directory)
    if resume_step:
        live = Live(str(directory), save_dvc_exp=False, dvcyaml=None, resume=True)
        live.step = resume_step  # DVCLive's own resume counts one step too few after a single epoch
    else:
        shutil.rmtree(directory, ignore_errors=True)
        live = Live(str(directory), save_dvc_exp=False, dvcyaml=None)
    try:
        yield TrainingLog(live)
    finally:
        live.end()

"""Task metrics (GLUE conventions) computed from raw model outputs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from pipeline.data.tasks import Task

_CLASSIFICATION: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda pred, gold: accuracy_score(gold, pred),
    "f1": lambda pred, gold: f1_score(gold, pred, pos_label=1, zero_division=0.0),
    "mcc": lambda pred, gold: matthews_corrcoef(gold, pred),
}
_REGRESSION: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "pearson": lambda pred, gold: pearsonr(pred, gold).statistic,
    "spearman": lambda pred, gold: spearmanr(pred, gold).statistic,
}


def predictions_from_outputs(task: Task, outputs: np.ndarray) -> np.ndarray:
    """Class indices (argmax of logits) for classification; the single output column for regression."""
    outputs = np.asarray(outputs)
    if task.is_regression:
        return outputs.reshape(len(outputs), -1)[:, 0]
    return outputs.argmax(axis=-1)


def compute_metrics(task: Task, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every metric of ``task`` for raw outputs (logits ``[n, num_outputs]``) against gold labels."""
    predictions = predictions_from_outputs(task, outputs)
    labels = np.asarray(labels)
    table = _REGRESSION if task.is_regression else _CLASSIFICATION
    return {name: float(table[name](predictions, labels)) for name in task.metrics}

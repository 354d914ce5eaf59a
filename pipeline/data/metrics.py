"""Task metrics (GLUE conventions, plus macro-F1 for many classes) computed from raw model outputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    precision_recall_fscore_support,
)

from pipeline.data.tasks import Task

_CLASSIFICATION: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda pred, gold: accuracy_score(gold, pred),
    "f1": lambda pred, gold: f1_score(gold, pred, pos_label=1, zero_division=0.0),
    # over every class of the task seen in gold or predictions (sklearn's macro average)
    "macro_f1": lambda pred, gold: f1_score(gold, pred, average="macro", zero_division=0.0),
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


def task_score(task: Task, metrics: Mapping[str, float]) -> float:
    """A task's score on one split under the GLUE convention: its MCC alone where it reports one (CoLA), else the
    mean of its metrics (MRPC, QQP: F1 and accuracy; STS-B: Pearson and Spearman). Model selection and ``compare``
    rank by it."""
    names = ("mcc",) if "mcc" in task.metrics else task.metrics
    return float(np.mean([metrics[name] for name in names]))


def compute_metrics(task: Task, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every metric of ``task`` for raw outputs (logits ``[n, num_outputs]``) against gold labels."""
    predictions = predictions_from_outputs(task, outputs)
    labels = np.asarray(labels)
    table = _REGRESSION if task.is_regression else _CLASSIFICATION
    return {name: float(table[name](predictions, labels)) for name in task.metrics}


def class_report(task: Task, outputs: np.ndarray, labels: np.ndarray, top_confusions: int) -> dict[str, object]:
    """Per class (the task's label names, in class-index order): precision, recall, F1 and gold support; and the
    ``top_confusions`` most frequent (gold, predicted) pairs of different classes, most frequent first (ties by
    class index)."""
    predictions = predictions_from_outputs(task, outputs)
    labels = np.asarray(labels)
    names = task.labels or ()
    classes = np.arange(len(names))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0.0
    )
    matrix = confusion_matrix(labels, predictions, labels=classes)
    np.fill_diagonal(matrix, 0)
    order = sorted(zip(*np.nonzero(matrix), strict=True), key=lambda cell: (-matrix[cell], cell))
    return {
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)
        },
        "confused_pairs": [
            {"gold": names[gold], "predicted": names[predicted], "count": int(matrix[gold, predicted])}
            for gold, predicted in order[:top_confusions]
        ],
    }

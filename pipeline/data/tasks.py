"""Tasks: which columns hold text and labels, which labels exist, how a task is scored.

The GLUE tasks are built-in definitions (``TASKS``, read from ``data.glue_dir``); a task of your own is declared in
params.yaml ``task_defs`` and becomes the same ``Task``: ``prepare`` resolves it (labels taken from train unless
listed, metrics) and records it in ``data/prepared/<task>/task.json``, which every later stage reads
(``resolve_task``). Every saved model records its tasks (``Task.to_dict``), so a deployed model needs neither
params nor data. Stages read tasks, never branch on names.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import UnknownTaskError

if TYPE_CHECKING:
    from pipeline.params import Params

CLASSIFICATION_METRICS = ("accuracy", "f1", "macro_f1", "mcc")  # computed in pipeline.data.metrics
REGRESSION_METRICS = ("pearson", "spearman")
TASK_FILE = "task.json"  # in a task's prepared folder: the resolved task and how its splits were made

Column = str | int  # a header name, or a 0-based index for files without a header (CoLA)


@dataclass(frozen=True)
class Task:
    """One task: its text and label columns, labels in class-index order, metrics, and evaluation splits."""

    name: str
    glue_dir_name: str | None  # folder under data.glue_dir for a GLUE task; None for a task of your own
    text_columns: tuple[Column, ...]
    label_column: Column
    labels: tuple[str, ...] | None  # label strings as written in the files, in class-index order; None = regression
    metrics: tuple[str, ...]  # the first one selects checkpoints and early stopping
    dev_splits: tuple[str, ...] = ("dev",)
    has_header: bool = True
    test_splits: tuple[str, ...] = ()  # held-out splits evaluate also scores (never used for model selection)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_outputs(self) -> int:
        """Width of the logit vector: one per class, or 1 for regression."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", *self.dev_splits, *self.test_splits)

    @property
    def eval_splits(self) -> tuple[str, ...]:
        """The splits evaluate scores: dev split(s), then test split(s)."""
        return (*self.dev_splits, *self.test_splits)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as recorded in prepared data and saved models."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        tuples = {key: tuple(value) for key, value in data.items() if isinstance(value, list)}
        return cls(**{**data, **tuples})


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("sst2", "SST-2", ("sentence",), "label", ("0", "1"), ("accuracy",)),
        Task("cola", "CoLA", (3,), 1, ("0", "1"), ("mcc", "accuracy"), has_header=False),
        Task("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), ("f1", "accuracy")),
        Task("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), ("f1", "accuracy")),
        Task("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, ("pearson", "spearman")),
        Task(
            "mnli",
            "MNLI",
            ("sentence1", "sentence2"),
            "gold_label",
            ("contradiction", "entailment", "neutral"),
            ("accuracy",),
            dev_splits=("dev_matched", "dev_mismatched"),
        ),
        Task("qnli", "QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"), ("accuracy",)),
        Task("rte", "RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), ("accuracy",)),
        Task("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), ("accuracy",)),
    )
}


def get_task(name: str) -> Task:
    """Look a built-in (GLUE) task up by its short name (e.g. ``sst2``); raise naming the known tasks otherwise."""
    try:
        return TASKS[name.lower()]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None


def default_metrics(labels: tuple[str, ...] | None) -> tuple[str, ...]:
    """Pearson and Spearman for regression; accuracy and F1 for two classes; accuracy and macro-F1 for more."""
    if labels is None:
        return ("pearson", "spearman")
    return ("accuracy", "f1") if len(labels) == 2 else ("accuracy", "macro_f1")


def task_file(name: str, prepared_dir: Path) -> Path:
    return prepared_dir / name / TASK_FILE


def read_prepared_task(name: str, prepared_dir: Path) -> Task:
    """The task as ``prepare`` resolved and recorded it (labels included)."""
    path = task_file(name, prepared_dir)
    try:
        return Task.from_dict(json.loads(path.read_text(encoding="utf-8"))["task"])
    except FileNotFoundError:
        raise UnknownTaskError(
            f"{path}: not found; task {name!r} of task_defs is resolved (labels, metrics) by prepare "
            f"(run: python -m pipeline prepare --task {name})"
        ) from None


def resolve_task(name: str, params: Params, prepared_dir: Path | None = None) -> Task:
    """The task ``name``: one declared in params ``task_defs`` as ``prepare`` resolved it (its ``task.json``), else
    the built-in task."""
    from pipeline import paths

    if name not in params.task_defs:
        return get_task(name)
    return read_prepared_task(name, prepared_dir or paths.PREPARED_DIR)

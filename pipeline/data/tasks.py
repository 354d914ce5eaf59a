"""Registry of GLUE tasks: where their files are, which columns hold text and labels, how they are scored.

Stages read this registry instead of branching on task names.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import UnknownTaskError

Column = str | int  # a header name, or a 0-based index for files without a header (CoLA)


@dataclass(frozen=True)
class Task:
    """One GLUE task as laid out in its TSV files."""

    name: str
    glue_dir_name: str
    text_columns: tuple[Column, ...]
    label_column: Column
    labels: tuple[str, ...] | None  # label strings as written in the TSV, in class-index order; None = regression
    metrics: tuple[str, ...]  # the first one selects checkpoints and early stopping
    dev_splits: tuple[str, ...] = ("dev",)
    has_header: bool = True

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
        return ("train", *self.dev_splits)


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
    """Look a task up by its short name (e.g. ``sst2``); raise naming the known tasks otherwise."""
    try:
        return TASKS[name.lower()]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None

"""Where each stage reads and writes, per task. dvc.yaml mirrors these paths."""

from __future__ import annotations

from pathlib import Path

PREPARED_DIR = Path("data/prepared")
AUGMENTED_DIR = Path("data/augmented")
LOGITS_DIR = Path("data/logits")
TEACHER_DIR = Path("models/teacher")
STUDENT_DIR = Path("models/student")
BASELINE_DIR = Path("models/baseline")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")


def prepared_split(task: str, split: str, root: Path = PREPARED_DIR) -> Path:
    """Normalised Parquet of one GLUE split."""
    return root / task / f"{split}.parquet"


def transfer_set(task: str, root: Path = AUGMENTED_DIR) -> Path:
    """Augmented transfer set (originals + synthetic examples)."""
    return root / f"{task}.parquet"


def shard_dir(task: str, root: Path = LOGITS_DIR) -> Path:
    """Folder of teacher logit shards and their manifest."""
    return root / task


def teacher_dir(task: str, root: Path = TEACHER_DIR) -> Path:
    return root / task


def student_dir(task: str, root: Path = STUDENT_DIR) -> Path:
    return root / task


def baseline_dir(task: str, root: Path = BASELINE_DIR) -> Path:
    return root / task


def training_curve(task: str, model: str, root: Path = PLOTS_DIR) -> Path:
    """Per-epoch training curve (CSV) of ``model`` in {teacher, student, baseline}."""
    return root / task / f"{model}.csv"


def evaluation_metrics(task: str, root: Path = METRICS_DIR) -> Path:
    return root / f"{task}.json"


def evaluation_table(task: str, root: Path = METRICS_DIR) -> Path:
    return root / f"{task}.md"

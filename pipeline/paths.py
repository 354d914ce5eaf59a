"""Where each stage reads and writes, per task. dvc.yaml mirrors these paths."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

PREPARED_DIR = Path("data/prepared")
AUGMENTED_DIR = Path("data/augmented")
LOGITS_DIR = Path("data/logits")
TEACHER_DIR = Path("models/teacher")
MT_TEACHER_DIR = Path("models/mt_teacher")
STUDENT_DIR = Path("models/student")
BASELINE_DIR = Path("models/baseline")
MKD_DIR = Path("models/mkd")
MKD_JOINT = "multitask"  # folder (under models/mkd/<architecture>) of the jointly distilled student
EXPORT_DIR = Path("models/export")
METRICS_DIR = Path("metrics")
TRAINING_LOG_DIR = Path("dvclive")
CHECKPOINT_DIR = Path("checkpoints")  # training checkpoints: in the workspace, outside DVC's outputs

TeacherKind = Literal["single", "multitask"]  # single-task teachers (one per task) or the multi-task teacher


def prepared_split(task: str, split: str, root: Path = PREPARED_DIR) -> Path:
    """Normalised Parquet of one GLUE split."""
    return root / task / f"{split}.parquet"


def transfer_set(task: str, root: Path = AUGMENTED_DIR) -> Path:
    """Augmented transfer set (originals + synthetic examples)."""
    return root / f"{task}.parquet"


def shard_dir(task: str, teacher: TeacherKind = "single", root: Path = LOGITS_DIR) -> Path:
    """Folder of logit shards (and their manifest) scored by the single-task or the multi-task teacher."""
    return root / teacher / task


def teacher_dir(task: str, root: Path = TEACHER_DIR) -> Path:
    """Fine-tuned single-task teacher of ``task``."""
    return root / task


def mt_teacher_dir(task: str, root: Path = MT_TEACHER_DIR) -> Path:
    """The multi-task teacher as a standalone model for ``task``: the shared encoder plus that task's head."""
    return root / task


def scoring_teacher_dir(task: str, teacher: TeacherKind = "single") -> Path:
    """The model folder that scores ``task``'s transfer set: its own teacher, or the multi-task teacher's."""
    return teacher_dir(task) if teacher == "single" else mt_teacher_dir(task)


def student_dir(task: str, root: Path = STUDENT_DIR) -> Path:
    return root / task


def baseline_dir(task: str, root: Path = BASELINE_DIR) -> Path:
    return root / task


def mkd_dir(architecture: str, root: Path = MKD_DIR) -> Path:
    """MKD students of one architecture: ``multitask/`` (jointly distilled) and one fine-tuned folder per task."""
    return root / architecture


def mkd_task_model(mkd_root: Path, task: str) -> Path:
    """The MKD student ``task`` uses: its fine-tuned folder under ``mkd_root`` if there is one, else the joint one."""
    tuned = mkd_root / task
    return tuned if tuned.is_dir() else mkd_root / MKD_JOINT


def training_log_dir(model: str, task: str | None = None, root: Path = TRAINING_LOG_DIR) -> Path:
    """DVCLive folder of one training run, e.g. ``dvclive/teacher/sst2`` or ``dvclive/mt_teacher``."""
    return root / model / task if task else root / model


def checkpoint_dir(stage: str, name: str | None = None, root: Path = CHECKPOINT_DIR) -> Path:
    """Epoch checkpoints of one training run, e.g. ``checkpoints/student/sst2`` or ``checkpoints/mt_teacher``; not a
    DVC output (DVC deletes those before a stage runs), so a killed stage run again resumes from them."""
    return root / stage / name if name else root / stage


def evaluation_metrics(task: str, root: Path = METRICS_DIR) -> Path:
    return root / f"{task}.json"


def evaluation_report(task: str, root: Path = METRICS_DIR) -> Path:
    """Every model's metrics, sizes and speeds on the task's dev split(s) (a plain output beside the headline)."""
    return root / "report" / f"{task}.json"


def evaluation_table(task: str, root: Path = METRICS_DIR) -> Path:
    return root / f"{task}.md"


def export_dir(task: str, root: Path = EXPORT_DIR) -> Path:
    """Deployable student of ``task``: ONNX models, tokenizer and config, runnable without this repository."""
    return root / task


def mkd_export_dir(architecture: str, root: Path = EXPORT_DIR) -> Path:
    """Deployable MKD students of one architecture, one folder per task (as ``export_dir``)."""
    return root / "mkd" / architecture


def mkd_export_metrics(architecture: str, root: Path = METRICS_DIR) -> Path:
    """Parity and dev metrics of the exported MKD students of one architecture, per task."""
    return root / "export" / "mkd" / f"{architecture}.json"


def export_metrics(task: str, root: Path = METRICS_DIR) -> Path:
    """Parity and dev metrics of the exported variants."""
    return root / "export" / f"{task}.json"


COMPARISON_METRICS = METRICS_DIR / "comparison.json"  # headline: each model's average over the tasks (dvc metrics)
COMPARISON_SUMMARY = METRICS_DIR / "comparison_summary.json"  # scores, averages and speed ratios of every model
COMPARISON_TABLE = METRICS_DIR / "comparison.md"
COMPARISON_REPORTS = METRICS_DIR / "comparison_reports.json"  # every task's full evaluation report
QUALITY_VS_SPEED = METRICS_DIR / "quality_vs_speed.json"  # one point per model: average and CPU speed (a DVC plot)
QUALITY_VS_SPEED_PNG = METRICS_DIR / "quality_vs_speed.png"  # the same points drawn, for the docs

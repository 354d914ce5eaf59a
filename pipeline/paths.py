"""Where each stage reads and writes, per task. dvc.yaml mirrors these paths."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

PREPARED_DIR = Path("data/prepared")
UNLABELLED_DIR = Path("data/unlabelled")  # beside PREPARED_DIR (unlabelled_text)
AUGMENTED_DIR = Path("data/augmented")
LOGITS_DIR = Path("data/logits")
TEACHER_DIR = Path("models/teacher")
MT_TEACHER_DIR = Path("models/mt_teacher")
STUDENT_DIR = Path("models/student")
BASELINE_DIR = Path("models/baseline")
STATIC_DIR = Path("models/static")
MODEL2VEC_DIR = Path("models/model2vec")
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


def unlabelled_text(task: str, prepared_root: Path = PREPARED_DIR) -> Path:
    """A task's unlabelled text as prepare wrote it, beside its prepared folder (``data/unlabelled/<task>.parquet``):
    only augment and export read it, so a change of it does not rerun what reads the labelled splits."""
    return prepared_root.parent / UNLABELLED_DIR.name / f"{task}.parquet"


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


def static_dir(task: str, root: Path = STATIC_DIR) -> Path:
    """The static student of ``task`` (model2vec-initialised embeddings, mean-pooled, MLP head)."""
    return root / task


def model2vec_dir(task: str, root: Path = MODEL2VEC_DIR) -> Path:
    """The model2vec reference model of ``task`` (the ``reference`` stage): a model2vec pipeline folder."""
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


def static_export_dir(task: str, root: Path = EXPORT_DIR) -> Path:
    """Deployable static student of ``task`` (as ``export_dir``)."""
    return root / "static" / task


def static_export_metrics(task: str, root: Path = METRICS_DIR) -> Path:
    """Parity and dev metrics of the static student's exported variants."""
    return root / "export" / "static" / f"{task}.json"


def export_metrics(task: str, root: Path = METRICS_DIR) -> Path:
    """Parity and dev metrics of the exported variants."""
    return root / "export" / f"{task}.json"


COMPARISON_METRICS = METRICS_DIR / "comparison.json"  # headline: each model's average over the tasks (dvc metrics)
COMPARISON_SUMMARY = METRICS_DIR / "comparison_summary.json"  # scores, averages and speed ratios of every model
COMPARISON_TABLE = METRICS_DIR / "comparison.md"
COMPARISON_REPORTS = METRICS_DIR / "comparison_reports.json"  # every task's full evaluation report
QUALITY_VS_SPEED = METRICS_DIR / "quality_vs_speed.json"  # one point per model: average and CPU speed (a DVC plot)
QUALITY_VS_SPEED_PNG = METRICS_DIR / "quality_vs_speed.png"  # the same points drawn, for the docs


# --- what each stage reads: its data deps in dvc.yaml --------------------------------------------------------------
# A stage that reads a file DVC does not know about is skipped when that file changes (a stale transfer set, say), so
# each stage's data deps are declared here, from the path functions the stages read through, and
# tests/test_dvc_deps.py fails unless dvc.yaml lists exactly these (as it does for the code deps). Templates as dvc.yaml
# writes them: ITEM is the task (or MKD architecture) of a foreach stage, ${item.task} mt_score's task, other ${...}
# are params.
ITEM = "${item}"
MATRIX_TASK = "${item.task}"


def prepared_dir(task: str, root: Path = PREPARED_DIR) -> Path:
    """A task's prepared folder: its splits and ``task.json`` (``pipeline.data.tasks.TASK_FILE``)."""
    return root / task


def prepared_task(task: str, root: Path = PREPARED_DIR) -> Path:
    """The task as prepare resolved it, which the CLI reads for a task of your own (``pipeline.data.tasks``)."""
    return prepared_dir(task, root) / "task.json"


STAGE_INPUTS: dict[str, tuple[Path | str, ...]] = {
    # every file of task_defs is relative to data.files_dir; GLUE's folder (data.glue_dir) lies inside it by default
    # (a GLUE file outside it is not watched: GLUE's published files do not change, and a new data.glue_dir reruns
    # prepare through its `data` params). One folder a task of your own names, nothing it does not.
    "prepare": ("${data.files_dir}",),
    "teacher": (prepared_dir(ITEM),),
    "mt_teacher": (PREPARED_DIR,),
    # the labelled originals, the unlabelled text joined to them, and the task (the CLI resolves it from task.json)
    "augment": (
        prepared_split(ITEM, "train"),
        unlabelled_text(ITEM),
        prepared_task(ITEM),
    ),
    "score": (transfer_set(ITEM), teacher_dir(ITEM), prepared_task(ITEM)),
    "mt_score": (transfer_set(MATRIX_TASK), mt_teacher_dir(MATRIX_TASK), prepared_task(MATRIX_TASK)),
    "student": (shard_dir(ITEM), prepared_dir(ITEM), teacher_dir(ITEM)),
    "baseline": (prepared_dir(ITEM), teacher_dir(ITEM)),
    # the fine-tuned teacher, which model2vec distils (static.distill_from: teacher; checkpoint: a params dep)
    "static": (shard_dir(ITEM), prepared_dir(ITEM), teacher_dir(ITEM)),
    "reference": (prepared_dir(ITEM),),
    # dev for the checks; the vocabulary of train, test, unlabelled text and the transfer set
    "export": (prepared_dir(ITEM), unlabelled_text(ITEM), transfer_set(ITEM), student_dir(ITEM)),
    "export_static": (prepared_dir(ITEM), unlabelled_text(ITEM), transfer_set(ITEM), static_dir(ITEM)),
    "evaluate": (
        prepared_dir(ITEM),
        teacher_dir(ITEM),
        student_dir(ITEM),
        baseline_dir(ITEM),
        export_dir(ITEM),
        model2vec_dir(ITEM),
        static_dir(ITEM),
        static_export_dir(ITEM),
    ),
    # models/teacher: the single-task teachers, averaged where an init_from is teachers. models/mt_teacher (init_from:
    # mt_teacher) is read through STAGE_INPUTS_VIA: DVC cannot list a dep only when a param has some value.
    "mkd": (LOGITS_DIR / "${mkd.teacher}", PREPARED_DIR, TEACHER_DIR),
    "export_mkd": (PREPARED_DIR, UNLABELLED_DIR, AUGMENTED_DIR, mkd_dir(ITEM)),
    "compare": (PREPARED_DIR, TEACHER_DIR, STUDENT_DIR, BASELINE_DIR, MKD_DIR, EXPORT_DIR, MODEL2VEC_DIR, STATIC_DIR),
}

# Reads a stage cannot list, each with the dep of the stage that covers it: mkd's init_from: mt_teacher is valid only
# with mkd.teacher: multitask (params), so data/logits/multitask, made by mt_score from models/mt_teacher/<task>,
# changes whenever the multi-task teacher does.
STAGE_INPUTS_VIA: dict[str, dict[Path, Path | str]] = {"mkd": {MT_TEACHER_DIR: LOGITS_DIR / "${mkd.teacher}"}}


def stage_inputs(stage: str) -> set[str]:
    """The data deps of ``stage`` as dvc.yaml writes them (an unknown stage has none declared)."""
    return {Path(path).as_posix() for path in STAGE_INPUTS.get(stage, ())}

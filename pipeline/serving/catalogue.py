"""Evaluate stage: teacher vs KD student vs no-KD baseline vs the exported student variants on dev (or any file).

Reports each task metric, parameter counts and sizes, and CPU inference throughput at several batch sizes,
tokenisation included, all models timed in one run with the same thread count (torch threads and onnxruntime
intra-op threads), their timed passes interleaved (model A, B, C, then A, B, C again...) so a change of machine load
biases no model. Exported variants (``models/export/<task>``, run by onnxruntime through ``pipeline.deploy``) appear as
``student-onnx``, ``student-int8``, ``student-table``. The same functions evaluate the multi-task models (the MKD
comparison).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import paths
from pipeline.data.tasks import Task
from pipeline.params import Params
from pipeline.serving import deploy
from pipeline.serving.teacher import load_teacher, predict_logits
from pipeline.students.architectures import load_student
from pipeline.students.base import count_parameters
from pipeline.students.inference import predict

Predictor = Callable[[Sequence[str], Sequence[str] | None, int], np.ndarray]
EXPORTED_PREFIX = "student-"  # exported variants of the Tang student: student-onnx, student-int8, ...
BYTES_PER_PARAMETER = 4  # fp32 weights of the PyTorch models


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to score texts (``predict(text_a, text_b, batch_size) -> logits``) and its size."""

    predict: Predictor
    # "bytes" (fp32 weights, or the ONNX file); PyTorch models: "total", "without_embeddings"
    parameters: dict[str, int]


@dataclass(frozen=True)
class ModelSource:
    """Where a model lives and how to load it onto a device."""

    path: Path
    load: Callable[[torch.device], LoadedModel]


def teacher_source(model_dir: Path, params: Params) -> ModelSource:
    """A fine-tuned Hugging Face teacher folder (single-task teacher, or one task of the multi-task teacher)."""

    def load(device: torch.device) -> LoadedModel:
        model, tokenizer = load_teacher(model_dir, device)
        total = sum(p.numel() for p in model.parameters())
        embeddings = sum(p.numel() for name, p in model.named_parameters() if ".embeddings." in f".{name}")

        def predict_fn(a: Sequence[str], b: Sequence[str] | None, batch_size: int) -> np.ndarray:
            return predict_logits(model, tokenizer, a, b, batch_size, params.teacher.max_length, params.score.precision)

        sizes = {"total": total, "without_embeddings": total - embeddings, "bytes": total * BYTES_PER_PARAMETER}
        return LoadedModel(predict_fn, sizes)

    return ModelSource(model_dir, load)


def student_source(model_dir: Path, task: Task) -> ModelSource:
    """A saved student of any architecture (``save_student``), scoring ``task`` with its head."""

    def load(device: torch.device) -> LoadedModel:
        model, encoder = load_student(model_dir, device)

        def predict_fn(a: Sequence[str], b: Sequence[str] | None, batch_size: int) -> np.ndarray:
            return predict(model, encoder, task.name, a, b, batch_size)

        total = count_parameters(model, include_embeddings=True)
        sizes = {
            "total": total,
            "without_embeddings": count_parameters(model, include_embeddings=False),
            "bytes": total * BYTES_PER_PARAMETER,
        }
        return LoadedModel(predict_fn, sizes)

    return ModelSource(model_dir, load)


def exported_sources(folder: Path, threads: int, prefix: str = EXPORTED_PREFIX) -> dict[str, ModelSource]:
    """Every variant of an exported student folder (none if it does not exist), run by onnxruntime."""
    if not folder.is_dir():
        return {}

    def source(variant: str, file_name: str) -> ModelSource:
        def load(device: torch.device) -> LoadedModel:
            runner = deploy.ExportedStudent(folder, variant, threads)
            return LoadedModel(runner.logits, {"bytes": (folder / file_name).stat().st_size})

        return ModelSource(folder, load)

    models = deploy.read_config(folder)["models"]
    return {prefix + variant: source(variant, file_name) for variant, file_name in models.items()}


def single_task_models(task: Task, params: Params) -> dict[str, ModelSource]:
    """The single-task teacher, Tang et al.'s KD student, the no-KD baseline and the student's exported variants."""
    return {
        "teacher": teacher_source(paths.teacher_dir(task.name), params),
        "student": student_source(paths.student_dir(task.name), task),
        "baseline": student_source(paths.baseline_dir(task.name), task),
        **exported_sources(paths.export_dir(task.name), params.evaluate.threads),
    }


def multi_task_models(task: Task, params: Params) -> dict[str, ModelSource]:
    """The multi-task teacher's ``task`` model and each MKD student: jointly distilled, as kept per task, and that
    model's exported variants (``mkd_<architecture>-onnx``, ``-int8``, ...)."""
    models = {"mt_teacher": teacher_source(paths.mt_teacher_dir(task.name), params)}
    for architecture in params.mkd.students:
        root = paths.mkd_dir(architecture)
        models[f"mkd_{architecture}_joint"] = student_source(root / paths.MKD_JOINT, task)
        if params.mkd.finetune_epochs:
            models[f"mkd_{architecture}"] = student_source(root / task.name, task)
        exported = paths.mkd_export_dir(architecture) / task.name
        models |= exported_sources(exported, params.evaluate.threads, prefix=f"mkd_{architecture}-")
    return models


def existing(models: dict[str, ModelSource]) -> dict[str, ModelSource]:
    """The models whose folders exist (for ad-hoc evaluation of whatever has been trained)."""
    return {name: source for name, source in models.items() if source.path.is_dir()}

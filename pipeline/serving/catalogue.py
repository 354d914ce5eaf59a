"""Every model by name, for ``predict`` and the evaluate and compare stages: one resolution per name.

Names, for a task:

* ``teacher``: the fine-tuned single-task teacher; ``mt_teacher``: the multi-task teacher's model of the task;
* ``student``, ``baseline``: Tang et al.'s KD student and the same BiLSTM trained without KD (PyTorch);
* ``tfidf``: TF-IDF + logistic regression (Ridge for regression), fitted on the task's prepared train split when
  loaded (``pipeline.serving.tfidf``, scikit-learn);
* ``model2vec``: the model2vec reference model the ``reference`` stage built (``models/model2vec/<task>``: static
  embeddings distilled from ``teacher.checkpoint``, the library's classifier on them;
  ``pipeline.serving.model2vec_classifier``, numpy and tokenizers);
* ``student-<variant>``: the student's exported variants (``student-onnx``, ``student-int8``, ``student-table``),
  run by onnxruntime through ``pipeline.serving.deploy``;
* ``static``: the static student (model2vec-initialised embeddings, mean-pooled, an MLP head, KD-trained; PyTorch);
  ``static-<variant>``: its exported variants (``static-onnx``, ``static-int8``);
* ``mkd_<architecture>``: the MKD student the task uses, its fine-tuned folder if there is one, else the jointly
  distilled one (``paths.mkd_task_model``); ``mkd_<architecture>_joint``: the jointly distilled one;
  ``mkd_<architecture>-<variant>``: the exported variants of the task's MKD student (e.g. ``mkd_transformer-int8``).

``model_source`` resolves a name to its folder and a loader; a loaded model gives logits of raw texts, untruncated
token counts checked against its ``max_length``, and its parameter counts and size. torch (and transformers) are
imported only when a PyTorch model is loaded (scikit-learn only when ``tfidf`` is), so an exported model runs with
onnxruntime and tokenizers alone.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline import paths
from pipeline.data.tasks import Task
from pipeline.errors import UnknownModelError
from pipeline.params import DEFAULT_PARAMS_PATH, Params, load_params
from pipeline.serving import deploy

if TYPE_CHECKING:
    import torch

Predictor = Callable[[Sequence[str], Sequence[str] | None, int], np.ndarray]  # (text_a, text_b, batch_size) -> logits
TokenCounter = Callable[[Sequence[str], Sequence[str] | None], np.ndarray]  # (text_a, text_b) -> tokens per row
TEACHERS = ("teacher", "mt_teacher")
PYTORCH_STUDENTS = ("student", "baseline")
TFIDF = "tfidf"
MODEL2VEC = "model2vec"
REFERENCES = (TFIDF, MODEL2VEC)  # the models users pick instead of a distilled student
EXPORTED_PREFIX = "student-"  # exported variants of the Tang student: student-onnx, student-int8, ...
STATIC = "static"  # the static student (pipeline.students.static), models/static/<task>
STATIC_EXPORTED_PREFIX = "static-"  # its exported variants: static-onnx, static-int8
MKD_PREFIX = "mkd_"
JOINT_SUFFIX = "_joint"  # mkd_<architecture>_joint: the jointly distilled MKD student, without per-task fine-tuning
BYTES_PER_PARAMETER = 4  # fp32 weights of the PyTorch models
NO_LIMIT = 1 << 30  # a length limit large enough never to truncate (to count tokens before truncation)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to score raw texts, with what ``predict`` checks its inputs against and its size."""

    name: str
    logits: Predictor
    token_counts: TokenCounter  # untruncated tokens per row, as the model counts them
    max_length: int
    # "bytes" (fp32 weights, or the ONNX file); PyTorch models also "total" and "without_embeddings" parameters
    parameters: dict[str, int]


@dataclass(frozen=True)
class ModelSource:
    """Where a model lives and how to load it (PyTorch models onto a device, None: the default device)."""

    name: str
    path: Path
    load: Callable[[torch.device | None], LoadedModel]


def resolved_params(params: Params | Path) -> Params:
    """``params`` itself, or the params file it names, read (only when a model is loaded)."""
    return params if isinstance(params, Params) else load_params(params)


def teacher_source(name: str, model_dir: Path, params: Params | Path) -> ModelSource:
    """A fine-tuned Hugging Face teacher folder, run with ``teacher.max_length`` and ``score.precision`` (a params
    file is read only when the teacher is loaded); tokens counted with its special tokens, ``[CLS] a [SEP] b [SEP]``.
    """

    def load(device: torch.device | None) -> LoadedModel:
        from pipeline.serving.teacher import load_teacher, predict_logits

        hp = resolved_params(params)
        model, tokenizer = load_teacher(model_dir, device)
        total = sum(p.numel() for p in model.parameters())
        embeddings = sum(p.numel() for name, p in model.named_parameters() if ".embeddings." in f".{name}")

        def logits(text_a: Sequence[str], text_b: Sequence[str] | None, batch_size: int) -> np.ndarray:
            return predict_logits(model, tokenizer, text_a, text_b, batch_size, hp.teacher.max_length,
                                  hp.score.precision)  # fmt: skip

        def token_counts(text_a: Sequence[str], text_b: Sequence[str] | None) -> np.ndarray:
            encoded = tokenizer(list(text_a), list(text_b) if text_b is not None else None, truncation=False)
            return np.array([len(ids) for ids in encoded["input_ids"]], dtype=np.int64)

        sizes = {"total": total, "without_embeddings": total - embeddings, "bytes": total * BYTES_PER_PARAMETER}
        return LoadedModel(name, logits, token_counts, hp.teacher.max_length, sizes)

    return ModelSource(name, model_dir, load)


def student_source(name: str, model_dir: Path, task: Task, missing: str | None = None) -> ModelSource:
    """A saved student of any architecture (``save_student``), scoring ``task`` with its head; tokens counted by its
    own encoder, untruncated. ``missing``: the hint of the error raised when the folder does not exist."""

    def load(device: torch.device | None) -> LoadedModel:
        from pipeline.students.architectures import load_student
        from pipeline.students.base import count_parameters
        from pipeline.students.inference import predict
        from pipeline.training.device import pick_device

        if missing is not None and not model_dir.is_dir():
            raise FileNotFoundError(f"{model_dir}: {missing}")
        model, encoder = load_student(model_dir, device or pick_device())
        counter = copy.copy(encoder)
        counter.max_length = NO_LIMIT

        def logits(text_a: Sequence[str], text_b: Sequence[str] | None, batch_size: int) -> np.ndarray:
            return predict(model, encoder, task.name, text_a, text_b, batch_size)

        def token_counts(text_a: Sequence[str], text_b: Sequence[str] | None) -> np.ndarray:
            columns = [text_a] if text_b is None else [text_a, text_b]
            return np.max([[len(ids) for ids in counter.encode(column)] for column in columns], axis=0)

        total = count_parameters(model, include_embeddings=True)
        sizes = {
            "total": total,
            "without_embeddings": count_parameters(model, include_embeddings=False),
            "bytes": total * BYTES_PER_PARAMETER,
        }
        return LoadedModel(name, logits, token_counts, encoder.max_length, sizes)

    return ModelSource(name, model_dir, load)


def tfidf_source(task: Task, params: Params | Path) -> ModelSource:
    """The TF-IDF model of ``task``, fitted on its prepared train split (``tfidf`` params, ``seed``) the first time
    it is loaded, whatever the device (it runs on the CPU); tokens counted as words, never cut."""
    train = paths.prepared_split(task.name, "train")

    @functools.cache
    def fit() -> LoadedModel:
        import pyarrow.parquet as pq

        from pipeline.serving.tfidf import fit_tfidf

        if not train.is_file():
            raise FileNotFoundError(
                f"{train}: no prepared train split (run: python -m pipeline prepare --task {task.name})"
            )
        hp = resolved_params(params)
        model = fit_tfidf(task, pq.read_table(train), hp.tfidf, hp.seed)
        return LoadedModel(TFIDF, model.logits, model.token_counts, NO_LIMIT, model.parameters)

    return ModelSource(TFIDF, train, lambda device: fit())


def model2vec_source(task: Task) -> ModelSource:
    """The model2vec reference model of ``task`` (its ``reference`` stage's folder), run on the CPU whatever the
    device; tokens counted by its tokenizer, untruncated."""
    folder = paths.model2vec_dir(task.name)

    def load(device: torch.device | None) -> LoadedModel:
        from pipeline.serving.model2vec_classifier import Model2VecModel

        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder}: no model2vec model (run: python -m pipeline reference --task {task.name})"
            )
        model = Model2VecModel.load(task, folder)
        max_length = NO_LIMIT if model.max_length is None else model.max_length
        return LoadedModel(MODEL2VEC, model.logits, model.token_counts, max_length, model.parameters)

    return ModelSource(MODEL2VEC, folder, load)


def exported_source(name: str, folder: Path, variant: str, threads: int | None) -> ModelSource:
    """One variant of an exported student folder, run by onnxruntime with ``threads`` intra-op threads (None: its
    default) on the CPU whatever the device."""

    def load(device: torch.device | None) -> LoadedModel:
        runner = deploy.ExportedStudent(folder, variant, threads)
        size = (folder / runner.config["models"][variant]).stat().st_size
        return LoadedModel(name, runner.logits, runner.token_counts, runner.max_length, {"bytes": size})

    return ModelSource(name, folder, load)


def exported_names(folder: Path, prefix: str) -> list[str]:
    """``prefix + variant`` for every variant of an exported student folder; none if it does not exist."""
    return [prefix + variant for variant in deploy.read_config(folder)["models"]] if folder.is_dir() else []


def mkd_architectures() -> list[str]:
    """The MKD architectures trained here (folders under ``models/mkd``)."""
    return sorted(p.name for p in paths.MKD_DIR.glob("*") if p.is_dir())


def model_choices(task: Task) -> list[str]:
    """Names ``model_source`` resolves for ``task`` here: the student's exported variants on disk, the PyTorch
    models, and every MKD student on disk with its exported variants."""
    names = [*exported_names(paths.export_dir(task.name), EXPORTED_PREFIX), *PYTORCH_STUDENTS, *TEACHERS, *REFERENCES]
    names += [STATIC, *exported_names(paths.static_export_dir(task.name), STATIC_EXPORTED_PREFIX)]
    for architecture in mkd_architectures():
        prefix = MKD_PREFIX + architecture
        names += [prefix, prefix + JOINT_SUFFIX]
        names += exported_names(paths.mkd_export_dir(architecture) / task.name, prefix + "-")
    return names


def _exported(name: str, task: Task, folder: Path, prefix: str, threads: int | None, hint: str) -> ModelSource:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {hint}")
    if name not in exported_names(folder, prefix):
        choices = ", ".join(model_choices(task))
        raise UnknownModelError(f"{folder}: no exported variant {name!r}; choose one of: {choices}")
    return exported_source(name, folder, name.removeprefix(prefix), threads)


def model_source(
    name: str, task: Task, params: Params | Path = DEFAULT_PARAMS_PATH, threads: int | None = None
) -> ModelSource:
    """The model called ``name`` (see the module docstring) for ``task``.

    ``params`` (or the params file, read only then) sets the teacher's max length and precision and the TF-IDF
    model's settings; ``threads`` the onnxruntime threads of exported variants. An exported variant raises
    FileNotFoundError if its folder is missing and UnknownModelError if it has no such variant; a missing PyTorch
    model (or the TF-IDF model's missing train split) fails when loaded."""
    if name in TEACHERS:
        model_dir = paths.teacher_dir(task.name) if name == "teacher" else paths.mt_teacher_dir(task.name)
        return teacher_source(name, model_dir, params)
    if name in PYTORCH_STUDENTS:
        model_dir = paths.student_dir(task.name) if name == "student" else paths.baseline_dir(task.name)
        return student_source(name, model_dir, task)
    if name == TFIDF:
        return tfidf_source(task, params)
    if name == MODEL2VEC:
        return model2vec_source(task)
    if name.startswith(EXPORTED_PREFIX):
        hint = f"no exported student (run: python -m pipeline export --task {task.name})"
        return _exported(name, task, paths.export_dir(task.name), EXPORTED_PREFIX, threads, hint)
    if name == STATIC:
        hint = f"no static student (run: dvc repro static@{task.name})"
        return student_source(name, paths.static_dir(task.name), task, hint)
    if name.startswith(STATIC_EXPORTED_PREFIX):
        hint = f"no exported static student (run: dvc repro export_static@{task.name})"
        return _exported(name, task, paths.static_export_dir(task.name), STATIC_EXPORTED_PREFIX, threads, hint)
    if name.startswith(MKD_PREFIX):
        architecture, dash, _ = name.removeprefix(MKD_PREFIX).partition("-")
        if dash:
            folder = paths.mkd_export_dir(architecture) / task.name
            hint = f"no exported MKD student (run: dvc repro export_mkd@{architecture})"
            return _exported(name, task, folder, f"{MKD_PREFIX}{architecture}-", threads, hint)
        joint = architecture.endswith(JOINT_SUFFIX)
        architecture = architecture.removesuffix(JOINT_SUFFIX)
        root = paths.mkd_dir(architecture)
        model_dir = root / paths.MKD_JOINT if joint else paths.mkd_task_model(root, task.name)
        return student_source(name, model_dir, task, f"no MKD student (run: dvc repro mkd@{architecture})")
    raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(model_choices(task))}")


def load_model(
    name: str, task: Task, params: Params | Path = DEFAULT_PARAMS_PATH, threads: int | None = None
) -> LoadedModel:
    """``model_source(...)`` loaded onto the default device."""
    return model_source(name, task, params, threads).load(None)


def single_task_models(task: Task, params: Params) -> dict[str, ModelSource]:
    """The single-task teacher, Tang et al.'s KD student, the no-KD baseline, the reference models (TF-IDF,
    model2vec), the student's exported variants, and the static student with its exported variants."""
    names = ["teacher", *PYTORCH_STUDENTS, *REFERENCES, *exported_names(paths.export_dir(task.name), EXPORTED_PREFIX)]
    names += [STATIC, *exported_names(paths.static_export_dir(task.name), STATIC_EXPORTED_PREFIX)]
    return {name: model_source(name, task, params, params.evaluate.threads) for name in names}


def multi_task_models(task: Task, params: Params) -> dict[str, ModelSource]:
    """The multi-task teacher's ``task`` model (when ``mt_teacher.build`` has it) and each MKD student: jointly
    distilled, as the task uses it (when ``mkd.finetune_epochs`` fine-tunes it per task), and its exported variants
    (``mkd_<architecture>-onnx``, ...)."""
    names = ["mt_teacher"] if "multitask" in params.mt_teacher.build else []
    for architecture in params.mkd.students:
        prefix = MKD_PREFIX + architecture
        names.append(prefix + JOINT_SUFFIX)
        if params.mkd.finetune_epochs:
            names.append(prefix)
        names += exported_names(paths.mkd_export_dir(architecture) / task.name, prefix + "-")
    return {name: model_source(name, task, params, params.evaluate.threads) for name in names}


def existing(models: dict[str, ModelSource]) -> dict[str, ModelSource]:
    """The models whose folders exist (for ad-hoc evaluation of whatever has been trained)."""
    return {name: source for name, source in models.items() if source.path.is_dir()}

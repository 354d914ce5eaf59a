"""``predict``: the label with class probabilities (or the score, for regression) of every input line, as JSON lines.

Input: one sentence per line for single-sentence tasks, two tab-separated columns for sentence-pair tasks (a file
or stdin, UTF-8). Every line is validated before anything is predicted: an empty line, a wrong number of columns, an
empty column, undecodable bytes, or more tokens than the model reads (unless ``truncate``) is an error naming the
line. With any error nothing is written and the run fails, so an output line always belongs to the input line
named in its ``line`` field and no bad line can shift the others.

Models: the exported student variants (``student-onnx``, ``student-int8``, ``student-table``; onnxruntime only),
the PyTorch ``student``, ``baseline``, ``teacher`` and ``mt_teacher``, and the MKD students: ``mkd_<architecture>``
(PyTorch: the task's fine-tuned model, else the joint one) and ``mkd_<architecture>-<variant>`` (exported).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import paths
from pipeline.data.tasks import Task
from pipeline.errors import InputError, UnknownModelError
from pipeline.params import DEFAULT_PARAMS_PATH, load_params
from pipeline.serving import deploy

EXPORTED_PREFIX = "student-"
MKD_PREFIX = "mkd_"
PYTORCH_MODELS = ("student", "baseline", "teacher", "mt_teacher")
DEFAULT_MODEL = "student-onnx"
DEFAULT_BATCH_SIZE = 256
# A length limit large enough never to truncate (to count tokens before truncation).
NO_LIMIT = 1 << 30
# At most this many errors are listed; the count of the rest follows.
MAX_ERRORS_SHOWN = 20


@dataclass(frozen=True)
class LoadedModel:
    """Raw texts -> logits, and the per-row token counts checked against ``max_length``."""

    name: str
    logits: Callable[[Sequence[str], Sequence[str] | None, int], np.ndarray]
    token_counts: Callable[[Sequence[str], Sequence[str] | None], np.ndarray]
    max_length: int


def model_choices(task: Task, export_dir: Path | None = None) -> list[str]:
    """Model names ``load_model`` accepts for ``task``: exported variants present on disk, the PyTorch models, and
    the MKD students on disk."""
    folder = export_dir or paths.export_dir(task.name)
    exported = [EXPORTED_PREFIX + v for v in deploy.read_config(folder)["models"]] if folder.exists() else []
    mkd = []
    for architecture in sorted(p.name for p in paths.MKD_DIR.glob("*") if p.is_dir()):
        mkd.append(MKD_PREFIX + architecture)
        mkd_folder = paths.mkd_export_dir(architecture) / task.name
        if mkd_folder.exists():
            mkd += [f"{MKD_PREFIX}{architecture}-{variant}" for variant in deploy.read_config(mkd_folder)["models"]]
    return [*exported, *PYTORCH_MODELS, *mkd]


def exported_model(folder: Path, variant: str, threads: int | None, name: str | None = None) -> LoadedModel:
    """An exported variant run by onnxruntime (``pipeline.deploy``), named ``name`` (default ``student-<variant>``)."""
    runner = deploy.ExportedStudent(folder, variant, threads)
    return LoadedModel(name or EXPORTED_PREFIX + variant, runner.logits, runner.token_counts, runner.max_length)


def pytorch_student(name: str, model_dir: Path, task: Task) -> LoadedModel:
    """A saved student (or baseline) run by PyTorch; tokens counted by its own encoder, untruncated."""
    from pipeline.students.architectures import load_student
    from pipeline.students.inference import predict

    model, encoder = load_student(model_dir)
    counter = copy.copy(encoder)
    counter.max_length = NO_LIMIT

    def token_counts(text_a: Sequence[str], text_b: Sequence[str] | None) -> np.ndarray:
        columns = [text_a] if text_b is None else [text_a, text_b]
        return np.max([[len(ids) for ids in counter.encode(column)] for column in columns], axis=0)

    def logits(text_a: Sequence[str], text_b: Sequence[str] | None, batch_size: int) -> np.ndarray:
        return predict(model, encoder, task.name, text_a, text_b, batch_size)

    return LoadedModel(name, logits, token_counts, encoder.max_length)


def pytorch_teacher(name: str, model_dir: Path, params_path: Path) -> LoadedModel:
    """A fine-tuned teacher folder (``teacher.*`` params); tokens counted with its special tokens
    (``[CLS] a [SEP] b [SEP]``)."""
    from pipeline.serving.teacher import load_teacher, predict_logits

    params = load_params(params_path)

    model, tokenizer = load_teacher(model_dir)

    def token_counts(text_a: Sequence[str], text_b: Sequence[str] | None) -> np.ndarray:
        encoded = tokenizer(list(text_a), list(text_b) if text_b is not None else None, truncation=False)
        return np.array([len(ids) for ids in encoded["input_ids"]], dtype=np.int64)

    def logits(text_a: Sequence[str], text_b: Sequence[str] | None, batch_size: int) -> np.ndarray:
        return predict_logits(model, tokenizer, text_a, text_b, batch_size, params.teacher.max_length,
                              params.score.precision)  # fmt: skip

    return LoadedModel(name, logits, token_counts, params.teacher.max_length)


def load_model(
    name: str, task: Task, params_path: Path = DEFAULT_PARAMS_PATH, threads: int | None = None
) -> LoadedModel:
    """The model called ``name`` (see ``model_choices``) for ``task``; ``threads`` sets onnxruntime's threads.

    ``params_path`` is read only for the teacher (its max length and precision)."""
    if name.startswith(EXPORTED_PREFIX):
        folder = paths.export_dir(task.name)
        if not folder.exists():
            raise FileNotFoundError(
                f"{folder}: no exported student (run: python -m pipeline export --task {task.name})"
            )
        if name not in model_choices(task, folder):
            raise UnknownModelError(
                f"{folder}: no exported variant {name!r}; choose one of: {', '.join(model_choices(task, folder))}"
            )
        return exported_model(folder, name.removeprefix(EXPORTED_PREFIX), threads)
    if name in ("teacher", "mt_teacher"):
        model_dir = paths.teacher_dir(task.name) if name == "teacher" else paths.mt_teacher_dir(task.name)
        return pytorch_teacher(name, model_dir, params_path)
    if name.startswith(MKD_PREFIX):
        return mkd_model(name, task, threads)
    if name in ("student", "baseline"):
        model_dir = paths.student_dir(task.name) if name == "student" else paths.baseline_dir(task.name)
        return pytorch_student(name, model_dir, task)
    raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(model_choices(task))}")


def mkd_model(name: str, task: Task, threads: int | None) -> LoadedModel:
    """``mkd_<architecture>`` (PyTorch: the task's fine-tuned student, else the joint one) or
    ``mkd_<architecture>-<variant>`` (exported, onnxruntime)."""
    architecture, _, variant = name.removeprefix(MKD_PREFIX).partition("-")
    if variant:
        folder = paths.mkd_export_dir(architecture) / task.name
        if not folder.exists():
            raise FileNotFoundError(f"{folder}: no exported MKD student (run: dvc repro export_mkd@{architecture})")
        return exported_model(folder, variant, threads, name)
    root = paths.mkd_dir(architecture)
    model_dir = paths.mkd_task_model(root, task.name)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no MKD student (run: dvc repro mkd@{architecture})")
    return pytorch_student(name, model_dir, task)


LineError = tuple[int, str]  # (line number, problem)


def parse_lines(data: bytes, task: Task) -> tuple[list[int], list[list[str]], list[LineError]]:
    """Line numbers, fields (one per text column) and errors of the raw input.

    A final newline ends the last line; CRLF line ends are accepted. Every other line must hold exactly one
    non-blank field per text column, separated by tabs.
    """
    columns = len(task.text_columns)
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    numbers: list[int] = []
    rows: list[list[str]] = []
    errors: list[LineError] = []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.append((number, f"not valid UTF-8 ({exc.reason} at byte {exc.start})"))
            continue
        if not line.strip():
            errors.append((number, "empty line"))
            continue
        fields = line.split("\t")
        if len(fields) != columns:
            expected = "one sentence (no tab)" if columns == 1 else f"{columns} tab-separated columns"
            errors.append((number, f"expected {expected} for {task.name}, found {len(fields)} columns"))
            continue
        blank = [k + 1 for k, field in enumerate(fields) if not field.strip()]
        if blank:
            errors.append((number, f"column {blank[0]} is empty"))
            continue
        numbers.append(number)
        rows.append(fields)
    return numbers, rows, errors


def length_errors(model: LoadedModel, numbers: list[int], rows: list[list[str]]) -> list[LineError]:
    """An error per row with more tokens than ``model.max_length``."""
    if not rows:
        return []
    text_a = [row[0] for row in rows]
    text_b = [row[1] for row in rows] if len(rows[0]) > 1 else None
    counts = model.token_counts(text_a, text_b)
    return [
        (number, f"{count} tokens, more than {model.name}'s maximum of {model.max_length} (--truncate cuts it instead)")
        for number, count in zip(numbers, counts, strict=True)
        if count > model.max_length
    ]


def format_errors(errors: list[LineError], source: str) -> str:
    """``source:line: problem`` for the first ``MAX_ERRORS_SHOWN`` errors by line, and how many more there were."""
    ordered = sorted(errors)
    shown = [f"{source}:{number}: {problem}" for number, problem in ordered[:MAX_ERRORS_SHOWN]]
    more = len(ordered) - len(shown)
    return "\n".join(shown + ([f"... and {more} more invalid lines"] if more else []))


def prediction_records(task: Task, numbers: list[int], logits: np.ndarray) -> list[dict[str, object]]:
    """One JSON-ready record per input line: label and class probabilities, or the score (regression)."""
    if task.labels is None:
        return [{"line": n, "score": float(row[0])} for n, row in zip(numbers, logits, strict=True)]
    probabilities = deploy.softmax(logits.astype(np.float64))
    return [
        {
            "line": n,
            "label": task.labels[int(p.argmax())],
            "probabilities": {label: float(value) for label, value in zip(task.labels, p, strict=True)},
        }
        for n, p in zip(numbers, probabilities, strict=True)
    ]


def run_predict(model: LoadedModel, task: Task, data: bytes, source: str, batch_size: int, truncate: bool) -> list[str]:
    """JSON lines for the raw input ``data``; raise InputError listing every invalid line (nothing predicted)."""
    numbers, rows, errors = parse_lines(data, task)
    if not truncate:
        errors += length_errors(model, numbers, rows)
    if errors:
        raise InputError(format_errors(errors, source))
    if not rows:
        return []
    text_a = [row[0] for row in rows]
    text_b = [row[1] for row in rows] if task.is_pair else None
    logits = model.logits(text_a, text_b, batch_size)
    return [json.dumps(record) for record in prediction_records(task, numbers, logits)]

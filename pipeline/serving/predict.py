"""``predict``: the label with class probabilities (or the score, for regression) of every input line, as JSON lines.

Input: one sentence per line for single-sentence tasks, two tab-separated columns for sentence-pair tasks (a file
or stdin, UTF-8). Every line is validated before anything is predicted: an empty line, a wrong number of columns, an
empty column, undecodable bytes, or more tokens than the model reads (unless ``truncate``) is an error naming the
line. With any error nothing is written and the run fails, so an output line always belongs to the input line
named in its ``line`` field and no bad line can shift the others.

Models: any name of ``pipeline.serving.catalogue`` (the exported student variants ``student-onnx``, ``student-int8``,
``student-table``, run by onnxruntime alone; the PyTorch ``student``, ``baseline``, ``teacher`` and ``mt_teacher``; the
MKD students ``mkd_<architecture>``, ``mkd_<architecture>_joint`` and ``mkd_<architecture>-<variant>``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from pipeline.data.tasks import Task
from pipeline.errors import InputError
from pipeline.serving import deploy

if TYPE_CHECKING:
    from pipeline.serving.catalogue import LoadedModel

# At most this many errors are listed; the count of the rest follows.
MAX_ERRORS_SHOWN = 20


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

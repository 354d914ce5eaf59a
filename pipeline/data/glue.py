"""Prepare stage: read GLUE TSV files, validate every row, write normalised Parquet splits."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.data.schema import prepared_schema
from pipeline.data.tasks import Column, Task
from pipeline.errors import DataFormatError
from pipeline.params import GLUE_DIR_ENV

log = logging.getLogger(__name__)

UTF8_BOM = b"\xef\xbb\xbf"


def _resolve_column(task: Task, column: Column, header: list[str] | None, path: Path) -> int:
    if isinstance(column, int):
        return column
    assert header is not None, "named columns need a header row"
    try:
        return header.index(column)
    except ValueError:
        raise DataFormatError(
            f"{path}:1: missing column {column!r} for task {task.name}; header has {header}"
        ) from None


def _parse_label(task: Task, raw: str, path: Path, line_no: int) -> int | float:
    raw = raw.strip()
    if task.labels is None:
        try:
            return float(raw)
        except ValueError:
            raise DataFormatError(f"{path}:{line_no}: score {raw!r} is not a number") from None
    try:
        return task.labels.index(raw)
    except ValueError:
        raise DataFormatError(
            f"{path}:{line_no}: label {raw!r} is not one of {list(task.labels)} for task {task.name}"
        ) from None


def read_glue_tsv(task: Task, path: Path | str, skip_bad_rows: bool = False) -> pa.Table:
    """Read one GLUE-format TSV of ``task`` into the prepared schema.

    A bad row (not UTF-8, too few fields, empty text, unknown label) raises naming file and line, or, with
    ``skip_bad_rows``, is left out and reported in one warning.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(
            f"{path}: file not found (set data.glue_dir in params.yaml or the {GLUE_DIR_ENV} environment variable)"
        )
    lines = path.read_bytes().split(b"\n")
    lines[0] = lines[0].removeprefix(UTF8_BOM)  # GLUE's MRPC files start with a byte-order mark
    header: list[str] | None = None
    first_data_line = 1
    if task.has_header:
        header = _decode(lines[0], path, 1).rstrip("\r").split("\t")
        first_data_line = 2
    text_indices = [_resolve_column(task, column, header, path) for column in task.text_columns]
    label_index = _resolve_column(task, task.label_column, header, path)

    rows: list[tuple[list[str], int | float]] = []
    skipped: list[str] = []
    for line_no, raw_line in enumerate(lines[first_data_line - 1 :], start=first_data_line):
        if not raw_line.strip():
            continue
        try:
            rows.append(_parse_row(task, raw_line, text_indices, label_index, path, line_no))
        except DataFormatError as exc:
            if not skip_bad_rows:
                raise
            skipped.append(str(exc))
    if skipped:
        log.warning("%s: skipped %d bad rows (data.skip_bad_rows), first: %s", path, len(skipped), skipped[:3])
    if not rows:
        raise DataFormatError(f"{path}: no data rows")

    schema = prepared_schema(task)
    texts = list(zip(*(row_texts for row_texts, _ in rows)))
    return pa.table(
        {
            "id": pa.array(np.arange(len(rows), dtype=np.int64)),
            "text_a": pa.array(texts[0], pa.string()),
            "text_b": pa.array(texts[1] if task.is_pair else [None] * len(rows), pa.string()),
            "label": pa.array([label for _, label in rows], schema.field("label").type),
        },
        schema=schema,
    )


def _parse_row(
    task: Task, raw_line: bytes, text_indices: list[int], label_index: int, path: Path, line_no: int
) -> tuple[list[str], int | float]:
    """Texts and label of one data line; DataFormatError naming file and line if it is malformed."""
    fields = _decode(raw_line, path, line_no).rstrip("\r").split("\t")
    needed = max([*text_indices, label_index]) + 1
    if len(fields) < needed:
        raise DataFormatError(
            f"{path}:{line_no}: expected at least {needed} tab-separated fields for task {task.name}, "
            f"found {len(fields)}"
        )
    texts = []
    for index, column in zip(text_indices, task.text_columns):
        text = fields[index].strip()
        if not text:
            raise DataFormatError(f"{path}:{line_no}: empty text in column {column!r}")
        texts.append(text)
    return texts, _parse_label(task, fields[label_index], path, line_no)


def _decode(raw: bytes, path: Path, line_no: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            f"{path}:{line_no}: not valid UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
        ) from None

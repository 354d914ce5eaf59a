"""Reading a task of your own: CSV, TSV, JSONL and Parquet files by extension (and .txt for unlabelled text).

Every reader returns ``Rows``: the named text columns and, when asked, the label column, each row with the place a
person finds it (``file:line`` for text formats, ``file: row N`` for Parquet). A problem of the file (missing file,
missing or repeated column, undecodable byte) raises ``DataFormatError`` naming the file; a problem of one row (a row
of the wrong width, a line that is not a JSON object, a missing or repeated key, an empty text or label) raises naming
file, row and column, or with ``skip_bad_rows`` the row is left out and counted.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.data.schema import label_type, prepared_schema
from pipeline.data.tasks import Task
from pipeline.errors import DataFormatError

log = logging.getLogger(__name__)

UTF8_BOM = "\ufeff"
DELIMITERS = {".csv": ",", ".tsv": "\t"}
OTHER_DELIMITERS = (",", ";", "\t", "|")


@dataclass
class Rows:
    """Texts (one list per text column) and raw labels of a file's good rows, with where each row is."""

    path: Path
    texts: list[list[str]]
    labels: list[Any] | None
    places: list[str] = field(default_factory=list)  # "file:line" / "file: row N", one per row
    skipped: list[str] = field(default_factory=list)  # the messages of rows left out (skip_bad_rows)

    def __len__(self) -> int:
        return len(self.places)


def read_rows(path: Path, text_columns: Sequence[str], label_column: str | None, skip_bad_rows: bool = False) -> Rows:
    """Read the text columns (and ``label_column`` unless None) of a CSV, TSV, JSONL/JSON, Parquet or TXT file."""
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found (paths in task_defs are relative to data.files_dir)")
    suffix = path.suffix.lower()
    columns = [*text_columns, *([label_column] if label_column is not None else [])]
    if suffix == ".parquet":
        records = _parquet_records(path, columns)
    elif suffix in (".jsonl", ".json"):
        records = _json_records(path, columns)
    elif suffix in DELIMITERS:
        records = _delimited_records(path, columns, DELIMITERS[suffix])
    elif suffix == ".txt":
        if label_column is not None or len(text_columns) != 1:
            raise DataFormatError(f"{path}: a .txt file holds one unlabelled text per line; use CSV/JSONL for pairs")
        records = ((f"{path}:{n}", {text_columns[0]: line}) for n, line in _text_lines(path))
    else:
        raise DataFormatError(f"{path}: unknown file format {suffix!r} (csv, tsv, jsonl, json, parquet, txt)")

    rows = Rows(path, [[] for _ in text_columns], [] if label_column is not None else None)
    for place, record in records:
        try:
            if isinstance(record, DataFormatError):  # a row the reader could not read as a record
                raise record
            texts = [_text(record.get(column), place, column) for column in text_columns]
            label = None if label_column is None else _label(record.get(label_column), place, label_column)
        except DataFormatError as exc:
            if not skip_bad_rows:
                raise
            rows.skipped.append(str(exc))
            continue
        for column_texts, text in zip(rows.texts, texts):
            column_texts.append(text)
        if rows.labels is not None:
            rows.labels.append(label)
        rows.places.append(place)
    if rows.skipped:
        log.warning("%s: skipped %d bad rows (data.skip_bad_rows), first: %s", path, len(rows.skipped), rows.skipped[0])
    if not rows.places:
        raise DataFormatError(f"{path}: no data rows")
    return rows


def _text(value: Any, place: str, column: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        if value is None:
            raise DataFormatError(f"{place}: empty text in column {column!r}")
        raise DataFormatError(f"{place}: text in column {column!r} is a {type(value).__name__}, not a string")
    text = str(value).strip()
    if not text:
        raise DataFormatError(f"{place}: empty text in column {column!r}")
    return text


def _label(value: Any, place: str, column: str) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataFormatError(f"{place}: empty label in column {column!r}")
    return value.strip() if isinstance(value, str) else value


def _decoded(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").removeprefix(UTF8_BOM)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataFormatError(
            f"{path}:{line}: not valid UTF-8 (byte {raw[exc.start]:#04x} at column {column}); save the file as UTF-8"
        ) from None


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(_decoded(path).split("\n"), start=1):
        if line.strip():
            yield number, line.rstrip("\r")


Record = dict[str, Any] | DataFormatError  # a row's values by column, or why the row cannot be read (skippable)


def _delimited_records(path: Path, columns: list[str], delimiter: str) -> Iterator[tuple[str, Record]]:
    """CSV (RFC 4180 quoting) or TSV (tab-split lines, no quoting, as GLUE) records under the header's names."""
    text = _decoded(path)
    if delimiter == "\t":
        lines = [line.rstrip("\r").split("\t") for line in text.split("\n")]
        numbered = ((number, fields) for number, fields in enumerate(lines, start=1) if any(f.strip() for f in fields))
    else:
        # A field can be as long as the file (long documents are data; truncation happens at tokenisation), not
        # only csv's default 131,072 characters.
        csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        numbered = ((reader.line_num, fields) for fields in reader if any(f.strip() for f in fields))
    try:
        _, header = next(numbered)
    except StopIteration:
        raise DataFormatError(f"{path}: empty file (expected a header row naming the columns)") from None
    header = [name.strip() for name in header]
    repeated = sorted(name for name, count in Counter(header).items() if count > 1 and name)
    if repeated:
        raise DataFormatError(f"{path}:1: column {repeated[0]!r} appears more than once in the header {header}")
    for column in columns:
        if column not in header:
            hint = ""
            found = [d for d in OTHER_DELIMITERS if d != delimiter and d in "".join(header)]
            if len(header) == 1 and found:
                hint = f" (the header splits on {found[0]!r}, not {delimiter!r}: a {path.suffix} file is "
                hint += "comma-separated" if delimiter == "," else "tab-separated"
                hint += "; save it so or rename it)"
            raise DataFormatError(f"{path}:1: missing column {column!r}; the header has {header}{hint}")
    for number, fields in numbered:
        if len(fields) != len(header):
            yield (
                f"{path}:{number}",
                DataFormatError(
                    f"{path}:{number}: {len(fields)} fields, the header has {len(header)} "
                    f"(a stray {'tab' if delimiter == chr(9) else 'comma or quote'}?)"
                ),
            )
        else:
            yield f"{path}:{number}", dict(zip(header, fields))


def _json_records(path: Path, columns: list[str]) -> Iterator[tuple[str, Record]]:
    """JSON Lines (one object a line), or a .json file holding one array of objects."""
    text = _decoded(path)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text, object_pairs_hook=_JsonObject.of_pairs)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        numbered = ((f"{path}: item {i}", item) for i, item in enumerate(items, start=1))
    else:
        numbered = ((f"{path}:{n}", _json_line(line, path, n)) for n, line in _text_lines(path))
    for place, item in numbered:
        yield place, _json_record(item, place, columns)


class _JsonObject(dict):
    """A decoded JSON object that remembers its first repeated key (``json`` keeps a repeated key's last value)."""

    repeated: str | None = None

    @classmethod
    def of_pairs(cls, pairs: list[tuple[str, Any]]) -> _JsonObject:
        obj = cls(pairs)
        if len(obj) < len(pairs):
            keys = [key for key, _ in pairs]
            obj.repeated = next(key for i, key in enumerate(keys) if key in keys[:i])
        return obj


def _json_record(item: Any, place: str, columns: list[str]) -> Record:
    if isinstance(item, DataFormatError):
        return item
    if not isinstance(item, dict):
        return DataFormatError(f"{place}: expected a JSON object with keys {columns}, found {type(item).__name__}")
    if isinstance(item, _JsonObject) and item.repeated is not None:
        return DataFormatError(f"{place}: key {item.repeated!r} appears more than once in the object")
    missing = [column for column in columns if column not in item]
    if missing:
        return DataFormatError(f"{place}: missing key {missing[0]!r}; the object has {sorted(item)}")
    return item


def _json_line(line: str, path: Path, number: int) -> Any:
    try:
        return json.loads(line, object_pairs_hook=_JsonObject.of_pairs)
    except json.JSONDecodeError as exc:
        return DataFormatError(f"{path}:{number}: not valid JSON ({exc.msg})")


def _parquet_records(path: Path, columns: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for files that are not Parquet
        raise DataFormatError(f"{path}: not a readable Parquet file ({exc})") from None
    for column in columns:
        if column not in names:
            raise DataFormatError(f"{path}: missing column {column!r}; the file has {names}")
    table = pq.read_table(path, columns=list(dict.fromkeys(columns)))
    for number, record in enumerate(table.to_pylist(), start=1):
        yield f"{path}: row {number}", record


def number_or_none(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not a number (booleans are not numbers)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def label_string(value: Any) -> str:
    """A class label as written: whole numbers without a fraction part (JSON/Parquet ``3`` and ``3.0`` are "3")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def encode_labels(task: Task, rows: Rows, column: str, skip_bad_rows: bool) -> Rows:
    """The rows with labels as class indices (or float scores). An unknown label or a score that is not a number
    raises naming row and column, or with ``skip_bad_rows`` the row is left out and counted."""
    index = {label: i for i, label in enumerate(task.labels or ())}
    good: list[int] = []
    values: list[float | int] = []
    for position, (value, place) in enumerate(zip(rows.labels, rows.places)):
        try:
            values.append(_encoded_label(task, index, value, place, column))
        except DataFormatError as exc:
            if not skip_bad_rows:
                raise
            rows.skipped.append(str(exc))
            continue
        good.append(position)
    if not good:
        raise DataFormatError(f"{rows.path}: no rows with a valid label in column {column!r}")
    return Rows(
        rows.path,
        [[texts[i] for i in good] for texts in rows.texts],
        values,
        [rows.places[i] for i in good],
        rows.skipped,
    )


def _encoded_label(task: Task, index: dict[str, int], value: Any, place: str, column: str) -> float | int:
    if task.is_regression:
        number = number_or_none(value)
        if number is None:
            raise DataFormatError(f"{place}: score {value!r} in column {column!r} is not a number")
        return number
    label = label_string(value)
    if label not in index:
        shown = list(task.labels) if len(task.labels) <= 10 else [*task.labels[:10], "..."]
        raise DataFormatError(
            f"{place}: label {label!r} in column {column!r} is not a label of task {task.name} "
            f"(the labels of train: {shown})"
        )
    return index[label]


def texts_of(rows: Rows, index: int) -> tuple[str, str | None]:
    return rows.texts[0][index], rows.texts[1][index] if len(rows.texts) == 2 else None


def labelled_table(task: Task, rows: Rows, labels: np.ndarray, keep: np.ndarray) -> pa.Table:
    """The rows at ``keep`` in the prepared schema, ids 0..n-1."""
    texts = [texts_of(rows, int(i)) for i in keep]
    return pa.table(
        {
            "id": pa.array(np.arange(len(keep), dtype=np.int64)),
            "text_a": pa.array([a for a, _ in texts], pa.string()),
            "text_b": pa.array([b for _, b in texts], pa.string()),
            "label": pa.array(labels[keep], label_type(task)),
        },
        schema=prepared_schema(task),
    )


def read_labelled_file(task: Task, path: Path, skip_bad_rows: bool, skipped: list[str] | None = None) -> pa.Table:
    """A labelled dev/test file of the task; a label train never had names its row. The messages of rows left out
    (``skip_bad_rows``) are added to ``skipped``."""
    rows = encode_labels(task, read_rows(path, task.text_columns, task.label_column, skip_bad_rows),
                          task.label_column, skip_bad_rows)  # fmt: skip
    if skipped is not None:
        skipped += rows.skipped
    return labelled_table(task, rows, np.asarray(rows.labels), np.arange(len(rows)))

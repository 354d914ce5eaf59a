"""``prepare`` stage: validate a task's files and write normalised Parquet splits plus the resolved task.

A GLUE task reads its TSV files under ``data.glue_dir``; a task of your own (params ``task_defs``) reads its CSV,
TSV, JSONL or Parquet files under ``data.files_dir``. Either way the output is ``data/prepared/<task>/``:
``train``, the dev and test splits and ``task.json`` (the task with its labels in class-index order, and how each
split was made); beside it ``data/unlabelled/<task>.parquet``, in-domain text without labels (empty for GLUE), which
only augment and export read (a change of it reruns neither the teacher nor the baseline). Everything is read and
checked before anything is written, and the folder is swapped in whole.

No dev or test text reaches training: a task of your own loses the train rows that repeat a dev or test row (text,
or pair of texts; counted in ``task.json`` as ``train_overlap_dropped``) and the unlabelled texts equal to any
labelled text. GLUE's published splits are kept as they are (comparable with published results); their overlap is
only logged.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import paths
from pipeline.data.files import (
    Rows,
    encode_labels,
    label_string,
    labelled_table,
    number_or_none,
    read_labelled_file,
    read_rows,
    texts_of,
)
from pipeline.data.glue import read_glue_tsv
from pipeline.data.io import atomic_dir, write_json, write_parquet
from pipeline.data.schema import unlabelled_schema
from pipeline.data.tasks import TASK_FILE, Task, get_task
from pipeline.errors import DataFormatError
from pipeline.params import GLUE_DIR_ENV, Params, TaskDefinition

log = logging.getLogger(__name__)

UNLABELLED_METADATA = "distillery.unlabelled"  # Parquet schema metadata key of the unlabelled text's counts


def subsample(table: pa.Table, max_rows: int | None, seed: int) -> pa.Table:
    """A seeded random subset of at most ``max_rows`` rows, in original order (whole table if None)."""
    if max_rows is None or table.num_rows <= max_rows:
        return table
    keep = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=max_rows, replace=False))
    return table.take(pa.array(keep))


def run_prepare(name: str, params: Params, out_root: Path = paths.PREPARED_DIR) -> dict[str, int]:
    """Validate and convert every split of task ``name``; return row counts per split."""
    definition = params.task_defs.get(name)
    if definition is None:
        task = get_task(name)
        tables = _glue_tables(task, params)
        unlabelled = pa.table({"id": [], "text_a": [], "text_b": []}, schema=unlabelled_schema())
        record: dict[str, Any] = {"dev": "GLUE dev file(s)"}
        unlabelled_record: dict[str, int] = {}
        held_out = _texts({split: table for split, table in tables.items() if split != "train"})
        repeats = sum(pair in held_out for pair in _pairs(tables["train"]))
        if repeats:
            log.warning("%s: %d train rows repeat a dev or test row (GLUE's published splits, kept)", name, repeats)
    else:
        task, tables, unlabelled, record, unlabelled_record = prepare_own_task(name, definition, params)
    target = out_root / task.name
    with atomic_dir(target) as folder:
        for split, table in tables.items():
            pq.write_table(table, folder / f"{split}.parquet")
            log.info("%s/%s: %d rows", task.name, split, table.num_rows)
        counts = {split: table.num_rows for split, table in tables.items()}
        if not task.is_regression:
            record["label_counts"] = {split: label_counts(task, table) for split, table in tables.items()}
        write_json({"task": task.to_dict(), "rows": counts, **record}, folder / TASK_FILE)
        # its counts go with it, not into task.json, which every stage reads: new unlabelled text retrains no teacher
        unlabelled_path = paths.unlabelled_text(task.name, out_root)
        unlabelled_record = {"rows": unlabelled.num_rows, **unlabelled_record}
        write_parquet(unlabelled.replace_schema_metadata({UNLABELLED_METADATA: json.dumps(unlabelled_record)}),
                      unlabelled_path)  # fmt: skip
        log.info("%s/unlabelled: %s -> %s", task.name, unlabelled_record, unlabelled_path)
    return {**counts, "unlabelled": unlabelled.num_rows}


def unlabelled_record(path: Path) -> dict[str, int]:
    """What prepare counted of a task's unlabelled text: rows, duplicates dropped, rows skipped (skip_bad_rows)."""
    return json.loads(pq.read_schema(path).metadata[UNLABELLED_METADATA.encode()])


def _glue_tables(task: Task, params: Params) -> dict[str, pa.Table]:
    task_dir = params.data.resolved_glue_dir() / task.glue_dir_name
    if not task_dir.is_dir():
        raise DataFormatError(
            f"{task_dir}: GLUE data folder for task {task.name} not found "
            f"(set data.glue_dir in params.yaml or the {GLUE_DIR_ENV} environment variable)"
        )
    if not task_dir.resolve().is_relative_to(params.data.files_dir.resolve()):
        log.warning(
            "%s is outside data.files_dir (%s), prepare's DVC dependency: DVC does not see a change of its files",
            task_dir, params.data.files_dir,
        )  # fmt: skip
    splits = (*task.dev_splits, *task.test_splits)
    tables = {split: read_glue_tsv(task, task_dir / f"{split}.tsv", params.data.skip_bad_rows) for split in splits}
    train = read_glue_tsv(task, task_dir / "train.tsv", params.data.skip_bad_rows)
    return {"train": subsample(train, params.data.max_train_examples, params.seed), **tables}


def prepare_own_task(
    name: str, definition: TaskDefinition, params: Params
) -> tuple[Task, dict[str, pa.Table], pa.Table, dict[str, Any], dict[str, int]]:
    """Read a declared task's files: resolve problem and labels from train, take a dev split out of train when
    there is no dev file, keep ``labelled_per_class`` labelled rows, and collect the unlabelled text. Returns the
    task, its labelled splits, the unlabelled text, task.json's record and the unlabelled text's."""
    root = params.data.files_dir
    skip = params.data.skip_bad_rows
    text_columns, label_column = definition.text_columns, definition.label_column
    train = read_rows(root / definition.train, text_columns, label_column, skip)
    regression = _is_regression(definition, train)
    labels = None if regression else _class_labels(definition, train)
    task = definition.to_task(name, labels)
    record: dict[str, Any] = {"problem": "regression" if regression else "classification"}

    train = encode_labels(task, train, label_column, skip)
    skipped = train.skipped  # the labelled files' skipped rows (skip_bad_rows), counted in task.json
    train_labels = np.asarray(train.labels)
    rng = np.random.default_rng(params.seed)
    if definition.dev is None:
        dev_rows = _dev_rows(train_labels, definition.dev_fraction, regression, rng)
        record["dev"] = f"{len(dev_rows)} rows taken out of train ({definition.dev_fraction:g}, seed {params.seed}" + (
            ")" if regression else ", stratified by label)"
        )
        dev_mask = np.zeros(len(train), dtype=bool)
        dev_mask[dev_rows] = True
        tables = {"dev": labelled_table(task, train, train_labels, np.flatnonzero(dev_mask))}
        train_keep = np.flatnonzero(~dev_mask)
    else:
        tables = {"dev": read_labelled_file(task, root / definition.dev, skip, skipped)}
        record["dev"] = str(definition.dev)
        train_keep = np.arange(len(train))
    if definition.test is not None:
        tables["test"] = read_labelled_file(task, root / definition.test, skip, skipped)
    held_out = _texts(tables)
    repeats = np.array([texts_of(train, int(i)) in held_out for i in train_keep], dtype=bool)
    if repeats.all():
        raise DataFormatError(f"{train.path}: every train row repeats a row of the dev or test file")
    train_keep = train_keep[~repeats]
    record["train_overlap_dropped"] = int(repeats.sum())
    if repeats.any():
        log.warning("%s: dropped %d train rows that repeat a dev or test row", name, repeats.sum())

    unlabelled_texts: list[tuple[str, str | None]] = []
    if definition.labelled_per_class is not None:
        labelled = _per_class(train_labels[train_keep], definition.labelled_per_class, rng)
        rest = np.setdiff1d(np.arange(len(train_keep)), labelled)
        unlabelled_texts += [texts_of(train, i) for i in train_keep[rest]]
        train_keep = train_keep[labelled]
        record["labelled_per_class"] = definition.labelled_per_class
    train_table = labelled_table(task, train, train_labels, train_keep)
    tables = {"train": subsample(train_table, params.data.max_train_examples, params.seed), **tables}

    unlabelled_skipped = 0
    for path in definition.unlabelled:
        rows = read_rows(root / path, text_columns, None, skip)
        unlabelled_skipped += len(rows.skipped)
        unlabelled_texts += [texts_of(rows, i) for i in range(len(rows))]
    first_id = max(tables["train"].column("id").to_pylist(), default=-1) + 1  # ids disjoint from train's
    unlabelled, dropped = _deduplicated(unlabelled_texts, tables, first_id)
    record["skipped_rows"] = len(skipped)
    return task, tables, unlabelled, record, {"duplicates_dropped": dropped, "skipped_rows": unlabelled_skipped}


def _is_regression(definition: TaskDefinition, train: Rows) -> bool:
    """Regression if declared so, or (undeclared, no labels listed) when every label is a number and some are not
    whole: a float label column means regression, as in Hugging Face's run_classification."""
    if definition.problem is not None or definition.labels is not None:
        return definition.problem == "regression"
    numbers = [number_or_none(value) for value in train.labels]
    return all(n is not None for n in numbers) and any(n != int(n) for n in numbers)


def _class_labels(definition: TaskDefinition, train: Rows) -> tuple[str, ...]:
    """The labels listed in the definition, else the sorted labels of train (numerically when all are integers)."""
    if definition.labels is not None:
        return tuple(definition.labels)
    for value, place in zip(train.labels, train.places):
        number = number_or_none(value)
        if number is not None and number != int(number):
            raise DataFormatError(
                f"{place}: label {value!r} in column {definition.label_column!r} is a fraction, but the task is a "
                "classification task (set problem: regression for scores)"
            )
    seen = set(map(label_string, train.labels))
    if len(seen) < 2:
        raise DataFormatError(f"{train.path}: column {definition.label_column!r} has a single label {sorted(seen)}")
    whole = all(label.lstrip("-").isdigit() for label in seen)
    return tuple(sorted(seen, key=int) if whole else sorted(seen))


def _dev_rows(labels: np.ndarray, fraction: float, regression: bool, rng: np.random.Generator) -> np.ndarray:
    """Seeded dev rows: ``fraction`` of each class (at least one of every class with two rows or more), or of all
    rows for regression."""
    if regression:
        return np.sort(rng.permutation(len(labels))[: max(1, round(fraction * len(labels)))])
    chosen = []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        take = min(max(1, round(fraction * len(rows))), len(rows) - 1)
        chosen.append(rows[:take])
    return np.sort(np.concatenate(chosen))


def _per_class(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded positions of at most ``count`` rows of each class, in order."""
    chosen = [rng.permutation(np.flatnonzero(labels == label))[:count] for label in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def _pairs(table: pa.Table) -> list[tuple[str, str | None]]:
    return list(zip(table.column("text_a").to_pylist(), table.column("text_b").to_pylist()))


def _texts(tables: dict[str, pa.Table]) -> set[tuple[str, str | None]]:
    """Every (text_a, text_b) of the tables."""
    return {pair for table in tables.values() for pair in _pairs(table)}


def _deduplicated(
    texts: list[tuple[str, str | None]], labelled: dict[str, pa.Table], first_id: int
) -> tuple[pa.Table, int]:
    """Unlabelled texts without repeats and without any text of a labelled split (dev and test text never leaks
    into the transfer set), with ids from ``first_id`` on (after train's: each id is one original of the transfer
    set); the table and how many were dropped."""
    seen = _texts(labelled)
    kept = []
    for pair in texts:
        if pair not in seen:
            seen.add(pair)
            kept.append(pair)
    table = pa.table(
        {
            "id": pa.array(np.arange(first_id, first_id + len(kept), dtype=np.int64)),
            "text_a": pa.array([a for a, _ in kept], pa.string()),
            "text_b": pa.array([b for _, b in kept], pa.string()),
        },
        schema=unlabelled_schema(),
    )
    return table, len(texts) - len(kept)


def label_counts(task: Task, table: pa.Table) -> dict[str, int]:
    """Rows per class label of a prepared classification split."""
    counts = Counter(table.column("label").to_pylist())
    return {label: counts.get(i, 0) for i, label in enumerate(task.labels or ())}

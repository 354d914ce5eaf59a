"""``export`` stage: the task's KD student as a deployable folder (ONNX fp32, int8, optional gate-table variant),
its embedding tables pruned to the tokens of its texts, checked against PyTorch on dev."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline import paths
from pipeline.data.io import atomic_dir, sha256_file, write_json
from pipeline.data.schema import table_texts
from pipeline.data.tasks import Task
from pipeline.errors import ExportError
from pipeline.params import ExportParams
from pipeline.serving.export import FALLBACK, check_variants, vocabulary_ids, write_export
from pipeline.students.architectures import MODEL_FILE, load_student


def training_tables(task: Task, prepared_dir: Path = paths.PREPARED_DIR, augmented_dir: Path = paths.AUGMENTED_DIR
                    ) -> list[pa.Table]:  # fmt: skip
    """The texts the student can meet besides dev: its prepared splits (train, test, unlabelled) and its transfer
    set, those of them that exist."""
    splits = [split for split in task.splits if split not in task.dev_splits]
    files = [paths.prepared_split(task.name, split, prepared_dir) for split in splits]
    files += [paths.unlabelled_text(task.name, prepared_dir), paths.transfer_set(task.name, augmented_dir)]
    return [pq.read_table(path, columns=["text_a", "text_b"]) for path in files if path.is_file()]


def texts(task: Task, tables: Sequence[pa.Table]) -> Iterator[str]:
    """Every text (both sides of a pair) of ``tables``."""
    for table in tables:
        text_a, text_b = table_texts(task, table)
        yield from text_a
        yield from text_b or ()


def export_student(
    task: Task, params: ExportParams, model_dir: Path, out_dir: Path, splits: dict[str, pa.Table],
    metrics_path: Path | None, training: Sequence[pa.Table] = (),
) -> dict[str, Any]:  # fmt: skip
    """Export ``task`` of the student saved in ``model_dir`` (any architecture) to ``out_dir``; check it on ``splits``.

    With ``params.prune_vocabulary`` the embedding tables keep the tokens of ``training`` (tables of texts: transfer
    set, train, test), and of ``splits`` unless a fallback table reads the other tokens (``export.unseen_tokens``:
    then dev reads as a new text would). Writes the folder atomically and the check report to ``metrics_path`` (if
    given); returns the report.
    """
    model, encoder = load_student(model_dir, torch.device("cpu"))
    if task.name not in model.tasks:
        raise ExportError(
            f"{model_dir}: the student has no head for task {task.name} (it has {', '.join(model.tasks)})"
        )
    source = {
        "model_dir": str(model_dir), "architecture": model.architecture,
        "model_sha256": sha256_file(Path(model_dir) / MODEL_FILE),
    }  # fmt: skip
    kept = seen = None
    if params.prune_vocabulary:
        seen = vocabulary_ids(encoder, texts(task, training), by_word=True)  # word by word: the transfer set is large
        kept = seen
        if params.unseen_tokens != FALLBACK:  # dev's tokens too, so that dev reads exactly
            kept = np.union1d(seen, vocabulary_ids(encoder, texts(task, list(splits.values()))))
    with atomic_dir(out_dir) as folder:
        kept = write_export(model, encoder, task, folder, params, source, kept)
        # the training ids in the exported numbering (all kept), to report dev's tokens outside them
        exported_seen = None if kept is None else np.searchsorted(kept, seen)
        report = {
            "task": task.name, **source,
            **check_variants(model, encoder, task, folder, splits, params, exported_seen if training else None),
        }  # fmt: skip
    if metrics_path is not None:
        write_json(report, metrics_path)
    return report

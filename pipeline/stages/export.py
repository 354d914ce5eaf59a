"""``export`` stage: the task's KD student as a deployable folder (ONNX fp32, int8, gate-table variants), checked
against PyTorch on dev."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from pipeline.data.io import atomic_dir, sha256_file, write_json
from pipeline.data.tasks import Task
from pipeline.errors import ExportError
from pipeline.params import ExportParams
from pipeline.serving.export import check_variants, write_export
from pipeline.students.architectures import MODEL_FILE, load_student


def export_student(
    task: Task, params: ExportParams, model_dir: Path, out_dir: Path, splits: dict[str, pa.Table],
    metrics_path: Path | None,
) -> dict[str, Any]:  # fmt: skip
    """Export ``task`` of the student saved in ``model_dir`` (any architecture) to ``out_dir``; check it on ``splits``.

    Writes the folder atomically and the check report to ``metrics_path`` (if given); returns the report.
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
    with atomic_dir(out_dir) as folder:
        write_export(model, encoder, task, folder, params, source)
        report = {"task": task.name, **source, **check_variants(model, encoder, task, folder, splits, params)}
    if metrics_path is not None:
        write_json(report, metrics_path)
    return report

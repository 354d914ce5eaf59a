"""``export_mkd`` stage: each task's MKD student (fine-tuned, else joint) exported as a deployable ONNX folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline import paths
from pipeline.data.io import atomic_dir, write_json
from pipeline.data.tasks import Task
from pipeline.params import ExportParams
from pipeline.stages.export import export_student


def export_mkd_students(
    tasks: Sequence[Task], params: ExportParams, mkd_dir: Path, out_dir: Path, splits: dict[str, dict[str, pa.Table]],
    metrics_path: Path, training: dict[str, Sequence[pa.Table]] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Export one MKD architecture for every task: its fine-tuned model (``mkd_dir/<task>``) where there is one,
    else the jointly distilled model (``mkd_dir/multitask``), to ``out_dir/<task>``; one check report per task.
    ``training``: per task, the tables of texts whose tokens the pruned vocabulary keeps (``export_student``)."""
    reports = {}
    with atomic_dir(out_dir) as folder:
        for task in tasks:
            model_dir = paths.mkd_task_model(mkd_dir, task.name)
            texts = (training or {}).get(task.name, ())
            reports[task.name] = export_student(
                task, params, model_dir, folder / task.name, splits[task.name], None, texts
            )
    write_json(reports, metrics_path)
    return reports

"""Evaluate stage: teacher vs KD student vs no-KD baseline vs the exported student variants on dev (or any file).

Reports each task metric, parameter counts (PyTorch models) and sizes, and CPU inference throughput at several
batch sizes, tokenisation included, every model timed in one run with the same thread count (torch threads and
onnxruntime intra-op threads). Exported variants (``models/export/<task>``, run by onnxruntime through
``pipeline.deploy``) appear as ``student-onnx``, ``student-int8``, ``student-table`` when the folder exists.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline import deploy, paths
from pipeline.device import pick_device
from pipeline.metrics import compute_metrics
from pipeline.params import Params
from pipeline.prepare import read_glue_tsv
from pipeline.student.architectures import load_student
from pipeline.student.base import count_parameters
from pipeline.student.train import predict
from pipeline.tasks import Task
from pipeline.teacher import load_teacher, predict_logits, table_texts

Predictor = Callable[[Sequence[str], Sequence[str] | None, int], np.ndarray]
EXPORTED_PREFIX = "student-"
BYTES_PER_PARAMETER = 4  # fp32 weights of the PyTorch models


def load_predictors(task: Task, params: Params, device: torch.device) -> tuple[dict[str, Predictor], dict[str, dict[str, int]]]:
    """A predict function (texts -> logits) and sizes for the three PyTorch models and every exported variant.

    Sizes: parameter counts (``total``, ``without_embeddings``) of PyTorch models, ``bytes`` of every model (fp32
    parameters, or the ONNX file)."""
    teacher, tokenizer = load_teacher(paths.teacher_dir(task.name), device)
    predictors: dict[str, Predictor] = {
        "teacher": lambda a, b, batch_size: predict_logits(
            teacher, tokenizer, a, b, batch_size, params.teacher.max_length, params.teacher.mixed_precision
        )
    }
    teacher_params = sum(p.numel() for p in teacher.parameters())
    sizes = {"teacher": {"total": teacher_params, "without_embeddings": teacher_params - _teacher_embedding_params(teacher)}}
    for name, model_dir in (("student", paths.student_dir(task.name)), ("baseline", paths.baseline_dir(task.name))):
        model, encoder = load_student(model_dir, device)
        predictors[name] = lambda a, b, batch_size, model=model, encoder=encoder: predict(
            model, encoder, task.name, a, b, batch_size
        )
        sizes[name] = {
            "total": count_parameters(model, include_embeddings=True),
            "without_embeddings": count_parameters(model, include_embeddings=False),
        }
    for counts in sizes.values():
        counts["bytes"] = counts["total"] * BYTES_PER_PARAMETER
    export_folder = paths.export_dir(task.name)
    if export_folder.exists():
        for variant, file_name in deploy.read_config(export_folder)["models"].items():
            runner = deploy.ExportedStudent(export_folder, variant, params.evaluate.threads)
            predictors[EXPORTED_PREFIX + variant] = runner.logits
            sizes[EXPORTED_PREFIX + variant] = {"bytes": (export_folder / file_name).stat().st_size}
    return predictors, sizes


def _teacher_embedding_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if ".embeddings." in f".{name}")


def measure_throughputs(
    predictors: dict[str, Predictor], text_a: Sequence[str], text_b: Sequence[str] | None, batch_size: int, repeats: int
) -> dict[str, float]:
    """Sentences (or pairs) per second of each model, tokenisation included: the best of ``repeats`` passes.

    Passes are interleaved (every repeat times each model once, after one warm-up call each), so that load changes
    on a shared machine reach all models alike.
    """
    for predictor in predictors.values():
        predictor(text_a[:batch_size], text_b[:batch_size] if text_b else None, batch_size)
    best = dict.fromkeys(predictors, math.inf)
    for _ in range(repeats):
        for name, predictor in predictors.items():
            start = time.perf_counter()
            predictor(text_a, text_b, batch_size)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: len(text_a) / seconds for name, seconds in best.items()}


def evaluate_splits(task: Task, params: Params, splits: dict[str, pa.Table]) -> dict[str, Any]:
    """Metrics of every model on every split, parameter counts, and CPU throughput (timed on the first split)."""
    device = pick_device()
    predictors, sizes = load_predictors(task, params, device)
    batch_size = params.teacher.eval_batch_size
    quality: dict[str, dict[str, dict[str, float]]] = {}
    for split, table in splits.items():
        text_a, text_b = table_texts(task, table)
        labels = table.column("label").to_numpy()
        quality[split] = {
            name: compute_metrics(task, predict_fn(text_a, text_b, batch_size), labels)
            for name, predict_fn in predictors.items()
        }

    speed_table = next(iter(splits.values())).slice(0, params.evaluate.speed_examples)
    speed_a, speed_b = table_texts(task, speed_table)
    cpu_predictors = predictors if device.type == "cpu" else load_predictors(task, params, torch.device("cpu"))[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(params.evaluate.threads)
    try:
        speed = {
            f"batch_{size}": measure_throughputs(cpu_predictors, speed_a, speed_b, size, params.evaluate.speed_repeats)
            for size in params.evaluate.speed_batch_sizes
        }
    finally:
        torch.set_num_threads(threads)

    return {
        "task": task.name,
        "quality": quality,
        "parameters": sizes,
        "cpu_sentences_per_second": speed,
        "ratios": {
            "teacher_over_student_parameters": sizes["teacher"]["total"] / sizes["student"]["total"],
            "teacher_over_student_parameters_without_embeddings": (
                sizes["teacher"]["without_embeddings"] / sizes["student"]["without_embeddings"]
            ),
            **speed_ratios(speed),
        },
        "cpu_threads": params.evaluate.threads,
        "speed_examples": speed_table.num_rows,
    }


def speed_ratios(speed: dict[str, dict[str, float]]) -> dict[str, float | str]:
    """Per batch size: each student variant's speed over the teacher's, and the fastest student variant."""
    ratios: dict[str, float | str] = {}
    for key, by_model in speed.items():
        students = {name: value for name, value in by_model.items() if name == "student" or name.startswith(EXPORTED_PREFIX)}
        for name, value in students.items():
            ratios[f"{name}_over_teacher_speed_{key}"] = value / by_model["teacher"]
        best = max(students, key=students.__getitem__)
        ratios[f"best_student_over_teacher_speed_{key}"] = students[best] / by_model["teacher"]
        ratios[f"best_student_{key}"] = best
    return ratios


def markdown_table(report: dict[str, Any]) -> str:
    """A Markdown summary: one row per model, metric columns per split, size and speed columns, speed ratios."""
    splits = list(report["quality"])
    metric_names = list(report["quality"][splits[0]]["teacher"])
    speed_keys = list(report["cpu_sentences_per_second"])
    header = [
        "model", *[f"{split} {metric}" for split in splits for metric in metric_names], "params", "params w/o emb",
        "size MB", *[f"CPU sent/s {k.replace('_', ' ')}" for k in speed_keys],
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, size in report["parameters"].items():
        cells = [model]
        cells += [f"{100 * report['quality'][split][model][metric]:.2f}" for split in splits for metric in metric_names]
        cells += [f"{size[key]:,}" if key in size else "-" for key in ("total", "without_embeddings")]
        cells.append(f"{size['bytes'] / 1e6:.1f}")
        cells += [f"{report['cpu_sentences_per_second'][key][model]:.1f}" for key in speed_keys]
        lines.append("| " + " | ".join(cells) + " |")
    ratios = report["ratios"]
    speedups = "; ".join(
        f"{ratios[f'best_student_{key}']}/teacher CPU speed {key.replace('_', ' ')}: "
        f"{ratios[f'best_student_over_teacher_speed_{key}']:.1f}x (PyTorch student: "
        f"{ratios[f'student_over_teacher_speed_{key}']:.1f}x)"
        for key in speed_keys
    )
    lines.append("")
    lines.append(f"Teacher/student parameters: {ratios['teacher_over_student_parameters']:.1f}x "
                 f"({ratios['teacher_over_student_parameters_without_embeddings']:.1f}x without embedding tables, "
                 f"the paper's count); fastest student variant {speedups}")  # fmt: skip
    return "\n".join(lines) + "\n"


def dev_splits(task: Task, prepared_dir: Path = paths.PREPARED_DIR) -> dict[str, pa.Table]:
    """The task's prepared dev split(s), by name."""
    return {split: pq.read_table(paths.prepared_split(task.name, split, prepared_dir)) for split in task.dev_splits}


def file_split(task: Task, data_path: Path) -> dict[str, pa.Table]:
    """A user-supplied GLUE-format TSV of ``task`` as a single named split."""
    return {data_path.stem: read_glue_tsv(task, data_path)}

"""Evaluate stage: teacher vs KD student vs no-KD baseline on dev (or any GLUE-format file).

Reports each task metric, parameter counts, and CPU inference throughput at several batch sizes, all
models timed in one run with the same thread count.
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

from pipeline import paths
from pipeline.device import pick_device
from pipeline.metrics import compute_metrics
from pipeline.params import Params
from pipeline.prepare import read_glue_tsv
from pipeline.student.model import count_parameters
from pipeline.student.train import load_model, predict
from pipeline.tasks import Task
from pipeline.teacher import load_teacher, predict_logits, table_texts

Predictor = Callable[[Sequence[str], Sequence[str] | None, int], np.ndarray]
MODELS = ("teacher", "student", "baseline")


def load_predictors(task: Task, params: Params, device: torch.device) -> tuple[dict[str, Predictor], dict[str, dict[str, int]]]:
    """A predict function (texts -> logits) and parameter counts for each of the three models."""
    teacher, tokenizer = load_teacher(paths.teacher_dir(task.name), device)
    predictors: dict[str, Predictor] = {
        "teacher": lambda a, b, batch_size: predict_logits(
            teacher, tokenizer, a, b, batch_size, params.teacher.max_length, params.score.precision
        )
    }
    teacher_params = sum(p.numel() for p in teacher.parameters())
    sizes = {"teacher": {"total": teacher_params, "without_embeddings": teacher_params - _teacher_embedding_params(teacher)}}
    for name, model_dir in (("student", paths.student_dir(task.name)), ("baseline", paths.baseline_dir(task.name))):
        model, encoder = load_model(model_dir)
        model.to(device)
        predictors[name] = lambda a, b, batch_size, model=model, encoder=encoder: predict(model, encoder, a, b, batch_size)
        sizes[name] = {
            "total": count_parameters(model, include_embeddings=True),
            "without_embeddings": count_parameters(model, include_embeddings=False),
        }
    return predictors, sizes


def _teacher_embedding_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if ".embeddings." in f".{name}")


def measure_throughput(
    predictor: Predictor, text_a: Sequence[str], text_b: Sequence[str] | None, batch_size: int, repeats: int
) -> float:
    """Sentences (or pairs) per second, tokenisation included: the best of ``repeats`` passes after a warm-up."""
    predictor(text_a[:batch_size], text_b[:batch_size] if text_b else None, batch_size)  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        predictor(text_a, text_b, batch_size)
        best = min(best, time.perf_counter() - start)
    return len(text_a) / best


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
            f"batch_{size}": {
                name: measure_throughput(fn, speed_a, speed_b, size, params.evaluate.speed_repeats)
                for name, fn in cpu_predictors.items()
            }
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
            **{f"student_over_teacher_speed_{key}": value["student"] / value["teacher"] for key, value in speed.items()},
        },
        "cpu_threads": params.evaluate.threads,
        "speed_examples": speed_table.num_rows,
    }


def markdown_table(report: dict[str, Any]) -> str:
    """A Markdown summary: one row per model, metric columns per split, size and speed columns."""
    splits = list(report["quality"])
    metric_names = list(report["quality"][splits[0]]["teacher"])
    speed_keys = list(report["cpu_sentences_per_second"])
    header = ["model", *[f"{split} {metric}" for split in splits for metric in metric_names], "params", "params w/o emb", *[f"CPU sent/s {k.replace('_', ' ')}" for k in speed_keys]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in MODELS:
        cells = [model]
        cells += [f"{100 * report['quality'][split][model][metric]:.2f}" for split in splits for metric in metric_names]
        cells += [f"{report['parameters'][model]['total']:,}", f"{report['parameters'][model]['without_embeddings']:,}"]
        cells += [f"{report['cpu_sentences_per_second'][key][model]:.1f}" for key in speed_keys]
        lines.append("| " + " | ".join(cells) + " |")
    ratios = report["ratios"]
    lines.append("")
    lines.append(f"Teacher/student parameters: {ratios['teacher_over_student_parameters']:.1f}x "
                 f"({ratios['teacher_over_student_parameters_without_embeddings']:.1f}x without embedding tables, "
                 "the paper's count); "
                 + "; ".join(f"student/teacher CPU speed {k.removeprefix('student_over_teacher_speed_').replace('_', ' ')}: {v:.1f}x"
                             for k, v in ratios.items() if k.startswith("student_over")))
    return "\n".join(lines) + "\n"


def dev_splits(task: Task, prepared_dir: Path = paths.PREPARED_DIR) -> dict[str, pa.Table]:
    """The task's prepared dev split(s), by name."""
    return {split: pq.read_table(paths.prepared_split(task.name, split, prepared_dir)) for split in task.dev_splits}


def file_split(task: Task, data_path: Path) -> dict[str, pa.Table]:
    """A user-supplied GLUE-format TSV of ``task`` as a single named split."""
    return {data_path.stem: read_glue_tsv(task, data_path)}

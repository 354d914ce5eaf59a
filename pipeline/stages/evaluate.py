"""``evaluate`` stage: teacher vs KD student vs no-KD baseline vs the exported student variants vs the reference models
users pick instead (TF-IDF, model2vec) on dev (or any file).

Reports each task metric, parameter counts and sizes, and CPU inference throughput at several batch sizes,
tokenisation included, all models timed in one run with the same thread count (torch threads and onnxruntime
intra-op threads), their timed passes interleaved (model A, B, C, then A, B, C again...) so a change of machine load
biases no model. The models come from ``pipeline.serving.catalogue``; the same functions evaluate the multi-task
models (the MKD comparison)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from pipeline.data.files import read_labelled_file
from pipeline.data.glue import read_glue_tsv
from pipeline.data.metrics import class_report, compute_metrics, task_score
from pipeline.data.schema import table_texts
from pipeline.data.tasks import Task
from pipeline.params import Params
from pipeline.serving.catalogue import (
    EXPORTED_PREFIX,
    REFERENCES,
    STATIC,
    STATIC_EXPORTED_PREFIX,
    ModelSource,
    Predictor,
    existing,
    multi_task_models,
    single_task_models,
)
from pipeline.training.device import pick_device, torch_threads


def time_pass(predictor: Predictor, text_a: Sequence[str], text_b: Sequence[str] | None, batch_size: int) -> float:
    """Seconds for one pass over the texts, tokenisation included."""
    start = time.perf_counter()
    predictor(text_a, text_b, batch_size)
    return time.perf_counter() - start


def measure_throughput(
    predictors: dict[str, Predictor], text_a: Sequence[str], text_b: Sequence[str] | None, batch_size: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Sentences (or pairs) per second of every predictor: ``repeats`` passes each after a warm-up, interleaved
    across predictors; the median pass counts, ``min``/``max`` give the spread."""
    for predictor in predictors.values():
        predictor(text_a[:batch_size], text_b[:batch_size] if text_b else None, batch_size)  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(repeats):
        for name, predictor in predictors.items():
            seconds[name].append(time_pass(predictor, text_a, text_b, batch_size))
    return {
        name: {
            "median": len(text_a) / statistics.median(times),
            "min": len(text_a) / max(times),
            "max": len(text_a) / min(times),
        }
        for name, times in seconds.items()
    }


def evaluate_models(
    task: Task, params: Params, models: dict[str, ModelSource], splits: dict[str, pa.Table]
) -> dict[str, Any]:
    """Metrics of every model on every split (and, for a classification task, each model's per-class scores and most
    confused class pairs), parameter counts, and CPU throughput (timed on the first split)."""
    device = pick_device()
    loaded = {name: source.load(device) for name, source in models.items()}
    batch_size = params.teacher.eval_batch_size
    quality: dict[str, dict[str, dict[str, float]]] = {}
    classes: dict[str, dict[str, dict[str, Any]]] = {}
    for split, table in splits.items():
        text_a, text_b = table_texts(task, table)
        labels = table.column("label").to_numpy()
        outputs = {name: model.logits(text_a, text_b, batch_size) for name, model in loaded.items()}
        quality[split] = {name: compute_metrics(task, logits, labels) for name, logits in outputs.items()}
        if not task.is_regression:
            top = params.evaluate.top_confusions
            classes[split] = {name: class_report(task, logits, labels, top) for name, logits in outputs.items()}

    speed_table = next(iter(splits.values())).slice(0, params.evaluate.speed_examples)
    speed_a, speed_b = table_texts(task, speed_table)
    cpu = torch.device("cpu")
    on_cpu = loaded if device == cpu else {name: source.load(cpu) for name, source in models.items()}
    with torch_threads(params.evaluate.threads):
        speed = {
            f"batch_{size}": measure_throughput(
                {name: model.logits for name, model in on_cpu.items()},
                speed_a,
                speed_b,
                size,
                params.evaluate.speed_repeats,
            )  # fmt: skip
            for size in params.evaluate.speed_batch_sizes
        }
    report = {
        "task": task.name,
        "models": list(models),
        "quality": quality,
        **({"classes": classes} if classes else {}),
        "parameters": {name: model.parameters for name, model in loaded.items()},
        "cpu_sentences_per_second": speed,
        "cpu_threads": params.evaluate.threads,
        "speed_examples": speed_table.num_rows,
        "speed_repeats": params.evaluate.speed_repeats,
    }
    return report | {"frontier": frontier(task, report, params.evaluate.pick_within)}


def dev_score(task: Task, report: dict[str, Any], model: str) -> float:
    """``model``'s GLUE-convention score on a task (x100): ``task_score`` (CoLA: MCC alone), mean over the report's
    dev splits (a report of another file, ``evaluate --data``: that file's)."""
    quality = report["quality"]
    splits = [split for split in task.dev_splits if split in quality] or [next(iter(quality))]
    return 100 * statistics.fmean(task_score(task, quality[split][model]) for split in splits)


def smallest_batch_size(report: dict[str, Any]) -> int:
    """The smallest batch size a report timed (1 by default)."""
    return min(int(key.removeprefix("batch_")) for key in report["cpu_sentences_per_second"])


def frontier(task: Task, report: dict[str, Any], within: float) -> dict[str, Any]:
    """The quality-vs-speed frontier of one task's report at its smallest timed batch size (batch 1 by default): the
    models that no other model beats on both the dev score (``dev_score``) and the median sentences/s, from the most
    accurate to the fastest, and the pick: the fastest of them whose score is within ``within`` points of the most
    accurate one's (differences rounded to 1e-9, so a gap of exactly ``within`` counts as within).

    A model is beaten by one at least as good on both and better on one; of models equal on both, the first in the
    report's model order stays. So along the frontier the score falls and the speed rises, both strictly."""
    batch_size = smallest_batch_size(report)
    rates = report["cpu_sentences_per_second"][f"batch_{batch_size}"]
    points = [
        {"model": model, "score": dev_score(task, report, model), "sentences_per_second": rates[model]["median"]}
        for model in report["models"]
    ]
    # most accurate first, then fastest, then report order (sorted is stable): a point is on the frontier when it is
    # faster than every point before it, each of which is at least as accurate
    points.sort(key=lambda point: (-point["score"], -point["sentences_per_second"]))
    kept: list[dict[str, Any]] = []
    for point in points:
        if not kept or point["sentences_per_second"] > kept[-1]["sentences_per_second"]:
            kept.append(point)
    best = kept[0]["score"]
    pick = [point for point in kept if round(best - point["score"], 9) <= within][-1]
    return {"batch_size": batch_size, "pick_within": within, "frontier": kept, "pick": pick}


def ratios(report: dict[str, Any], model: str, reference: str) -> dict[str, float]:
    """How many times smaller and faster ``model`` is than ``reference`` in an ``evaluate_models`` report
    (parameter ratios where both are PyTorch models, the size ratio in bytes always)."""
    sizes, speed = report["parameters"], report["cpu_sentences_per_second"]
    out = {"bytes": sizes[reference]["bytes"] / sizes[model]["bytes"]}
    for count in ("total", "without_embeddings"):
        if count in sizes[model] and count in sizes[reference]:
            out[f"parameters_{count}"] = sizes[reference][count] / sizes[model][count]
    return out | {f"speed_{key}": rates[model]["median"] / rates[reference]["median"] for key, rates in speed.items()}


def fastest(report: dict[str, Any], models: Sequence[str]) -> dict[str, str]:
    """Per timed batch size, which of ``models`` has the highest median throughput."""
    return {
        key: max(models, key=lambda name: rates[name]["median"])
        for key, rates in report["cpu_sentences_per_second"].items()
    }


def evaluate_splits(
    task: Task, params: Params, splits: dict[str, pa.Table], all_models: bool = False
) -> dict[str, Any]:
    """The evaluate stage's report: teacher, KD student, baseline, reference models, the student's exported variants
    and the static student with its variants (``all_models``: plus every multi-task model that exists), with every
    student variant's size and speed ratios to the teacher and the fastest variant per batch size."""
    models = single_task_models(task, params)
    if all_models:
        models = {**models, **existing(multi_task_models(task, params))}
    report = evaluate_models(task, params, models, splits)
    students = [
        name for name in models
        if name in ("student", STATIC) or name.startswith((EXPORTED_PREFIX, STATIC_EXPORTED_PREFIX))
    ]  # fmt: skip
    report["ratios"] = {f"{name}_vs_teacher": ratios(report, name, "teacher") for name in students}
    report["fastest_student"] = fastest(report, students)
    return report


def headline(task: Task, report: dict[str, Any]) -> dict[str, Any]:
    """The numbers ``dvc metrics`` shows for a task (``metrics/<task>.json``): teacher, KD student, baseline, static
    student and the reference models (TF-IDF, model2vec) on the task's primary metric (first dev split), the KD gain
    (student - baseline) and, per timed batch size, how many times faster than the teacher the fastest student variant
    (KD or static, PyTorch or exported) is. The full report is a plain output."""
    quality = next(iter(report["quality"].values()))
    shown = ("teacher", "student", "baseline", STATIC, *REFERENCES)
    primary = {model: quality[model][task.primary_metric] for model in shown}
    speedup = {
        key: report["ratios"][f"{best}_vs_teacher"][f"speed_{key}"] for key, best in report["fastest_student"].items()
    }
    return {**primary, "kd_gain": primary["student"] - primary["baseline"], "student_speedup": speedup}


def frontier_text(front: dict[str, Any], name: Callable[[str], str] = str) -> str:
    """A ``frontier`` result in words: each model (``name`` of its key) with its dev score and sentences/s, from the
    most accurate to the fastest."""
    return ", ".join(
        f"{name(point['model'])} {point['score']:.2f} at {point['sentences_per_second']:,.1f}/s"
        for point in front["frontier"]
    )


def pick_text(front: dict[str, Any]) -> str:
    """What a ``frontier`` result's pick means, in words."""
    return (
        "the fastest model of the quality-vs-speed frontier (dev score, CPU sentences/s at batch "
        f"{front['batch_size']}) within {front['pick_within']:.2f} points of the most accurate (`evaluate.pick_within`)"
    )


def markdown_table(report: dict[str, Any]) -> str:
    """A Markdown summary: one row per model, metric columns per split, size and speed columns; then the speed-ups,
    the quality-vs-speed frontier with its pick, and (classification) the student's most confused classes."""
    splits = list(report["quality"])
    metric_names = list(next(iter(report["quality"][splits[0]].values())))
    speed_keys = list(report["cpu_sentences_per_second"])
    header = [
        "model", *[f"{split} {metric}" for split in splits for metric in metric_names], "params", "params w/o emb",
        "size MB", *[f"CPU sent/s {key.replace('_', ' ')}" for key in speed_keys],
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in report["models"]:
        sizes = report["parameters"][model]
        cells = [model]
        cells += [f"{100 * report['quality'][split][model][metric]:.2f}" for split in splits for metric in metric_names]
        cells += [f"{sizes[key]:,}" if key in sizes else "-" for key in ("total", "without_embeddings")]
        cells.append(f"{sizes['bytes'] / 1e6:.1f}")
        cells += [f"{report['cpu_sentences_per_second'][key][model]['median']:.1f}" for key in speed_keys]
        lines.append("| " + " | ".join(cells) + " |")
    student = report["ratios"]["student_vs_teacher"]
    speeds = "; ".join(
        f"{speed_key.replace('_', ' ')}: PyTorch student {student[f'speed_{speed_key}']:.1f}x, fastest variant "
        f"({best}) {report['ratios'][f'{best}_vs_teacher'][f'speed_{speed_key}']:.1f}x"
        for speed_key, best in report["fastest_student"].items()
    )  # fmt: skip
    lines += [
        "",
        f"Teacher/student parameters: {student['parameters_total']:.1f}x "
        f"({student['parameters_without_embeddings']:.1f}x without embedding tables, the paper's count). "
        f"CPU speed over the teacher, {speeds}.",
        "",
        f"Pick: **{report['frontier']['pick']['model']}**, {pick_text(report['frontier'])}. The frontier (the models "
        f"no other beats on both), most accurate to fastest: {frontier_text(report['frontier'])}.",
    ]
    if "classes" in report:
        split = splits[0]
        pairs = report["classes"][split]["student"]["confused_pairs"]
        confusions = ", ".join(f"{pair['gold']} -> {pair['predicted']} ({pair['count']})" for pair in pairs)
        lines += ["", f"Student's most confused classes on {split} (gold -> predicted): {confusions or 'none'}."]
    return "\n".join(lines) + "\n"


def file_split(task: Task, data_path: Path) -> dict[str, pa.Table]:
    """A user-supplied file in the task's format (GLUE TSV for a GLUE task; CSV/TSV/JSONL/Parquet with the task's
    columns for a task of your own) as a single split named after the file."""
    if task.glue_dir_name is not None:
        return {data_path.stem: read_glue_tsv(task, data_path)}
    return {data_path.stem: read_labelled_file(task, data_path, skip_bad_rows=False)}

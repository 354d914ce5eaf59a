"""Compare stage: every model of every task in one run — single-task and multi-task teachers, Tang et al.'s KD
students, no-KD baselines, the reference models (TF-IDF, model2vec) and the MKD students — with each task's metrics,
the GLUE-convention average (mean over tasks of each task's score: CoLA's MCC, the mean of the other tasks' metrics),
parameter counts and CPU throughput, and per task the quality-vs-speed frontier with the model to pick."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.data.io import atomic_path
from pipeline.data.prepared import dev_splits
from pipeline.data.tasks import Task, resolve_task
from pipeline.params import Params
from pipeline.serving.catalogue import JOINT_SUFFIX, MKD_PREFIX, ModelSource, multi_task_models, single_task_models
from pipeline.stages.evaluate import dev_score, evaluate_models, frontier_text, pick_text, smallest_batch_size
from pipeline.students.architectures import read_student_config

REFERENCE_TEACHER = "teacher"
REFERENCE_STUDENT = "student"
DISPLAY_NAMES = {
    "teacher": "teacher (single-task)",
    "mt_teacher": "teacher (multi-task)",
    "student": "Tang BiLSTM student (KD)",
    "baseline": "BiLSTM, no KD",
    "tfidf": "TF-IDF + linear model",
    "model2vec": "model2vec (static embeddings + MLP)",
    "static": "static student (model2vec init, KD)",
}


def display_name(model: str) -> str:
    """Readable name of a model key, e.g. ``mkd_biattentive_joint`` -> ``MKD biattentive (joint, no fine-tuning)``,
    ``mkd_transformer-int8`` -> ``MKD transformer, ONNX int8``."""
    if model in DISPLAY_NAMES:
        return DISPLAY_NAMES[model]
    model, _, variant = model.partition("-")
    if variant:
        return f"{display_name(model)}, ONNX {'fp32' if variant == 'onnx' else variant}"
    name = model.removeprefix(MKD_PREFIX)
    if name.endswith(JOINT_SUFFIX):
        return f"MKD {name.removesuffix(JOINT_SUFFIX)} (joint, no fine-tuning)"
    return f"MKD {name}"


def transfer_rows(task: Task, sources: dict[str, ModelSource]) -> dict[str, int]:
    """The transfer rows of ``task`` each distilled student (Tang's, every MKD model; not the exported copies) trained
    on, from its saved training summary."""
    return {
        name: read_student_config(source.path)["training"]["train_rows"][task.name]
        for name, source in sources.items()
        if (name == REFERENCE_STUDENT or name.startswith(MKD_PREFIX)) and "-" not in name
    }


def data_comparison(rows: dict[str, dict[str, int]]) -> str:
    """Which comparison the tables are, from ``rows`` (task -> student -> transfer rows): "equal data" when every
    distilled student trained on the Tang student's rows of every task, else what each MKD architecture had instead."""
    differences: dict[str, dict[str, str]] = defaultdict(dict)  # architecture -> task -> rows (joint = fine-tuned)
    for task, counts in rows.items():
        reference = counts[REFERENCE_STUDENT]
        for model, count in counts.items():
            if count != reference:
                entry = f"{task} {count:,} of {reference:,} ({count / reference:.0%})"
                differences[display_name(model.removesuffix(JOINT_SUFFIX))][task] = entry
    if not differences:
        return "equal data: every distilled student trained on the Tang student's transfer rows of every task"
    details = "; ".join(f"{model}: {', '.join(entries.values())}" for model, entries in differences.items())
    return f"unequal data: transfer rows against the Tang student's (MKD data budget): {details}"


def compare(params: Params) -> dict[str, Any]:
    """Evaluate every model on every task's dev split(s); summarise scores, averages, sizes, speed ratios, whether
    the distilled students had the same data, and each task's quality-vs-speed frontier and pick (``frontier``)."""
    tasks = [resolve_task(name, params) for name in params.tasks]
    sources = {task.name: {**single_task_models(task, params), **multi_task_models(task, params)} for task in tasks}
    reports = {task.name: evaluate_models(task, params, sources[task.name], dev_splits(task)) for task in tasks}
    rows = {task.name: transfer_rows(task, sources[task.name]) for task in tasks}
    models = reports[tasks[0].name]["models"]
    scores = {model: {task.name: dev_score(task, reports[task.name], model) for task in tasks} for model in models}
    average = {model: statistics.fmean(values.values()) for model, values in scores.items()}
    speed_ratios = {
        model: {
            task: {
                key: rates[model]["median"] / rates[REFERENCE_TEACHER]["median"]
                for key, rates in report["cpu_sentences_per_second"].items()
            }
            for task, report in reports.items()
        }
        for model in models
    }
    return {
        "tasks": [task.name for task in tasks],
        "comparison": data_comparison(rows),
        "transfer_rows": rows,
        "models": models,
        "score": scores,
        "average": average,
        "average_minus_single_teachers": {model: average[model] - average[REFERENCE_TEACHER] for model in models},
        "average_minus_tang_students": {model: average[model] - average[REFERENCE_STUDENT] for model in models},
        "speed_over_single_teacher": speed_ratios,
        "frontier": {task: report["frontier"] for task, report in reports.items()},
        "reports": reports,
    }


def metrics_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The compact part of ``compare``'s result (the per-task reports left out): a plain output."""
    return {key: value for key, value in summary.items() if key != "reports"}


def metrics_headline(summary: dict[str, Any]) -> dict[str, Any]:
    """What ``dvc metrics`` shows of the comparison: the average over tasks (a fraction, as the task metrics) of
    each model the pipeline delivers (teachers, Tang student, baseline, TF-IDF, model2vec, each MKD student as kept per
    task), named as in ``metrics/<task>.json`` so the columns are shared; the rest is in the summary."""
    kept = [model for model in summary["models"] if "-" not in model and not model.endswith(JOINT_SUFFIX)]
    return {model: summary["average"][model] / 100 for model in kept}


def quality_vs_speed(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One point per model and exported variant: its average over the tasks (x100) and its CPU sentences/s at the
    smallest measured batch size (batch 1 by default; geometric mean over the tasks' dev sets): the compare plot."""
    reports = list(summary["reports"].values())
    batch_size = smallest_batch_size(reports[0])
    points = []
    for model in summary["models"]:
        rates = [report["cpu_sentences_per_second"][f"batch_{batch_size}"][model]["median"] for report in reports]
        points.append({
            "model": display_name(model),
            "average": round(summary["average"][model], 4),
            "sentences_per_second": round(statistics.geometric_mean(rates), 2),
            "batch_size": batch_size,
        })  # fmt: skip
    return points


def plot_quality_vs_speed(points: list[dict[str, Any]], target: Path) -> None:
    """Draw the quality-vs-speed points as a PNG (log speed axis, each point labelled), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 6.5), dpi=110)
    for point in points:
        x, y = point["sentences_per_second"], point["average"]
        exported = ", ONNX" in point["model"]
        axes.scatter(x, y, marker="s" if exported else "o", color="tab:orange" if exported else "tab:blue", zorder=3)
        axes.annotate(point["model"], (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7)
    axes.set_xscale("log")
    axes.set_xlabel(f"CPU sentences/s at batch {points[0]['batch_size']} (geometric mean over tasks, log scale)")
    axes.set_ylabel("dev average over tasks (GLUE convention, x100)")
    axes.set_title("Quality against CPU speed: every model (circles) and exported variant (squares)")
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)


def _metric_header(task: Task) -> str:
    splits = "/".join(task.dev_splits) if len(task.dev_splits) > 1 else ""
    return f"{task.name} {'/'.join(task.metrics)}" + (f" ({splits})" if splits else "")


def markdown_report(summary: dict[str, Any], tasks: list[Task]) -> str:
    """Which comparison it is (equal data or not), then three Markdown tables: dev quality per task (``tasks``, as in
    the summary) with the average, size and CPU speed, and each task's pick with its quality-vs-speed frontier."""
    reports = summary["reports"]
    header = ["model", *[_metric_header(task) for task in tasks], "average", "vs Tang students", "vs teachers"]
    lines = [f"Comparison: {summary['comparison']}.", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in summary["models"]:
        cells = [display_name(model)]
        for task in tasks:
            quality = reports[task.name]["quality"]
            values = [100 * quality[split][model][metric] for split in task.dev_splits for metric in task.metrics]
            cells.append("/".join(f"{value:.1f}" for value in values))
        cells += [
            f"{summary['average'][model]:.2f}",
            f"{summary['average_minus_tang_students'][model]:+.2f}",
            f"{summary['average_minus_single_teachers'][model]:+.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")

    speed_task = tasks[0].name
    speed = reports[speed_task]["cpu_sentences_per_second"]
    keys = list(speed)
    lines += [
        "",
        f"Size, and CPU sentences/s on {speed_task} dev ({reports[speed_task]['cpu_threads']} threads, "
        "tokenisation included; median of interleaved passes):",
        "",
    ]
    header = ["model", "params", "params w/o emb", "size MB", *[f"sent/s {key.replace('_', ' ')}" for key in keys],
              *[f"vs teacher {key.replace('_', ' ')}" for key in keys]]  # fmt: skip
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in summary["models"]:
        sizes = reports[speed_task]["parameters"][model]
        ratios = summary["speed_over_single_teacher"][model][speed_task]
        counts = (f"{sizes[key]:,}" if key in sizes else "-" for key in ("total", "without_embeddings"))
        cells = [display_name(model), *counts]
        cells.append(f"{sizes['bytes'] / 1e6:.1f}")
        cells += [f"{speed[key][model]['median']:.1f}" for key in keys] + [f"{ratios[key]:.1f}x" for key in keys]
        lines.append("| " + " | ".join(cells) + " |")

    fronts = summary["frontier"]
    lines += ["", f"Pick per task: {pick_text(fronts[tasks[0].name])}.", ""]
    lines += ["| task | pick | frontier, most accurate to fastest (dev score at CPU sentences/s) |", "|---|---|---|"]
    for task in tasks:
        front = fronts[task.name]
        lines.append(f"| {task.name} | {display_name(front['pick']['model'])} | {frontier_text(front, display_name)} |")
    return "\n".join(lines) + "\n"

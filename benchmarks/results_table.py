"""Print README's results tables from a finished run: dev metrics, size and speed per task, and stage wall times.

Reads what ``dvc repro`` left in the workspace: ``metrics/report/<task>.json`` (the evaluate stage, for every task in
params.yaml that has one) and the JSON of ``benchmarks/stage_times.py``. Published figures (Tang et al. 2019, GLUE
test; DistilBERT, GLUE dev; from ../shared/docs/method.md) are printed beside ours where they exist.

    python benchmarks/results_table.py --stage-times stage_times.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from pipeline.data.tasks import get_task

# Tang et al. (2019) Table 1, GLUE test, BERT-large teacher: (distilled BiLSTM, BiLSTM without distillation).
TANG_PUBLISHED = {"sst2": ("90.7", "86.7"), "qqp": ("68.2/88.1", "63.7/86.2"), "mnli": ("73.0/72.6", "68.3/68.3")}
# DistilBERT (6 layers, 66M parameters), GLUE dev, primary metric: a compact student for scale.
DISTILBERT_DEV = {"cola": "51.3", "mrpc": "87.5", "rte": "59.9", "sst2": "91.3", "stsb": "86.9", "mnli": "82.1",
                  "qnli": "89.2", "qqp": "88.5"}  # fmt: skip
SINGLE_TASK_STAGES = ("prepare", "teacher", "augment", "score", "student", "baseline", "export", "evaluate")


def read_reports(tasks: list[str], metrics_dir: Path) -> dict[str, dict[str, Any]]:
    """The evaluate stage's full report (``metrics/report/<task>.json``) of every task that has one, in ``tasks``
    order."""
    return {
        task: json.loads((metrics_dir / "report" / f"{task}.json").read_text(encoding="utf-8"))
        for task in tasks
        if (metrics_dir / "report" / f"{task}.json").is_file()
    }


def _metric_cells(task: str, report: dict[str, Any], model: str) -> str:
    """The first dev split's metrics of ``model`` in points, in the task's metric order (``a/b`` for two metrics)."""
    values = report["quality"][next(iter(report["quality"]))][model]
    return "/".join(f"{100 * values[metric]:.1f}" for metric in get_task(task).metrics)


def _primary(task: str, report: dict[str, Any], model: str) -> float:
    """The first dev split's primary metric of ``model`` (the one that selects checkpoints), in points."""
    return 100 * report["quality"][next(iter(report["quality"]))][model][get_task(task).primary_metric]


def quality_table(reports: dict[str, dict[str, Any]]) -> str:
    """Per task: teacher, KD student and no-KD baseline on dev, the KD gain and the gap to the teacher (the task's
    primary metric, the first one named), with the published figures beside them."""
    lines = [
        "| task | dev metric | teacher | KD student | no-KD baseline | KD gain | student − teacher "
        "| Tang et al. distilled / no KD (test) | DistilBERT (dev) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, report in reports.items():
        metric = "/".join(get_task(task).metrics)
        student, baseline, teacher = (_primary(task, report, name) for name in ("student", "baseline", "teacher"))
        tang = " / ".join(TANG_PUBLISHED.get(task, ("-", "-")))
        cells = " | ".join(_metric_cells(task, report, name) for name in ("teacher", "student", "baseline"))
        lines.append(
            f"| {task} | {metric} | {cells} | {student - baseline:+.1f} | {student - teacher:+.1f} "
            f"| {tang} | {DISTILBERT_DEV.get(task, '-')} |"
        )
    return "\n".join(lines)


def speed_table(reports: dict[str, dict[str, Any]]) -> str:
    """Per task: parameters of teacher and student, CPU throughput of the teacher, the PyTorch student and its
    fastest exported variant, and the speed-ups, per timed batch size."""
    lines = []
    for task, report in reports.items():
        params, speed = report["parameters"], report["cpu_sentences_per_second"]
        if not lines:
            keys = list(speed)
            header = ["task", "teacher params", "student params (w/o emb)"]
            header += [f"{who} sent/s {key.replace('_', ' ')}" for key in keys for who in ("teacher", "student")]
            header += [f"fastest export, {key.replace('_', ' ')}" for key in keys]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        cells = [task, f"{params['teacher']['total']:,}",
                 f"{params['student']['total']:,} ({params['student']['without_embeddings']:,})"]  # fmt: skip
        for key in keys:
            teacher, student = speed[key]["teacher"]["median"], speed[key]["student"]["median"]
            cells += [f"{teacher:.1f}", f"{student:.1f} ({student / teacher:.1f}x)"]
        for key in keys:
            best = report["fastest_student"][key]
            rate = speed[key][best]["median"]
            cells.append(f"{best} {rate:.1f} ({rate / speed[key]['teacher']['median']:.1f}x)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stage_table(seconds: dict[str, float], tasks: list[str]) -> str:
    """Minutes per stage (rows) and task (columns) with row and column totals; the single-task stages' total
    and the total of all stages that ran."""
    per_stage: dict[str, dict[str, float]] = {}
    for name, value in seconds.items():
        stage, _, item = name.partition("@")
        per_stage.setdefault(stage, {})[item or "all"] = value
    lines = ["| stage | " + " | ".join(tasks) + " | other | total |", "|" + "---|" * (len(tasks) + 3)]
    for stage, items in per_stage.items():
        cells = [f"{items[task] / 60:.1f}" if task in items else "" for task in tasks]
        others = {item: value for item, value in items.items() if item not in tasks}
        other = ", ".join(f"{item} {value / 60:.1f}" for item, value in others.items())
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {other} | {sum(items.values()) / 60:.1f} |")
    totals = [sum(items.get(task, 0.0) for items in per_stage.values()) / 60 for task in tasks]
    lines.append("| **total** | " + " | ".join(f"{value:.1f}" for value in totals) + " | | "
                 f"**{sum(seconds.values()) / 60:.1f}** |")  # fmt: skip
    single = sum(value for name, value in seconds.items() if name.partition("@")[0] in SINGLE_TASK_STAGES)
    return (
        "\n".join(lines) + f"\n\nSingle-task stages: {single / 60:.1f} min; all stages that ran: "
        f"{sum(seconds.values()) / 60:.1f} min."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--metrics-dir", type=Path, default=Path("metrics"))
    parser.add_argument("--stage-times", type=Path, default=None, help="JSON written by benchmarks/stage_times.py")
    args = parser.parse_args()
    tasks = yaml.safe_load(args.params.read_text(encoding="utf-8"))["tasks"]
    reports = read_reports(tasks, args.metrics_dir)
    missing = [task for task in tasks if task not in reports]
    if reports:
        print(quality_table(reports), "", speed_table(reports), sep="\n")
    if missing:
        print(f"\nNo evaluate report (metrics/report/<task>.json) for: {', '.join(missing)}")
    if args.stage_times:
        seconds = json.loads(args.stage_times.read_text(encoding="utf-8"))["seconds"]
        print("", stage_table(seconds, tasks), sep="\n")


if __name__ == "__main__":
    main()

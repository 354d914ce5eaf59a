"""benchmarks/results_table.py: README's tables from evaluate reports and stage times."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "results_table.py"
spec = importlib.util.spec_from_file_location("results_table", SCRIPT)
assert spec is not None and spec.loader is not None
results_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_table)


def report(task: str, metrics: dict[str, dict[str, float]]) -> dict:
    """An evaluate-stage report with the given dev metrics per model and fixed sizes and speeds."""
    models = list(metrics)
    return {
        "task": task,
        "models": models,
        "quality": {"dev": metrics},
        "parameters": {
            "teacher": {"total": 1000, "without_embeddings": 400, "bytes": 4000},
            "student": {"total": 500, "without_embeddings": 50, "bytes": 2000},
            "baseline": {"total": 500, "without_embeddings": 50, "bytes": 2000},
        },
        "cpu_sentences_per_second": {
            "batch_1": {"teacher": {"median": 10.0}, "student": {"median": 50.0}, "student-int8": {"median": 200.0}},
        },
        "fastest_student": {"batch_1": "student-int8"},
    }


def test_quality_row_has_gain_gap_and_published_figures():
    reports = {
        "sst2": report("sst2", {
            "teacher": {"accuracy": 0.90}, "student": {"accuracy": 0.885}, "baseline": {"accuracy": 0.85},
        }),
        "mrpc": report("mrpc", {
            "teacher": {"f1": 0.88, "accuracy": 0.83}, "student": {"f1": 0.80, "accuracy": 0.70},
            "baseline": {"f1": 0.82, "accuracy": 0.72},
        }),
        # keys sorted as in the JSON files: the task registry decides the order and the primary metric (mcc)
        "cola": report("cola", {
            "teacher": {"accuracy": 0.72, "mcc": 0.26}, "student": {"accuracy": 0.71, "mcc": 0.22},
            "baseline": {"accuracy": 0.68, "mcc": 0.15},
        }),
    }  # fmt: skip
    rows = results_table.quality_table(reports).splitlines()[2:]
    assert rows[0] == "| sst2 | accuracy | 90.0 | 88.5 | 85.0 | +3.5 | -1.5 | 90.7 / 86.7 | 91.3 |"
    assert rows[1] == "| mrpc | f1/accuracy | 88.0/83.0 | 80.0/70.0 | 82.0/72.0 | -2.0 | -8.0 | - / - | 87.5 |"
    assert rows[2] == "| cola | mcc/accuracy | 26.0/72.0 | 22.0/71.0 | 15.0/68.0 | +7.0 | -4.0 | - / - | 51.3 |"


def test_speed_row_names_fastest_variant_and_ratios():
    reports = {"sst2": report("sst2", {"teacher": {"accuracy": 0.9}, "student": {"accuracy": 0.9}})}
    row = results_table.speed_table(reports).splitlines()[2]
    assert row == "| sst2 | 1,000 | 500 (50) | 10.0 | 50.0 (5.0x) | student-int8 200.0 (20.0x) |"


def test_stage_table_totals_per_task_and_single_task_sum():
    seconds = {"teacher@sst2": 600.0, "score@sst2": 300.0, "teacher@rte": 120.0, "mt_teacher": 240.0,
               "mkd@bilstm": 60.0}  # fmt: skip
    text = results_table.stage_table(seconds, ["sst2", "rte"])
    lines = text.splitlines()
    assert "| teacher | 10.0 | 2.0 |  | 12.0 |" in lines
    assert "| mkd |  |  | bilstm 1.0 | 1.0 |" in lines
    assert "| **total** | 15.0 | 2.0 | | **22.0** |" in lines
    assert text.endswith("Single-task stages: 17.0 min; all stages that ran: 22.0 min.")


def test_script_reads_workspace_and_names_tasks_without_report(tmp_path):
    (tmp_path / "metrics" / "report").mkdir(parents=True)
    (tmp_path / "params.yaml").write_text("tasks: [sst2, cola]\n", encoding="utf-8")
    sst2 = report("sst2", {"teacher": {"accuracy": 0.9}, "student": {"accuracy": 0.88},
                           "baseline": {"accuracy": 0.8}})  # fmt: skip
    (tmp_path / "metrics" / "report" / "sst2.json").write_text(json.dumps(sst2), encoding="utf-8")  # evaluate's
    (tmp_path / "metrics" / "sst2.json").write_text(json.dumps({"student": 0.9}), encoding="utf-8")  # headline only
    (tmp_path / "times.json").write_text(json.dumps({"seconds": {"teacher@sst2": 60.0}}), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--stage-times", "times.json"], cwd=tmp_path, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    assert "| sst2 | accuracy | 90.0 | 88.0 | 80.0 | +8.0 | -2.0 |" in result.stdout
    assert "No evaluate report (metrics/report/<task>.json) for: cola" in result.stdout
    assert "Single-task stages: 1.0 min" in result.stdout

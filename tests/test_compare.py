"""compare's data label, quality-vs-speed points and their PNG, each task's pick and frontier in its tables (the stage
itself runs in tests/test_pipeline_pairs_e2e.py)."""

from __future__ import annotations

import math

import pytest

from pipeline.data.tasks import get_task
from pipeline.stages.compare import (
    data_comparison,
    markdown_report,
    metrics_headline,
    metrics_summary,
    plot_quality_vs_speed,
    quality_vs_speed,
)


def fake_summary() -> dict:
    speeds = {"sst2": {"teacher": 80.0, "student": 400.0, "student-int8": 2000.0},
              "stsb": {"teacher": 20.0, "student": 100.0, "student-int8": 500.0}}  # fmt: skip
    reports = {
        task: {"cpu_sentences_per_second": {
            "batch_256": {model: {"median": 10 * rate} for model, rate in rates.items()},
            "batch_1": {model: {"median": rate} for model, rate in rates.items()},
        }}
        for task, rates in speeds.items()
    }  # fmt: skip
    return {
        "models": ["teacher", "student", "student-int8"],
        "average": {"teacher": 71.25, "student": 70.5, "student-int8": 70.25},
        "reports": reports,
    }


def test_one_point_per_model_at_batch_1_geometric_mean_over_tasks():
    points = quality_vs_speed(fake_summary())
    assert [point["model"] for point in points] == [
        "teacher (single-task)", "Tang BiLSTM student (KD)", "Tang BiLSTM student (KD), ONNX int8",
    ]  # fmt: skip
    assert [point["average"] for point in points] == [71.25, 70.5, 70.25]
    assert {point["batch_size"] for point in points} == {1}
    assert points[0]["sentences_per_second"] == pytest.approx(math.sqrt(80.0 * 20.0))  # 40, not the mean 50
    assert points[2]["sentences_per_second"] == pytest.approx(1000.0)


def test_plot_is_a_png_written_whole(tmp_path):
    target = tmp_path / "metrics" / "quality_vs_speed.png"
    plot_quality_vs_speed(quality_vs_speed(fake_summary()), target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and target.stat().st_size > 10_000
    assert [path.name for path in target.parent.iterdir()] == [target.name]  # no temporary file left


def test_data_label_names_the_rows_each_mkd_architecture_had_where_they_differ():
    rows = {
        "sst2": {"student": 1000, "mkd_bilstm_joint": 120, "mkd_bilstm": 120, "mkd_transformer_joint": 30},
        "rte": {"student": 50, "mkd_bilstm_joint": 50, "mkd_bilstm": 50, "mkd_transformer_joint": 30},
    }  # fmt: skip
    assert data_comparison(rows) == (
        "unequal data: transfer rows against the Tang student's (MKD data budget): MKD bilstm: sst2 120 of 1,000 "
        "(12%); MKD transformer: sst2 30 of 1,000 (3%), rte 30 of 50 (60%)"
    )
    equal = {task: dict.fromkeys(counts, counts["student"]) for task, counts in rows.items()}
    assert data_comparison(equal).startswith("equal data:")


def point(model: str, score: float, speed: float) -> dict:
    return {"model": model, "score": score, "sentences_per_second": speed}


def test_tables_end_with_each_tasks_pick_and_frontier_which_the_summary_keeps_and_the_headline_leaves_out():
    summary = fake_summary()
    models = summary["models"]
    quality = {"sst2": {"accuracy": 0.9}, "stsb": {"pearson": 0.8, "spearman": 0.8}}
    for task, report in summary["reports"].items():
        report["quality"] = {"dev": dict.fromkeys(models, quality[task])}
        report["parameters"] = dict.fromkeys(models, {"bytes": 1e6})
        report["cpu_threads"] = 2
    summary |= {
        "comparison": "equal data",
        "average_minus_single_teachers": dict.fromkeys(models, 0.0),
        "average_minus_tang_students": dict.fromkeys(models, 0.0),
        "speed_over_single_teacher": {model: {task: {"batch_1": 1.0, "batch_256": 1.0} for task in quality}
                                      for model in models},
        "frontier": {
            "sst2": {"batch_size": 1, "pick_within": 1.0,
                     "frontier": [point("teacher", 90.0, 80.0), point("student-int8", 89.25, 2000.0)],
                     "pick": point("student-int8", 89.25, 2000.0)},
            "stsb": {"batch_size": 1, "pick_within": 1.0,
                     "frontier": [point("teacher", 88.0, 20.0), point("student-int8", 85.5, 500.0)],
                     "pick": point("teacher", 88.0, 20.0)},
        },
    }  # fmt: skip
    text = markdown_report(summary, [get_task("sst2"), get_task("stsb")])
    assert text.endswith(
        "Pick per task: the fastest model of the quality-vs-speed frontier (dev score, CPU sentences/s at batch 1) "
        "within 1.00 points of the most accurate (`evaluate.pick_within`).\n\n"
        "| task | pick | frontier, most accurate to fastest (dev score at CPU sentences/s) |\n|---|---|---|\n"
        "| sst2 | Tang BiLSTM student (KD), ONNX int8 | teacher (single-task) 90.00 at 80.0/s, "
        "Tang BiLSTM student (KD), ONNX int8 89.25 at 2,000.0/s |\n"
        "| stsb | teacher (single-task) | teacher (single-task) 88.00 at 20.0/s, "
        "Tang BiLSTM student (KD), ONNX int8 85.50 at 500.0/s |\n"
    )
    assert metrics_summary(summary)["frontier"] == summary["frontier"] and "reports" not in metrics_summary(summary)
    assert set(metrics_headline(summary)) == {"teacher", "student"}  # dvc metrics: the averages only

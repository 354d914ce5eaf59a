"""The evaluate stage's report over catalogue models: what exists is evaluated, the PyTorch student and its exported
variants score alike, every model has its sizes and throughput per batch size; the quality-vs-speed frontier and its
pick on hand-built reports."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline import paths
from pipeline.data.tasks import get_task
from pipeline.params import ExportParams, Params
from pipeline.serving.catalogue import existing, single_task_models
from pipeline.serving.export import write_export
from pipeline.stages.evaluate import evaluate_models, frontier, frontier_text
from pipeline.students.architectures import save_student
from tests.test_export import build_student, texts


def test_evaluate_models_reports_quality_sizes_and_speed_of_every_existing_model(tmp_path, monkeypatch, tiny_bert_dir):
    monkeypatch.chdir(tmp_path)
    task = get_task("sst2")
    model, encoder = build_student(tiny_bert_dir, ["sst2"], max_length=32)
    save_student(model, encoder, paths.student_dir(task.name), {})
    folder = paths.export_dir(task.name)
    folder.mkdir(parents=True)
    write_export(model, encoder, task, folder, ExportParams(variants=["int8"]), {})
    params = Params(evaluate={"speed_examples": 8, "speed_batch_sizes": [1, 4], "speed_repeats": 1, "threads": 1})
    models = existing(single_task_models(task, params))  # no teacher, no baseline here
    assert set(models) == {"student", "student-onnx", "student-int8"}

    sentences = texts(30, 7)
    dev = pa.table({"text_a": sentences, "label": [i % 2 for i in range(len(sentences))]})
    report = evaluate_models(task, params, models, {"validation": dev})

    quality = report["quality"]["validation"]
    assert set(quality) == set(models)
    assert quality["student-onnx"]["accuracy"] == pytest.approx(quality["student"]["accuracy"])
    sizes = report["parameters"]
    assert sizes["student"]["total"] > sizes["student"]["without_embeddings"] > 0
    assert sizes["student-onnx"]["bytes"] == (folder / "model.onnx").stat().st_size
    assert sizes["student-int8"]["bytes"] < sizes["student-onnx"]["bytes"]
    assert set(report["cpu_sentences_per_second"]) == {"batch_1", "batch_4"}
    assert all(rate["median"] > 0 for rates in report["cpu_sentences_per_second"].values() for rate in rates.values())

    # the frontier of these real models: each model with its own dev accuracy (x100) and batch-1 median speed; every
    # model left out is beaten by a frontier model on both; the pick is the fastest within 1 point of the best
    front = report["frontier"]
    assert front["batch_size"] == 1 and front["pick_within"] == 1.0
    batch_1 = report["cpu_sentences_per_second"]["batch_1"]
    on = front["frontier"]
    assert on and {point["model"] for point in on} <= set(models)
    for point in on:
        assert point["score"] == pytest.approx(100 * quality[point["model"]]["accuracy"])
        assert point["sentences_per_second"] == batch_1[point["model"]]["median"]
    assert all(
        a["score"] > b["score"] and a["sentences_per_second"] < b["sentences_per_second"] for a, b in zip(on, on[1:])
    )
    names = {point["model"] for point in on}
    for name in set(models) - names:
        score, speed = 100 * quality[name]["accuracy"], batch_1[name]["median"]
        assert any(p["score"] >= score and p["sentences_per_second"] >= speed for p in on), name
    assert front["pick"] == max(
        (point for point in on if point["score"] >= on[0]["score"] - 1.0 - 1e-9),
        key=lambda p: p["sentences_per_second"],
    )


def hand_report(quality: dict[str, dict[str, dict[str, float]]], batch_1: dict[str, float]) -> dict:
    """A report as evaluate_models writes it, with only what the frontier reads: per split and model the metrics, per
    model its batch-1 median speed; batch 256's speeds run the other way round, so reading them would change it all."""
    models = list(batch_1)
    return {
        "models": models,
        "quality": quality,
        "cpu_sentences_per_second": {
            "batch_256": {model: {"median": 1e6 / rate} for model, rate in batch_1.items()},
            "batch_1": {model: {"median": rate} for model, rate in batch_1.items()},
        },
    }


def accuracies(dev: dict[str, float]) -> dict[str, dict[str, dict[str, float]]]:
    return {"dev": {model: {"accuracy": value} for model, value in dev.items()}}


SST2 = hand_report(
    accuracies({
        "teacher": 0.90, "student": 0.88, "student-onnx": 0.88, "student-int8": 0.875, "baseline": 0.85,
        "tfidf": 0.86, "model2vec": 0.80,
    }),
    {
        "teacher": 100.0, "student": 1000.0, "student-onnx": 1500.0, "student-int8": 3000.0, "baseline": 900.0,
        "tfidf": 5000.0, "model2vec": 4000.0,
    },
)  # fmt: skip


def on_frontier(front: dict) -> list[tuple[str, float, float]]:
    return [(point["model"], point["score"], point["sentences_per_second"]) for point in front["frontier"]]


def test_frontier_leaves_out_dominated_models_most_accurate_first():
    # baseline (85.0 at 900) is beaten by student (88.0 at 1000), model2vec (80.0 at 4000) by tfidf (86.0 at 5000),
    # student (88.0 at 1000) by student-onnx (same score, faster)
    front = frontier(get_task("sst2"), SST2, 1.0)
    assert front["batch_size"] == 1
    assert on_frontier(front) == [
        ("teacher", pytest.approx(90.0), 100.0),
        ("student-onnx", pytest.approx(88.0), 1500.0),
        ("student-int8", pytest.approx(87.5), 3000.0),
        ("tfidf", pytest.approx(86.0), 5000.0),
    ]
    assert front["pick"]["model"] == "teacher"  # nothing else within 1 point of 90.0
    assert frontier_text(front) == (
        "teacher 90.00 at 100.0/s, student-onnx 88.00 at 1,500.0/s, student-int8 87.50 at 3,000.0/s, "
        "tfidf 86.00 at 5,000.0/s"
    )


@pytest.mark.parametrize(
    ("within", "pick"),
    [(0.0, "teacher"), (1.99, "teacher"), (2.0, "student-onnx"), (2.5, "student-int8"), (3.99, "student-int8"),
     (4.0, "tfidf"), (50.0, "tfidf")],
)  # fmt: skip
def test_pick_is_the_fastest_frontier_model_within_the_points_a_gap_of_exactly_within_included(within, pick):
    front = frontier(get_task("sst2"), SST2, within)
    assert front["pick"]["model"] == pick and front["pick_within"] == within
    assert front["pick"] in front["frontier"]


def test_a_gap_of_exactly_within_points_is_within_though_the_floats_differ_by_more():
    report = hand_report(accuracies({"teacher": 0.55, "student": 0.54}), {"teacher": 100.0, "student": 1000.0})
    assert 100 * 0.55 - 100 * 0.54 > 1.0  # 1.000000000000007
    assert frontier(get_task("sst2"), report, 1.0)["pick"]["model"] == "student"


def test_ties_equal_score_the_faster_stays_equal_speed_the_more_accurate_equal_both_the_first_listed():
    report = hand_report(
        accuracies({"student-int8": 0.88, "student-onnx": 0.88, "student": 0.88, "static": 0.86, "tfidf": 0.84}),
        {"student-int8": 2000.0, "student-onnx": 2000.0, "student": 1000.0, "static": 3000.0, "tfidf": 3000.0},
    )
    assert on_frontier(frontier(get_task("sst2"), report, 1.0)) == [
        ("student-int8", pytest.approx(88.0), 2000.0),  # listed before student-onnx, equal on both
        ("static", pytest.approx(86.0), 3000.0),  # as fast as tfidf, more accurate
    ]
    report["models"] = ["student-onnx", "student-int8", "student", "static", "tfidf"]  # the other order
    assert [point["model"] for point in frontier(get_task("sst2"), report, 1.0)["frontier"]] == [
        "student-onnx",
        "static",
    ]


def test_regression_task_scores_the_mean_of_pearson_and_spearman():
    # on Pearson alone the teacher (88) and tfidf (87) would be the frontier's ends and tfidf the pick
    report = hand_report(
        {"dev": {
            "teacher": {"pearson": 0.88, "spearman": 0.86},
            "student": {"pearson": 0.85, "spearman": 0.87},
            "tfidf": {"pearson": 0.87, "spearman": 0.79},
        }},
        {"teacher": 100.0, "student": 1000.0, "tfidf": 2000.0},
    )  # fmt: skip
    front = frontier(get_task("stsb"), report, 1.0)
    assert on_frontier(front) == [
        ("teacher", pytest.approx(87.0), 100.0),
        ("student", pytest.approx(86.0), 1000.0),
        ("tfidf", pytest.approx(83.0), 2000.0),
    ]
    assert front["pick"]["model"] == "student"


def test_cola_scores_mcc_alone_and_mnli_both_dev_splits():
    cola = hand_report(
        {"dev": {"teacher": {"mcc": 0.30, "accuracy": 0.70}, "student": {"mcc": 0.20, "accuracy": 0.80}}},
        {"teacher": 100.0, "student": 1000.0},
    )
    assert on_frontier(frontier(get_task("cola"), cola, 5.0)) == [
        ("teacher", pytest.approx(30.0), 100.0), ("student", pytest.approx(20.0), 1000.0),
    ]  # fmt: skip
    mnli = hand_report(
        {"dev_matched": {"teacher": {"accuracy": 0.80}, "student": {"accuracy": 0.78}},
         "dev_mismatched": {"teacher": {"accuracy": 0.80}, "student": {"accuracy": 0.80}}},
        {"teacher": 100.0, "student": 1000.0},
    )  # fmt: skip
    front = frontier(get_task("mnli"), mnli, 1.0)  # student: 79.0, within 1 of 80.0 (on matched alone: 2 below)
    assert [point["score"] for point in front["frontier"]] == [pytest.approx(80.0), pytest.approx(79.0)]
    assert front["pick"]["model"] == "student"


def test_one_model_is_the_frontier_and_the_pick_a_file_report_scored_on_its_split():
    report = hand_report({"my_file": {"student": {"accuracy": 0.75}}}, {"student": 42.0})  # evaluate --data
    front = frontier(get_task("sst2"), report, 1.0)
    assert on_frontier(front) == [("student", pytest.approx(75.0), 42.0)]
    assert front["pick"] == front["frontier"][0]

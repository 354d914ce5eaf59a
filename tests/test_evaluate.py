"""The evaluate stage's report over catalogue models: what exists is evaluated, the PyTorch student and its exported
variants score alike, and every model has its sizes and throughput per batch size."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline import paths
from pipeline.data.tasks import get_task
from pipeline.params import ExportParams, Params
from pipeline.serving.catalogue import existing, single_task_models
from pipeline.serving.export import write_export
from pipeline.stages.evaluate import evaluate_models
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

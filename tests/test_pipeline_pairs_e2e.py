"""End-to-end on several tasks at once: single-sentence, pair classification, regression, then RTE and MNLI added.

The real DVC stages run on tiny fixtures in the real GLUE layout (tests/glue_fixtures.py) with a tiny random BERT.
"""

from __future__ import annotations

import json
import math

import pytest
import yaml

from tests.conftest import copy_project, init_project, tiny_params
from tests.glue_fixtures import write_glue
from tests.test_pipeline_e2e import dvc, run, stages_run

STAGES = ("prepare", "teacher", "augment", "score", "student", "baseline", "export", "evaluate")
MODELS = ("teacher", "student", "baseline", "student-onnx", "student-int8", "student-table")
FIRST_TASKS = ["sst2", "qqp", "stsb"]


def set_tasks(project, tasks: list[str]) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["tasks"] = tasks
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def stage_names(*tasks: str) -> set[str]:
    return {f"{stage}@{task}" for stage in STAGES for task in tasks}


def check_report(project, task: str, splits: tuple[str, ...], metrics: dict[str, tuple[float, float]]) -> dict:
    """metrics/<task>.json has, per split and model, exactly the task's metrics, each a number within its range."""
    report = json.loads((project / "metrics" / f"{task}.json").read_text())
    assert report["task"] == task
    assert tuple(report["quality"]) == splits
    for split in splits:
        assert set(report["quality"][split]) == set(MODELS)
        for model in MODELS:
            values = report["quality"][split][model]
            assert set(values) == set(metrics), (split, model, values)
            for name, (low, high) in metrics.items():
                assert not math.isnan(values[name]) and low <= values[name] <= high, (split, model, name, values)
    for model in MODELS:
        assert report["cpu_sentences_per_second"]["batch_1"][model] > 0
    assert "| student |" in (project / "metrics" / f"{task}.md").read_text()
    return report


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("pairs-e2e")
    # Every task's data is there from the start: the prepare stages depend on the whole GLUE folder.
    glue = write_glue(root / "glue", [*FIRST_TASKS, "rte", "mnli"], n_train=40, n_dev=16)
    proj = copy_project(root / "proj")
    params = tiny_params(glue, tiny_bert_dir)
    params["tasks"] = FIRST_TASKS
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    init_project(proj)
    return proj


def test_repro_runs_every_stage_of_every_task(project):
    result = dvc("repro", cwd=project)
    assert stages_run(result) == stage_names(*FIRST_TASKS)

    check_report(project, "sst2", ("dev",), {"accuracy": (0, 1)})
    check_report(project, "qqp", ("dev",), {"f1": (0, 1), "accuracy": (0, 1)})
    check_report(project, "stsb", ("dev",), {"pearson": (-1, 1), "spearman": (-1, 1)})
    for task in FIRST_TASKS:
        teacher = json.loads((project / "metrics" / "teacher" / f"{task}.json").read_text())
        assert teacher["task"] == task
        transfer = json.loads((project / "data" / "logits" / "single" / task / "_manifest.json").read_text())
        assert transfer["num_rows"] > 40  # originals plus synthetic rows

    status = dvc("status", cwd=project).stdout
    assert "up to date" in status, status
    shown = dvc("metrics", "show", cwd=project).stdout
    assert "quality.dev.student.f1" in shown and "quality.dev.baseline.spearman" in shown


def test_adding_a_task_runs_only_its_stages(project):
    set_tasks(project, [*FIRST_TASKS, "rte"])
    result = dvc("repro", cwd=project)
    assert stages_run(result) == stage_names("rte")
    check_report(project, "rte", ("dev",), {"accuracy": (0, 1)})
    assert "up to date" in dvc("status", cwd=project).stdout


def test_mnli_reports_matched_and_mismatched_dev(project):
    set_tasks(project, [*FIRST_TASKS, "rte", "mnli"])
    result = dvc("repro", cwd=project)
    assert stages_run(result) == stage_names("mnli")
    report = check_report(project, "mnli", ("dev_matched", "dev_mismatched"), {"accuracy": (0, 1)})
    assert report["speed_examples"] == 16
    for split in ("dev_matched", "dev_mismatched"):
        assert (project / "data" / "prepared" / "mnli" / f"{split}.parquet").is_file()
    assert "up to date" in dvc("status", cwd=project).stdout

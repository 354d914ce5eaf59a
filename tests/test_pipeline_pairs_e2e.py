"""End-to-end on several tasks at once: single-sentence, pair classification, regression, then RTE and MNLI added.

The real DVC stages run on tiny fixtures in the real GLUE layout (tests/glue_fixtures.py) with a tiny random BERT.
"""

from __future__ import annotations

import json
import math

import pytest
import yaml

from pipeline.data.tasks import get_task
from tests.conftest import LEARNING, MULTITASK, copy_project, init_project, tiny_params
from tests.glue_fixtures import write_glue
from tests.recompute import (
    LOGIT_TOLERANCE,
    TOLERANCE,
    Dev,
    Rows,
    assert_exports_match,
    assert_same_metrics,
    project_params,
    recompute,
    recompute_logit_diffs,
)
from tests.test_pipeline_e2e import dvc, stages_run, stale_stages, up_to_date

pytestmark = pytest.mark.e2e  # dvc repro of every stage on several tasks in a tmp project

STAGES = ("prepare", "teacher", "augment", "score", "mt_score", "student", "baseline", "export", "evaluate")
STAGES += ("reference",)  # the model2vec reference model
STAGES += ("static", "export_static")  # the static student and its export
MODELS = ("teacher", "student", "baseline", "tfidf", "model2vec", "student-onnx", "student-int8", "student-table")
MODELS += ("static", "static-onnx", "static-int8")
FIRST_TASKS = ["sst2", "qqp", "stsb"]
MKD_STUDENTS = ("biattentive", "transformer", "bilstm")
MULTI_TASK_STAGES = {
    "mt_teacher@multitask",
    *(f"{stage}@{s}" for stage in ("mkd", "export_mkd") for s in MKD_STUDENTS),
    "compare",
}


def set_tasks(project, tasks: list[str]) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["tasks"] = tasks
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def set_mkd_epochs(project, student: str, epochs: int) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["mkd"]["training"][student]["epochs"] = epochs
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def stage_names(*tasks: str) -> set[str]:
    """Every per-task stage of ``tasks``; the multi-task teacher's scoring is a matrix stage, named with its teacher."""
    return {f"{stage}@{task}" + ("-multitask" if stage == "mt_score" else "") for stage in STAGES for task in tasks}


def metric_columns(shown: dict) -> set[str]:
    """The column names `dvc metrics show` prints: every flattened key of every declared metrics file."""

    def flatten(value: object, prefix: str = "") -> set[str]:
        if isinstance(value, dict):
            return set().union(*(flatten(v, f"{prefix}{k}.") for k, v in value.items())) if value else set()
        return {prefix.rstrip(".")}

    files = [data for revision in shown.values() for data in revision["data"].values()]
    return set().union(*(flatten(entry["data"]) for entry in files))


def check_report(project, task: str, splits: tuple[str, ...], metrics: dict[str, tuple[float, float]]) -> dict:
    """metrics/report/<task>.json has, per split and model, exactly the task's metrics, each a number within its
    range; the headline metrics/<task>.json holds the primary metric of the first split."""
    report = json.loads((project / "metrics" / "report" / f"{task}.json").read_text())
    headline = json.loads((project / "metrics" / f"{task}.json").read_text())
    primary = get_task(task).primary_metric
    for model in ("teacher", "student", "baseline"):
        assert headline[model] == report["quality"][splits[0]][model][primary]
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
        speed = report["cpu_sentences_per_second"]["batch_1"][model]
        assert 0 < speed["min"] <= speed["median"] <= speed["max"]
    assert "| student |" in (project / "metrics" / f"{task}.md").read_text()
    return report


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("pairs-e2e")
    # Every task's data is there from the start: the prepare stages depend on the whole GLUE folder.
    glue = write_glue(root / "glue", [*FIRST_TASKS, "rte", "mnli"], n_train=40, n_dev=16)
    proj = copy_project(root / "proj")
    params = tiny_params(glue, tiny_bert_dir, **LEARNING, **MULTITASK)  # models that tell rows apart
    params["tasks"] = FIRST_TASKS
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    init_project(proj)
    return proj


def test_repro_runs_every_stage_of_every_task(project):
    result = dvc("repro", cwd=project)
    assert stages_run(result) == stage_names(*FIRST_TASKS) | MULTI_TASK_STAGES

    check_report(project, "sst2", ("dev",), {"accuracy": (0, 1)})
    check_report(project, "qqp", ("dev",), {"f1": (0, 1), "accuracy": (0, 1)})
    check_report(project, "stsb", ("dev",), {"pearson": (-1, 1), "spearman": (-1, 1)})
    metric_names = {"sst2": {"accuracy"}, "qqp": {"f1", "accuracy"}, "stsb": {"pearson", "spearman"}}
    multitask = json.loads((project / "dvclive" / "mt_teacher" / "metrics.json").read_text())
    for task in FIRST_TASKS:
        # DVCLive's metrics.json holds the headline (primary dev metric per task); every metric has its curve.
        teacher_log = project / "dvclive" / "teacher" / task
        teacher = json.loads((teacher_log / "metrics.json").read_text())
        assert set(teacher["dev"]) == {task} and set(multitask["dev"]) == set(FIRST_TASKS)
        curves = {p.stem for p in (teacher_log / "plots" / "metrics" / "dev").glob("*.tsv")}
        multitask_curves = {
            p.stem for p in (project / "dvclive" / "mt_teacher" / "plots" / "metrics" / "dev" / task).glob("*.tsv")
        }
        assert curves == metric_names[task] == multitask_curves
        report = json.loads((project / "metrics" / "report" / f"{task}.json").read_text())
        primary = get_task(task).primary_metric
        assert teacher["dev"][task] == pytest.approx(report["quality"]["dev"]["teacher"][primary], abs=1e-4)
        for kind in ("single", "multitask"):
            transfer = json.loads((project / "data" / "logits" / kind / task / "_manifest.json").read_text())
            assert transfer["num_rows"] > 40  # originals plus synthetic rows

    for student in MKD_STUDENTS:
        joint = json.loads((project / "models" / "mkd" / student / "multitask" / "config.json").read_text())
        assert joint["architecture"] == student and joint["tasks"] == FIRST_TASKS
        for task in FIRST_TASKS:
            config = json.loads((project / "models" / "mkd" / student / task / "config.json").read_text())
            assert config["tasks"] == [task]
    comparison = json.loads((project / "metrics" / "comparison_summary.json").read_text())
    headline = json.loads((project / "metrics" / "comparison.json").read_text())
    delivered = {"teacher", "mt_teacher", "student", "baseline", "static", "tfidf", "model2vec"}
    delivered |= {f"mkd_{s}" for s in MKD_STUDENTS}
    assert headline == {model: comparison["average"][model] / 100 for model in delivered}
    models = {
        "teacher",
        "mt_teacher",
        "student",
        "baseline",
        "tfidf",
        "model2vec",
        *(f"mkd_{s}{j}" for s in MKD_STUDENTS for j in ("", "_joint")),
    }
    exported = {f"mkd_{s}-{variant}" for s in MKD_STUDENTS for variant in ("onnx", "int8")} | {"student-onnx"}
    assert models | exported <= set(comparison["models"]) == set(comparison["average"])
    for model in models:
        assert set(comparison["score"][model]) == set(FIRST_TASKS)
        assert comparison["speed_over_single_teacher"][model]["sst2"]["batch_1"] > 0
    assert "| MKD biattentive |" in (project / "metrics" / "comparison.md").read_text()
    # the tiny tasks are under the MKD budgets: every distilled student had its task's whole transfer set
    assert (project / "metrics" / "comparison.md").read_text().startswith("Comparison: equal data: ")
    for task in FIRST_TASKS:
        transfer = json.loads((project / "data" / "logits" / "single" / task / "_manifest.json").read_text())
        assert set(comparison["transfer_rows"][task].values()) == {transfer["num_rows"]}
    points = json.loads((project / "metrics" / "quality_vs_speed.json").read_text())
    assert len(points) == len(comparison["models"]) and all(point["sentences_per_second"] > 0 for point in points)
    assert (project / "metrics" / "quality_vs_speed.png").read_bytes()[:4] == b"\x89PNG"

    # The numbers themselves: every PyTorch model rescored on each task's GLUE dev file outside the pipeline's
    # evaluation code. evaluate reports teacher, student and baseline; compare every model of both kinds.
    reports = json.loads((project / "metrics" / "comparison_reports.json").read_text())
    for task in FIRST_TASKS:
        dev = Dev.of_project(project, task)
        assert len(dev) == 16
        expected = recompute(project, dev, multi_task=True)
        report = json.loads((project / "metrics" / "report" / f"{task}.json").read_text())
        single = {model: expected[model] for model in ("teacher", "student", "baseline")}
        assert_same_metrics(report["quality"]["dev"], single, f"metrics/report/{task}.json dev")
        assert_same_metrics(reports[task]["quality"]["dev"], expected, f"metrics/comparison_reports.json {task} dev")
        # Every exported variant (the Tang, static and MKD students', each MKD student's as its task uses it) run from
        # its folder by tokenizers and onnxruntime alone (the Transformer's as one sequence with segment ids, built
        # from its config.json): the metrics compare reports, batched as compare batches them, and the metrics and
        # largest logit difference from the PyTorch student that export, export_static and export_mkd report.
        folders = {s: project / "models" / "export" / "mkd" / s / task for s in MKD_STUDENTS}
        encodings = {s: json.loads((folder / "config.json").read_text())["encoding"] for s, folder in folders.items()}
        assert encodings == {"bilstm": "separate", "biattentive": "separate", "transformer": "joint"}
        quality, what = reports[task]["quality"]["dev"], f"metrics/comparison_reports.json {task} dev"
        assert_exports_match(project, dev, "dev", quality, what, multi_task=True)
        for model, metrics in expected.items():  # the GLUE-convention score: CoLA's MCC, else the metrics' mean
            counted = [metrics["mcc"]] if "mcc" in metrics else list(metrics.values())
            score = 100 * sum(counted) / len(counted)
            assert abs(comparison["score"][model][task] - score) <= 100 * TOLERANCE, (task, model, score, comparison)
    for model in expected:
        average = sum(comparison["score"][model][task] for task in FIRST_TASKS) / len(FIRST_TASKS)
        assert abs(comparison["average"][model] - average) <= 100 * TOLERANCE, (model, average, comparison)

    status = dvc("status", cwd=project).stdout
    assert up_to_date(status), status
    shown = json.loads(dvc("metrics", "show", "--json", cwd=project).stdout)
    columns = metric_columns(shown)
    assert {"teacher", "student", "baseline", "kd_gain", "mkd_biattentive", "dev.stsb"} <= columns
    # headline numbers only: the columns of `dvc metrics show` stay few (every training run, task and the comparison)
    assert len(columns) <= 20, sorted(columns)


def test_exports_truncate_long_rows_as_the_pytorch_students(project):
    """Pairs longer than every student's max_length, each side in turn the longer, the shorter and tied (the
    Transformer's ``[CLS] a [SEP] b [SEP]`` cut longest-first to 32 tokens, the LSTMs' texts each to 16): the fp32
    variants run by tests/recompute.py give their PyTorch students' logits up to float noise (1e-5; seen: 2.4e-7, a
    token moved from one side of a tie to the other: 1e-4), so its encodings cut as the students do."""
    repeats = [(1, 16), (16, 1), (10, 10), (6, 12), (12, 6), (4, 14)]  # (10, 10) of one text: a tie
    for task in ("qqp", "stsb"):
        dev = Dev.of_project(project, task)
        texts = zip(dev.text_a, dev.text_b, repeats * 3)
        pairs = [(" ".join([a] * m), " ".join([a if m == n else b] * n)) for a, b, (m, n) in texts]
        text_a, text_b = [a for a, _ in pairs], [b for _, b in pairs]
        assert all(len(a.split()) + len(b.split()) > 32 for a, b in zip(text_a, text_b))  # at least one token a word
        long = Rows(task, text_a, text_b, dev.labels, dev.metrics)
        batch_size = project_params(project)["export"]["check_batch_size"]
        diffs = recompute_logit_diffs(project, long, batch_size, multi_task=True)
        fp32 = {name: runs[0] for name, runs in diffs.items() if name.endswith(("-onnx", "-table"))}
        assert {f"mkd_{s}-onnx" for s in MKD_STUDENTS} <= set(fp32)
        assert all(diff <= LOGIT_TOLERANCE for diff in fp32.values()), (task, fp32)


def test_mkd_param_reruns_nothing_single_task(project):
    set_mkd_epochs(project, "bilstm", 1)
    result = dvc("repro", cwd=project)
    assert stages_run(result) == {"mkd@bilstm", "export_mkd@bilstm", "compare"}


def test_adding_a_task_reruns_multi_task_stages_and_its_own(project):
    """The new task's single-task stages run, and every multi-task stage (their inputs now include the new task);
    no other task's single-task stage runs."""
    tasks = [*FIRST_TASKS, "rte"]
    set_tasks(project, tasks)
    result = dvc("repro", cwd=project)
    mt_scores = {f"mt_score@{task}-multitask" for task in tasks}  # the multi-task teacher changed: every task rescored
    assert stages_run(result) == stage_names("rte") | MULTI_TASK_STAGES | mt_scores
    check_report(project, "rte", ("dev",), {"accuracy": (0, 1)})
    summary = json.loads((project / "metrics" / "comparison_summary.json").read_text())
    assert set(summary["score"]["mkd_bilstm"]) == set(tasks)


def test_mnli_reports_matched_and_mismatched_dev(project):
    set_tasks(project, [*FIRST_TASKS, "rte", "mnli"])
    result = dvc("repro", "evaluate", cwd=project)
    assert stages_run(result) == stage_names("mnli") - {"mt_score@mnli-multitask"}
    report = check_report(project, "mnli", ("dev_matched", "dev_mismatched"), {"accuracy": (0, 1)})
    assert report["speed_examples"] == 16
    for split in ("dev_matched", "dev_mismatched"):
        assert (project / "data" / "prepared" / "mnli" / f"{split}.parquet").is_file()
    assert stale_stages(dvc("status", cwd=project).stdout) == MULTI_TASK_STAGES | {"mt_score@mnli-multitask"}

"""End-to-end: the real DVC stages on tiny data with a tiny random BERT, and incremental reruns."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import LEARNING, MULTITASK, copy_project, init_project, tiny_params, write_sst2
from tests.recompute import (
    Dev,
    assert_exports_match,
    assert_one_of,
    assert_same_metrics,
    project_params,
    recompute,
    recompute_exported,
)

pytestmark = pytest.mark.e2e  # the real stages in a tmp DVC project: dvc repro/status, python -m pipeline

STAGE_RUN = re.compile(r"Running stage '([^']+)'")
MKD_STAGES = {
    f"{stage}@{student}" for stage in ("mkd", "export_mkd") for student in ("biattentive", "transformer", "bilstm")
}
MULTI_TASK_STAGES = {"mt_teacher@multitask", *MKD_STAGES, "compare"}


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("DISTILLERY_GLUE_DIR", None)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, check)


def stages_run(result: subprocess.CompletedProcess) -> set[str]:
    return set(STAGE_RUN.findall(result.stdout + result.stderr))


def stale_stages(status: str) -> set[str]:
    """Exact stage names listed by ``dvc status`` (lines ``name:`` without indentation; their changed deps, outs
    and params are the indented lines below), so ``score@sst2`` is not found inside ``mt_score@sst2-multitask``."""
    return {line[:-1] for line in status.splitlines() if line.endswith(":") and not line[0].isspace()}


def up_to_date(status: str) -> bool:
    return stale_stages(status) == set() and "Data and pipelines are up to date." in status


def snapshot(root: Path) -> dict[str, tuple[int, int, str] | None]:
    """Every file (size, mtime in ns, SHA-256) and folder (None) under ``root``, by relative path. Python's bytecode
    caches are left out: running ``python -m pipeline`` may compile a module of the copied sources into
    ``pipeline/**/__pycache__``, which is the interpreter's doing, not an output of the command."""
    out: dict[str, tuple[int, int, str] | None] = {}
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        relative = path.relative_to(root).as_posix()
        if path.is_dir():
            out[relative] = None
        else:
            stat = path.stat()
            out[relative] = (stat.st_size, stat.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def set_params(project: Path, section: str, **values) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert_dir) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    glue = write_sst2(root / "glue", n_train=60, n_dev=30)
    proj = copy_project(root / "proj")
    params = tiny_params(glue, tiny_bert_dir, **LEARNING, **MULTITASK)  # models that tell rows apart: metrics checkable
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    init_project(proj)
    return proj


def test_repro_runs_every_stage_and_reports_metrics(project):
    result = dvc("repro", cwd=project)
    single_task = ("prepare", "teacher", "augment", "score", "student", "static", "baseline", "reference", "export")
    single_task += ("export_static", "evaluate")
    assert stages_run(result) == MULTI_TASK_STAGES | {"mt_score@sst2-multitask"} | {f"{s}@sst2" for s in single_task}
    report = json.loads((project / "metrics" / "report" / "sst2.json").read_text())
    headline = json.loads((project / "metrics" / "sst2.json").read_text())  # the declared DVC metric
    dev_quality = report["quality"]["dev"]
    primary = ("teacher", "student", "baseline", "static", "tfidf", "model2vec")
    assert {model: headline[model] for model in primary} == {model: dev_quality[model]["accuracy"] for model in primary}
    assert headline["kd_gain"] == dev_quality["student"]["accuracy"] - dev_quality["baseline"]["accuracy"]
    # one speed-up per timed batch size (tiny_params times batch sizes 1 and 8)
    assert set(headline["student_speedup"]) == set(report["cpu_sentences_per_second"]) == {"batch_1", "batch_8"}
    # the speed-up is the fastest student variant's (KD or static, PyTorch or exported) median rate over the teacher's
    students = [m for m in report["models"] if m in ("student", "static") or m.startswith(("student-", "static-"))]
    for key, rates in report["cpu_sentences_per_second"].items():
        fastest = max(rates[model]["median"] for model in students)
        assert headline["student_speedup"][key] == pytest.approx(fastest / rates["teacher"]["median"])
    for model in ("teacher", "student", "baseline", "student-onnx", "student-int8", "student-table"):
        speed = report["cpu_sentences_per_second"]["batch_1"][model]  # their accuracies are recomputed below
        assert 0 < speed["min"] <= speed["median"] <= speed["max"]
    # the fp32 exports compute the PyTorch student's function (parity is checked by the export stage)
    assert report["quality"]["dev"]["student-onnx"] == report["quality"]["dev"]["student"]
    exported = json.loads((project / "metrics" / "export" / "sst2.json").read_text())
    assert exported["variants"]["onnx"]["max_abs_logit_diff"] <= 1e-4
    assert (project / "models" / "export" / "sst2" / "model-int8.onnx").is_file()
    assert report["parameters"]["teacher"]["total"] > report["parameters"]["student"]["without_embeddings"]
    assert "| student |" in (project / "metrics" / "sst2.md").read_text()
    # the numbers themselves: the saved models rescored on the GLUE dev file outside the pipeline's evaluation code
    dev = Dev.of_project(project, "sst2")
    assert len(dev) == 30
    expected = recompute(project, dev)
    assert_same_metrics(report["quality"]["dev"], expected, "metrics/report/sst2.json dev")
    assert_same_metrics(
        {model: {"accuracy": headline[model]} for model in expected}, expected, "metrics/sst2.json (headline)"
    )
    # the exported variants run from their folders by tokenizers and onnxruntime alone, batched as evaluate batches
    # them (teacher.eval_batch_size) and as export does (export.check_batch_size): their metrics, and export's largest
    # logit difference from the PyTorch model (int8: 1e-2 here, and batching moves it by 1e-3, so it tells a variant's
    # outputs apart where metrics of 30 rows cannot)
    assert_exports_match(project, dev, "dev", report["quality"]["dev"], "metrics/report/sst2.json dev")
    manifest = json.loads((project / "data" / "logits" / "single" / "sst2" / "_manifest.json").read_text())
    assert manifest["num_rows"] > 60
    mt_manifest = json.loads((project / "data" / "logits" / "multitask" / "sst2" / "_manifest.json").read_text())
    # One task: the multi-task teacher is the single-task teacher (same code, seed and batches), weight for weight.
    assert mt_manifest["teacher_fingerprint"] == manifest["teacher_fingerprint"]
    assert [shard["sha256"] for shard in mt_manifest["shards"]] == [shard["sha256"] for shard in manifest["shards"]]
    for model in ("student", "baseline"):
        curve = project / "dvclive" / model / "sst2" / "plots" / "metrics" / "dev" / "accuracy.tsv"
        assert curve.read_text().startswith("step\taccuracy\n")
    for log in ("teacher/sst2", "mt_teacher"):  # one task: the multi-task teacher logs like a single-task one
        assert set(json.loads((project / "dvclive" / log / "metrics.json").read_text())["dev"]) == {"sst2"}
    assert not (project / "plots").exists()

    assert up_to_date(dvc("status", cwd=project).stdout)
    metrics = dvc("metrics", "show", cwd=project).stdout
    assert "metrics/sst2.json" in metrics and "kd_gain" in metrics and "quality" not in metrics
    assert "dvclive/teacher/sst2/metrics.json" in metrics and "dvclive/mt_teacher/metrics.json" in metrics
    plots = dvc("plots", "show", "-o", str(project / "plots-html"), cwd=project)
    assert (project / "plots-html" / "index.html").is_file(), plots.stdout


def test_augment_param_reruns_only_downstream_stages(project):
    set_params(project, "augment", p_mask=0.2)
    # dvc status names the stages whose own inputs changed; the stages downstream of them rerun with them
    assert stale_stages(dvc("status", cwd=project).stdout) == {"augment@sst2"}
    result = dvc("repro", cwd=project)
    assert stages_run(result) == {
        "augment@sst2",
        "score@sst2",
        "mt_score@sst2-multitask",
        "student@sst2",
        "export@sst2",
        "static@sst2",
        "export_static@sst2",
        "evaluate@sst2",
    } | MKD_STAGES | {"compare"}


def test_student_param_reruns_only_student_and_evaluate(project):
    set_params(project, "student", alpha=0.5)
    result = dvc("repro", cwd=project)
    assert stages_run(result) == {"student@sst2", "export@sst2", "evaluate@sst2", "compare"}
    assert up_to_date(dvc("status", cwd=project).stdout)


def test_inference_precision_reruns_scoring_and_training_precision_the_teacher(project):
    set_params(project, "score", precision="bf16")
    # exact names: a substring test would find "score@sst2" in "mt_score@sst2-multitask" with score@sst2 not stale
    assert stale_stages(dvc("status", cwd=project).stdout) == {
        "score@sst2",
        "mt_score@sst2-multitask",
        "evaluate@sst2",
        "compare",
    }  # every stage that runs the teacher for inference
    set_params(project, "score", precision="fp32")
    set_params(project, "teacher", mixed_precision="bf16")
    trainings = {"teacher@sst2", "mt_teacher@multitask"}
    assert stale_stages(dvc("status", cwd=project).stdout) == trainings  # the trainings only
    set_params(project, "teacher", mixed_precision="auto")
    assert up_to_date(dvc("status", cwd=project).stdout)


def test_evaluate_accepts_any_glue_tsv(project, tmp_path):
    # Not the dev file under another name: other sentences (another seed), fewer rows (12, dev has 30), another name.
    held_out = tmp_path / "held_out_sst2.tsv"
    (write_sst2(tmp_path / "held", n_train=4, n_dev=12, seed=7) / "SST-2" / "dev.tsv").rename(held_out)
    data = Dev("sst2", held_out)
    assert len(data) == 12 and set(data.text_a).isdisjoint(Dev.of_project(project, "sst2").text_a)
    result = run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "evaluate",
            "--task",
            "sst2",
            "--data",
            str(held_out),
            "--out",
            str(tmp_path / "held.json"),
        ],
        project,
    )
    report = json.loads((tmp_path / "held.json").read_text())
    assert set(report["quality"]) == {"held_out_sst2"}  # the split is named after the file
    single_task = {"teacher", "student", "baseline", "student-onnx", "student-int8", "student-table"}
    single_task |= {"tfidf", "model2vec"}  # the reference models
    single_task |= {"static", "static-onnx", "static-int8"}  # the static student and its exports
    # The MKD models trained by the same repro: the joint student, the fine-tuned one and its exported variants.
    mkd = {
        f"mkd_{arch}{suffix}"
        for arch in ("bilstm", "biattentive", "transformer")
        for suffix in ("", "_joint", "-onnx", "-int8")
    } | {"mkd_bilstm-table"}
    assert set(report["quality"]["held_out_sst2"]) == single_task | mkd | {"mt_teacher"}
    assert "| teacher |" in result.stdout
    # The numbers are the file's: its 12 rows timed (speed_examples is 16), and every PyTorch model's metrics those
    # of its outputs on the file's sentences against the file's labels.
    assert report["speed_examples"] == 12
    quality = report["quality"]["held_out_sst2"]
    assert_same_metrics(quality, recompute(project, data, multi_task=True), str(held_out))
    batch_size = project_params(project)["teacher"]["eval_batch_size"]
    assert_one_of(quality, recompute_exported(project, data, batch_size), f"{held_out}, exported variants")
    assert quality["student-onnx"] == quality["student"]
    assert not (project / "metrics" / "held_out_sst2.json").exists()


def test_bad_params_fail_cleanly_without_outputs(project, tmp_path):
    bad = tmp_path / "params.yaml"
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["augment"]["p_maks"] = 0.3
    bad.write_text(yaml.safe_dump(params))
    before, before_tmp = snapshot(project), snapshot(tmp_path)
    assert "data/augmented/sst2.parquet" in before  # an output the command would overwrite
    result = run(
        [sys.executable, "-m", "pipeline", "augment", "--task", "sst2", "--params", str(bad)], project, check=False
    )
    assert result.returncode == 1
    assert f"error: {bad}: augment.p_maks: Extra inputs are not permitted" in result.stderr
    assert "Traceback" not in result.stderr
    # nothing written: no file or folder created, removed or touched (bytes and mtime) in the project or beside bad
    after = snapshot(project)
    assert sorted(set(after) - set(before)) == [], "created"
    assert sorted(set(before) - set(after)) == [], "removed"
    assert [path for path in before if before[path] != after[path]] == [], "modified"
    assert snapshot(tmp_path) == before_tmp


def test_bad_glue_file_fails_cleanly(project, tmp_path):
    glue = write_sst2(tmp_path / "glue")
    train = glue / "SST-2" / "train.tsv"
    train.write_bytes(train.read_bytes() + b"caf\xe9 au lait\t1\n")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["glue_dir"] = str(glue)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "work"
    out.mkdir()
    result = run(
        [sys.executable, "-m", "pipeline", "prepare", "--task", "sst2", "--params", str(tmp_path / "params.yaml")],
        out,
        check=False,
    )
    assert result.returncode == 1
    assert f"error: {train}:82: not valid UTF-8" in result.stderr
    assert snapshot(out) == {}  # no data/prepared/sst2 folder, not even an empty one or a temporary


def test_dvc_exp_run_set_param(project):
    """The README's way to try a setting: `dvc exp run -S augment.p_mask=0.2` on a committed workspace, then
    `dvc exp show --only-changed`: the changed param and the headline metrics, nothing else."""
    dvc("repro", cwd=project)
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "baseline run"], project)
    before = str(yaml.safe_load((project / "params.yaml").read_text())["augment"]["p_mask"])
    new = "0.35"  # README's 0.2 may be the module project's value already (an earlier test sets it)
    result = dvc("exp", "run", "-S", f"augment.p_mask={new}", cwd=project)
    ran = stages_run(result)
    assert {"augment@sst2", "score@sst2", "student@sst2", "export@sst2", "evaluate@sst2"} <= ran
    assert not ran & {"prepare@sst2", "teacher@sst2", "baseline@sst2"}  # they do not read augment
    # README's command (the fixture's GLUE folder shows up as a tmp/... dependency column, dropped too)
    drop = r"(\.\./|data/|models/|pipeline/|tmp/).*"
    shown = dvc("exp", "show", "--no-pager", "--only-changed", "--drop", drop, "--csv", cwd=project).stdout
    header, *rows = list(csv.reader(io.StringIO(shown)))
    assert "augment.p_mask" in header and "student.epochs" not in header
    assert {row[header.index("augment.p_mask")] for row in rows} >= {before, new}
    columns = [c for c in header if c not in ("Experiment", "rev", "typ", "Created")]
    assert 2 <= len(columns) <= 10, columns  # the param and headline metrics, no dependency hashes
    headline = ("student", "kd_gain", "mkd_", "metrics/", "dvclive/")  # metrics/...: DVC's prefix on a shared name
    assert all(c == "augment.p_mask" or c.startswith(headline) for c in columns), columns

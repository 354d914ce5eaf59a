"""MKD stage: transfer-set subsets, joint distillation of one student on several tasks, per-task fine-tuning."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline import paths
from pipeline.data.schema import shard_schema
from pipeline.data.subsets import subset_originals
from pipeline.data.tasks import get_task
from pipeline.params import Params
from pipeline.stages.score import write_manifest
from pipeline.students.architectures import load_student, read_student_config
from pipeline.students.inference import predict
from tests.recompute import task_metrics
from tests.test_student import NEGATIVE, POSITIVE, sentence, teacher_dir, write_prepared  # noqa: F401 (fixture)

TASKS = ("sst2", "rte", "stsb")


def transfer_rows(task_name: str, n_originals: int, seed: int) -> list[dict]:
    """Originals and one synthetic copy each; the teacher's logits follow the sentiment words (scores for STS-B)."""
    task, rng = get_task(task_name), random.Random(seed)
    rows = []
    for source_id in range(n_originals):
        positive = source_id % 2 == 0
        text_a = sentence(rng, positive)
        text_b = sentence(rng, positive == (source_id % 3 == 0)) if task.is_pair else None
        if task.is_regression:
            label, logits = 4.0 if positive else 1.0, [4.0 if positive else 1.0]
        else:
            label, logits = int(positive), [-2.0, 2.0] if positive else [2.0, -2.0]
        for synthetic in (False, True):
            rows.append({
                "id": len(rows), "source_id": source_id, "is_original": not synthetic, "is_unlabelled": False,
                "text_a": f"[MASK] {text_a}" if synthetic else text_a, "text_b": text_b,
                "label": None if synthetic else label, "ops": ["mask"] if synthetic else [], "logits": logits,
            })  # fmt: skip
    return rows


def write_task(root: Path, task_name: str, n_originals: int = 60) -> None:
    """Shards under ``root/logits/single/<task>`` and a prepared dev split under ``root/prepared``."""
    task = get_task(task_name)
    rows = transfer_rows(task_name, n_originals, seed=len(task_name))
    shard_dir = paths.shard_dir(task_name, "single", root / "logits")
    shard_dir.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=shard_schema(task)), shard_dir / "part-00000.parquet")
    write_manifest(task, shard_dir, {}, Params())
    dev = [
        {"id": i, "text_a": r["text_a"], "text_b": r["text_b"], "label": r["label"]}
        for i, r in enumerate(transfer_rows(task_name, 20, seed=99))
        if r["is_original"]
    ]
    write_prepared(root / "prepared", task_name, "dev", dev)


def test_subset_originals_keeps_whole_groups() -> None:
    table = pa.Table.from_pylist(transfer_rows("sst2", 50, seed=0), schema=shard_schema(get_task("sst2")))
    subset = subset_originals(table, 10, seed=3)
    sources = subset.column("source_id").to_pylist()
    assert len(set(sources)) == 10 and subset.num_rows == 20  # each kept original with its synthetic copy
    assert subset.equals(subset_originals(table, 10, seed=3))
    assert set(sources) != set(subset_originals(table, 10, seed=4).column("source_id").to_pylist())
    assert subset_originals(table, None, seed=3) is table and subset_originals(table, 50, seed=3) is table
    smaller = set(subset_originals(table, 4, seed=3).column("source_id").to_pylist())
    assert len(smaller) == 4 and smaller < set(sources)  # budgets of one seed are nested


@pytest.fixture()
def mkd_params(teacher_dir: Path) -> Params:  # noqa: F811 (pytest fixture)
    train = {
        "epochs": 3,
        "batch_size": 16,
        "batch_size_pair": 16,
        "optimizer": "adam",
        "learning_rate": 0.01,
        "mixed_precision": "fp32",
    }
    return Params.model_validate({
        "tasks": list(TASKS),
        "teacher": {"checkpoint": str(teacher_dir)},
        "bilstm": {"hidden_size": 16, "fc_hidden": 16, "max_length": 16, "dropout": 0.0},
        "mkd": {"teacher": "single", "init_from": "checkpoint", "finetune_epochs": 1, "training": {"bilstm": train}},
    })  # fmt: skip


def test_run_mkd_joint_and_fine_tuned_students(mkd_params: Params, tmp_path: Path) -> None:
    from pipeline.stages.mkd import run_mkd

    for task in TASKS:
        write_task(tmp_path, task)
    out, logs, tuning_logs = tmp_path / "models" / "bilstm", tmp_path / "dvclive" / "bilstm", tmp_path / "finetune"
    summary = run_mkd(
        "bilstm", mkd_params, tmp_path / "logits", tmp_path / "prepared", tmp_path / "unused", out, logs, tuning_logs
    )

    joint_config = read_student_config(out / "multitask")
    assert joint_config["architecture"] == "bilstm" and joint_config["tasks"] == list(TASKS)
    assert summary["multitask"]["train_rows"] == {task: 120 for task in TASKS}
    assert summary["multitask"]["dev"]["sst2"]["accuracy"] >= 0.8
    joint, encoder = load_student(out / "multitask")
    assert set(joint.heads) == set(TASKS)
    curves = {p.relative_to(logs / "plots" / "metrics").as_posix() for p in logs.rglob("*.tsv")}
    assert {"train/loss.tsv", "dev/sst2/accuracy.tsv", "dev/rte/accuracy.tsv", "dev/stsb/pearson.tsv"} <= curves

    joint_state = joint.state_dict()
    for task in TASKS:
        tuned, tuned_encoder = load_student(out / task)
        assert list(tuned.heads) == [task] and read_student_config(out / task)["tasks"] == [task]
        spec = get_task(task)
        dev = pq.read_table(tmp_path / "prepared" / task / "dev.parquet")
        text_a, labels = dev.column("text_a").to_pylist(), np.array(dev.column("label").to_pylist())
        text_b = dev.column("text_b").to_pylist() if spec.is_pair else None
        logits = predict(tuned, tuned_encoder, task, text_a, text_b, batch_size=8)
        assert logits.shape == (dev.num_rows, spec.num_outputs)
        # the summary's dev metrics are the saved model's, recomputed with sklearn/scipy (tests/recompute.py)
        assert summary[task]["dev"][task] == pytest.approx(task_metrics(task, logits, labels), abs=1e-5)
        joint_logits = predict(joint, encoder, task, text_a, text_b, batch_size=8)
        assert summary["multitask"]["dev"][task] == pytest.approx(task_metrics(task, joint_logits, labels), abs=1e-5)
        # fine_tuned says which model was saved: the joint one (its weights, this task's head) or a retrained one
        same = all(torch.equal(value, joint_state[name]) for name, value in tuned.state_dict().items())
        assert summary[task]["fine_tuned"] is not same, task
        primary = spec.primary_metric
        assert summary[task]["dev"][task][primary] >= summary["multitask"]["dev"][task][primary]
        assert json.loads((tuning_logs / task / "metrics.json").read_text())["best_epoch"] >= 1


def test_run_mkd_without_fine_tuning_writes_only_the_joint_model(mkd_params: Params, tmp_path: Path) -> None:
    from pipeline.stages.mkd import run_mkd

    for task in ("sst2", "stsb"):
        write_task(tmp_path, task, n_originals=30)
    params = mkd_params.model_copy(update={
        "tasks": ["sst2", "stsb"], "mkd": mkd_params.mkd.model_copy(update={"finetune_epochs": 0}),
    })  # fmt: skip
    out = tmp_path / "models" / "bilstm"
    run_mkd("bilstm", params, tmp_path / "logits", tmp_path / "prepared", tmp_path / "unused", out,
            tmp_path / "logs", tmp_path / "finetune")  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["multitask"]


def test_fine_tuning_is_kept_only_where_the_task_score_improves(mkd_params, tmp_path, monkeypatch) -> None:
    """Dev metrics scripted per phase: MRPC's fine-tuning raises F1 (the primary metric) but lowers the F1/accuracy
    mean that ``compare`` ranks by, so the joint model is kept; SST-2's raises accuracy and is kept. A stage that
    kept the worse model (by F1 alone) fails here."""
    from pipeline.stages.mkd import run_mkd
    from pipeline.training import fit as fit_module

    joint = {"sst2": {"accuracy": 0.80}, "mrpc": {"f1": 0.80, "accuracy": 0.75}}
    tuned = {"sst2": {"accuracy": 0.90}, "mrpc": {"f1": 0.81, "accuracy": 0.70}}

    def evaluate(model, data, accelerator):  # noqa: ANN001, ANN202
        return {task: (joint if len(data) > 1 else tuned)[task] for task in data}

    monkeypatch.setattr(fit_module, "_evaluate", evaluate)
    for task in joint:
        write_task(tmp_path, task, n_originals=30)
    params = mkd_params.model_copy(update={"tasks": list(joint)})
    out = tmp_path / "models" / "bilstm"
    summary = run_mkd("bilstm", params, tmp_path / "logits", tmp_path / "prepared", tmp_path / "unused", out,
                      tmp_path / "logs", tmp_path / "finetune")  # fmt: skip
    assert summary["sst2"]["fine_tuned"] and summary["sst2"]["dev"]["sst2"] == tuned["sst2"]
    assert not summary["mrpc"]["fine_tuned"] and summary["mrpc"]["dev"]["mrpc"] == joint["mrpc"]
    joint_state = load_student(out / "multitask")[0].state_dict()
    for task, kept_joint in (("mrpc", True), ("sst2", False)):
        state = load_student(out / task)[0].state_dict()
        same = all(torch.equal(value, joint_state[name]) for name, value in state.items())
        assert same == kept_joint, task


def test_a_joint_steps_budget_leaves_fine_tuning_at_finetune_epochs(mkd_params, tmp_path) -> None:
    """With a ``steps`` budget on the joint phase (3 epochs of 8 steps here), each task is still fine-tuned for
    ``mkd.finetune_epochs`` (1) epoch, not for the epochs the budget would give its smaller data."""
    from pipeline.stages.mkd import run_mkd

    for task in ("sst2", "stsb"):
        write_task(tmp_path, task, n_originals=30)
    training = mkd_params.mkd.training.bilstm.model_copy(update={"epochs": None, "steps": 24, "patience": 5})
    params = mkd_params.model_copy(update={
        "tasks": ["sst2", "stsb"],
        "mkd": mkd_params.mkd.model_copy(update={
            "training": mkd_params.mkd.training.model_copy(update={"bilstm": training})
        }),
    })  # fmt: skip
    summary = run_mkd("bilstm", params, tmp_path / "logits", tmp_path / "prepared", tmp_path / "unused",
                      tmp_path / "models", tmp_path / "logs", tmp_path / "finetune")  # fmt: skip
    assert summary["multitask"]["epochs_run"] == 3  # 8 steps an epoch
    assert summary["multitask"]["length"] == (
        "up to 3 epochs (mkd.training.bilstm.steps 24 at 8 steps an epoch), early stopping patience 5"
    )
    assert summary["sst2"]["length"] == "up to 1 epoch (mkd.finetune_epochs), early stopping patience 5"
    assert [summary[task]["epochs_run"] for task in ("sst2", "stsb")] == [1, 1]  # the budget would give 6 each


def test_joint_training_logs_each_tasks_loss(mkd_params, tmp_path) -> None:
    from pipeline.stages.mkd import run_mkd

    for task in ("sst2", "stsb"):
        write_task(tmp_path, task, n_originals=30)
    params = mkd_params.model_copy(update={
        "tasks": ["sst2", "stsb"], "mkd": mkd_params.mkd.model_copy(update={"finetune_epochs": 0}),
    })  # fmt: skip
    logs = tmp_path / "logs"
    run_mkd("bilstm", params, tmp_path / "logits", tmp_path / "prepared", tmp_path / "unused",
            tmp_path / "models", logs, tmp_path / "finetune")  # fmt: skip
    curves = {}
    for name in ("train/loss", "train/sst2/loss", "train/stsb/loss"):
        rows = (logs / "plots" / "metrics" / f"{name}.tsv").read_text().split("\n")[1:]
        curves[name] = [float(row.split("\t")[-1]) for row in rows if row]
    assert all(len(curve) == 3 for curve in curves.values())
    # the overall loss is the row-weighted mean of the tasks' (equal rows here): between the two, and their mean
    for epoch in range(3):
        sst2, stsb = curves["train/sst2/loss"][epoch], curves["train/stsb/loss"][epoch]
        assert curves["train/loss"][epoch] == pytest.approx((sst2 + stsb) / 2, rel=1e-4)
        assert sst2 != stsb

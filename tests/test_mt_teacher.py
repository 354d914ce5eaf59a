"""Multi-task teacher: one shared encoder, one head per task, every batch from one task; each task's folder is a
complete teacher that load_teacher and run_score use unchanged."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from pipeline import paths
from pipeline.data.io import write_parquet
from pipeline.data.schema import transfer_schema
from pipeline.data.shards import load_shards, logits_matrix
from pipeline.data.tasks import get_task
from pipeline.params import MtTeacherParams, load_params
from pipeline.serving.teacher import load_teacher
from pipeline.stages.prepare import run_prepare
from pipeline.stages.score import run_score
from pipeline.stages.teacher import fine_tune
from pipeline.training.accelerator import TRACE_ROWS_ENV
from tests.conftest import REPO_ROOT
from tests.glue_fixtures import write_glue
from tests.recompute import Rows, teacher_outputs

TASKS = [get_task(name) for name in ("sst2", "qqp", "stsb")]


def transfer_from_prepared(task, prepared: Path) -> pa.Table:
    """The prepared train split as a transfer set of originals only (the augment stage's schema)."""
    train = pq.read_table(paths.prepared_split(task.name, "train", prepared))
    n = train.num_rows
    columns = {
        "id": np.arange(n), "source_id": train.column("id"), "is_original": np.ones(n, dtype=bool),
        "is_unlabelled": np.zeros(n, dtype=bool),
        "text_a": train.column("text_a"), "text_b": train.column("text_b"), "label": train.column("label"),
        "ops": [[] for _ in range(n)],
    }  # fmt: skip
    return pa.table(columns, schema=transfer_schema(task))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("mt-teacher")
    glue = write_glue(root / "glue", [task.name for task in TASKS], n_train=40, n_dev=16)
    params = load_params(REPO_ROOT / "params.yaml")
    params = params.model_copy(update={
        "data": params.data.model_copy(update={"glue_dir": glue}),
        "teacher": params.teacher.model_copy(update={
            "checkpoint": str(tiny_bert_dir), "epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "max_length": 32,
        }),
        "score": params.score.model_copy(update={"batch_size": 16, "shard_rows": 25, "max_length": 32}),
    })  # fmt: skip
    for task in TASKS:
        run_prepare(task.name, params, root / "prepared")
    out_dirs = {task.name: paths.mt_teacher_dir(task.name, root / "mt_teacher") for task in TASKS}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TRACE_ROWS_ENV, str(root / "trace"))
        metrics = fine_tune(TASKS, params, root / "prepared", out_dirs, root / "dvclive", MtTeacherParams())
    return root, params, out_dirs, metrics


def test_every_batch_is_one_task_and_each_epoch_sees_every_row_once(trained):
    root, *_ = trained
    records = [json.loads(line) for line in (root / "trace" / "process-0.jsonl").read_text().splitlines()]
    seen: dict[tuple[int, str], list[int]] = defaultdict(list)
    for record in records:
        assert record["task"] in {task.name for task in TASKS}  # one task name per batch record
        assert 1 <= len(record["rows"]) <= 8
        seen[record["epoch"], record["task"]] += record["rows"]
    assert {key for key in seen} == {(epoch, task.name) for epoch in (1, 2) for task in TASKS}
    for rows in seen.values():
        assert sorted(rows) == list(range(40))
    order = [record["task"] for record in records if record["epoch"] == 1]
    assert any(a != b for a, b in zip(order, order[1:], strict=False)), "tasks' batches should be interleaved"


def test_dvclive_logs_each_task_metrics(trained):
    root, _, _, metrics = trained
    summary = json.loads((root / "dvclive" / "metrics.json").read_text())
    primary = {"sst2": "accuracy", "qqp": "f1", "stsb": "pearson"}
    assert summary["dev"] == {task: metrics[task][metric] for task, metric in primary.items()}  # headline only
    assert set(metrics["stsb"]) == {"pearson", "spearman"} and set(metrics["qqp"]) == {"f1", "accuracy"}
    curves = root / "dvclive" / "plots" / "metrics"
    assert (curves / "dev" / "qqp" / "f1.tsv").is_file() and (curves / "dev" / "stsb" / "spearman.tsv").is_file()
    assert all((curves / "train" / task / "loss.tsv").is_file() for task in primary)


def test_task_folders_share_one_encoder_and_load_as_teachers(trained):
    _, _, out_dirs, _ = trained
    weights = {name: load_file(folder / "model.safetensors") for name, folder in out_dirs.items()}
    encoder_keys = [key for key in weights["sst2"] if not key.startswith("classifier.")]
    assert encoder_keys and all(key.startswith("bert.") for key in encoder_keys)
    for name in ("qqp", "stsb"):
        assert sorted(key for key in weights[name] if not key.startswith("classifier.")) == sorted(encoder_keys)
        for key in encoder_keys:
            assert weights[name][key].equal(weights["sst2"][key]), key
    assert weights["stsb"]["classifier.weight"].shape[0] == 1 and weights["qqp"]["classifier.weight"].shape[0] == 2
    assert not weights["sst2"]["classifier.weight"].equal(weights["qqp"]["classifier.weight"])
    for task in TASKS:
        model, _ = load_teacher(out_dirs[task.name])
        assert model.config.num_labels == task.num_outputs
        assert model.config.problem_type == ("regression" if task.is_regression else "single_label_classification")


def test_each_task_head_scores_its_transfer_set(trained):
    root, params, out_dirs, _ = trained
    for task in TASKS:
        transfer = root / "augmented" / f"{task.name}.parquet"
        write_parquet(transfer_from_prepared(task, root / "prepared"), transfer)
        shard_dir = paths.shard_dir(task.name, "multitask", root / "logits")
        manifest = run_score(task, params, transfer, out_dirs[task.name], shard_dir)
        assert manifest["num_rows"] == 40 and len(manifest["shards"]) == 2
        table = load_shards(shard_dir)
        # the task's own folder (its head on the shared encoder) as plain transformers runs it, row for row
        text_b = table.column("text_b").to_pylist() if task.is_pair else None
        rows = Rows(task.name, table.column("text_a").to_pylist(), text_b, np.zeros(40), ("accuracy",))
        expected = teacher_outputs(out_dirs[task.name], rows, params.score.max_length)
        assert expected.shape == (40, task.num_outputs)
        np.testing.assert_allclose(logits_matrix(table), expected, atol=1e-5)

"""Data-parallel students on two CPU processes (gloo DDP via torchrun): every process reads all rows, draws the same
batches and trains on a disjoint share of each; the one model the main process saves equals a one-process run's.

The runs use plain SGD (``tests/sgd_launch.py``), whose update is the gradient itself, so a wrong loss weight
between the processes' shares shows in the weights. Row and batch counts leave uneven shares and a one-row batch
(one process gets an empty share). One run uses the configured optimisers (Adam, with lazy Adam on the embedding
table), whose update of rows outside a batch tells a sparse optimiser from a dense one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from pipeline import paths
from pipeline.data.schema import shard_schema
from pipeline.data.tasks import get_task
from pipeline.params import Params
from pipeline.stages.score import write_manifest
from pipeline.training.accelerator import TRACE_ROWS_ENV
from tests.conftest import REPO_ROOT
from tests.test_mkd import write_task
from tests.test_student import sentiment_rows, teacher_dir, write_prepared  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e

LAUNCHER = REPO_ROOT / "tests" / "sgd_launch.py"
TOLERANCE = 1e-4  # max abs weight difference between the 1- and the 2-process model
N_SHARD_ROWS = 145  # in 3 shard files; with batch_size 9: 16 batches of 9 rows (shares 5 + 4) and one of 1 row
BATCH_SIZE = 9
SMALL_BILSTM = {"hidden_size": 8, "fc_hidden": 8, "max_length": 16, "dropout": 0.0}


def launch(project: Path, processes: int, *args: str, sgd: bool = True) -> subprocess.CompletedProcess:
    """``python -m pipeline *args`` in ``processes`` processes (torchrun for more than one), with SGD unless ``sgd``
    is False."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", TRACE_ROWS_ENV: str(project / "trace")}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    entry = [str(LAUNCHER)] if sgd else ["-m", "pipeline"]
    command = [*(torchrun if processes > 1 else [sys.executable]), *entry, *args]
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command} failed:\n{result.stderr[-5000:]}"
    assert f"{processes} process(es) on cpu" in result.stderr
    return result


def both_runs(make_project, tmp_path: Path, *args: str, sgd: bool = True) -> tuple[Path, Path]:
    """The same project trained in one process and in two; returns (one, two)."""
    one, two = make_project(tmp_path / "one"), make_project(tmp_path / "two")
    launch(one, 1, *args, sgd=sgd)
    launch(two, 2, *args, sgd=sgd)
    return one, two


def max_difference(first: Path, second: Path) -> float:
    """Largest absolute difference between the weights of two saved students (``model.pt``)."""
    a, b = torch.load(first / "model.pt"), torch.load(second / "model.pt")
    assert a.keys() == b.keys()
    return max((a[name].float() - b[name].float()).abs().max().item() for name in a)


def read_traces(project: Path) -> list[list[dict]]:
    return [
        [json.loads(line) for line in (project / "trace" / f"process-{index}.jsonl").read_text().splitlines()]
        for index in range(2)
    ]


def assert_disjoint_shares(project: Path, rows: int, epochs: int) -> None:
    """Both processes trained on the same batches, each on its own share; together every row once per epoch."""
    first, second = read_traces(project)
    assert len(first) == len(second) > 0
    seen: dict[int, list[int]] = defaultdict(list)
    for a, b in zip(first, second, strict=True):
        assert (a["epoch"], a["task"]) == (b["epoch"], b["task"])
        assert not set(a["rows"]) & set(b["rows"])
        assert len(a["rows"]) - len(b["rows"]) in (0, 1)
        seen[a["epoch"]] += a["rows"] + b["rows"]
    assert {epoch: sorted(values) for epoch, values in seen.items()} == {
        e: list(range(rows)) for e in range(1, epochs + 1)
    }
    assert any(not record["rows"] for record in second), "the one-row batch should leave process 1 an empty share"


def write_shards_in_three_files(shard_dir: Path) -> None:
    """SST-2 logit shards: originals and masked copies (label null), ``N_SHARD_ROWS`` rows in 3 uneven files."""
    rows = []
    for row in sentiment_rows(N_SHARD_ROWS, seed=1):
        logits = [-2.0, 2.0] if row["label"] else [2.0, -2.0]
        synthetic = row["id"] % 3 == 2
        rows.append({
            "id": row["id"], "source_id": row["id"] // 2, "is_original": not synthetic, "is_unlabelled": False,
            "text_a": f"[MASK] {row['text_a']}" if synthetic else row["text_a"], "text_b": None,
            "label": None if synthetic else row["label"], "ops": ["mask"] if synthetic else [], "logits": logits,
        })  # fmt: skip
    table = pa.Table.from_pylist(rows, schema=shard_schema(get_task("sst2")))
    shard_dir.mkdir(parents=True)
    for index, (start, stop) in enumerate([(0, 50), (50, 101), (101, N_SHARD_ROWS)]):
        pq.write_table(table.slice(start, stop - start), shard_dir / f"part-{index:05d}.parquet")
    write_manifest(get_task("sst2"), shard_dir, {}, Params())


def write_params(project: Path, **sections: object) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump({"tasks": ["sst2"], "threads": 1, **sections}))


def test_two_process_student_equals_one_process(tmp_path: Path, teacher_dir: Path) -> None:  # noqa: F811
    def make_project(project: Path) -> Path:
        write_shards_in_three_files(paths.shard_dir("sst2", "single", project / paths.LOGITS_DIR))
        write_prepared(project / paths.PREPARED_DIR, "sst2", "dev", sentiment_rows(30, seed=2))
        shutil.copytree(teacher_dir, project / paths.teacher_dir("sst2"))
        student = {"epochs": 2, "batch_size": BATCH_SIZE, "learning_rate": 0.5, "mixed_precision": "fp32"}
        write_params(project, bilstm=SMALL_BILSTM, student=student)
        return project

    one, two = both_runs(make_project, tmp_path, "student", "--task", "sst2")
    assert_disjoint_shares(two, N_SHARD_ROWS, epochs=2)
    assert (two / paths.training_log_dir("student", "sst2") / "metrics.json").is_file()
    difference = max_difference(one / paths.student_dir("sst2"), two / paths.student_dir("sst2"))
    assert difference < TOLERANCE, difference


def test_two_process_adam_student_equals_one_process(tmp_path: Path, teacher_dir: Path) -> None:  # noqa: F811
    """Adam on the dense weights, lazy Adam (``SparseAdam``) on the WordPiece table in both runs: dense Adam on the
    table would keep moving rows that left the batch (by their moments), which one process never does."""

    def make_project(project: Path) -> Path:
        write_shards_in_three_files(paths.shard_dir("sst2", "single", project / paths.LOGITS_DIR))
        write_prepared(project / paths.PREPARED_DIR, "sst2", "dev", sentiment_rows(30, seed=2))
        shutil.copytree(teacher_dir, project / paths.teacher_dir("sst2"))
        student = {"epochs": 2, "batch_size": BATCH_SIZE, "optimizer": "adam", "learning_rate": 0.01,
                   "mixed_precision": "fp32"}  # fmt: skip
        write_params(project, bilstm=SMALL_BILSTM, student=student)
        return project

    one, two = both_runs(make_project, tmp_path, "student", "--task", "sst2", sgd=False)
    first, second = (torch.load(root / paths.student_dir("sst2") / "model.pt") for root in (one, two))
    assert not torch.equal(first["embedding.weight"], first["frozen_embedding.weight"])  # the table trained
    difference = max_difference(one / paths.student_dir("sst2"), two / paths.student_dir("sst2"))
    assert difference < TOLERANCE, difference


def test_two_process_baseline_saves_one_model_like_one_process(tmp_path: Path, teacher_dir: Path) -> None:  # noqa: F811
    n_train = 73  # with batch_size 9: shares 5 + 4 and a last batch of one row

    def make_project(project: Path) -> Path:
        write_prepared(project / paths.PREPARED_DIR, "sst2", "train", sentiment_rows(n_train, seed=3))
        write_prepared(project / paths.PREPARED_DIR, "sst2", "dev", sentiment_rows(30, seed=2))
        shutil.copytree(teacher_dir, project / paths.teacher_dir("sst2"))
        # A word vocabulary: built from all training rows, the same in every process.
        bilstm = {**SMALL_BILSTM, "embeddings": "word", "embedding_dim": 8, "multichannel": False}
        baseline = {"epochs": 2, "batch_size": BATCH_SIZE, "learning_rate": 0.5, "mixed_precision": "fp32"}
        write_params(project, bilstm=bilstm, baseline=baseline)
        return project

    one, two = both_runs(make_project, tmp_path, "baseline", "--task", "sst2")
    assert_disjoint_shares(two, n_train, epochs=2)
    assert sorted(path.name for path in (two / paths.BASELINE_DIR).iterdir()) == ["sst2"]
    assert not list((two / paths.BASELINE_DIR).glob(".*"))  # no second process's leftovers
    difference = max_difference(one / paths.baseline_dir("sst2"), two / paths.baseline_dir("sst2"))
    assert difference < TOLERANCE, difference


def test_two_process_mkd_equals_one_process(tmp_path: Path, teacher_dir: Path) -> None:  # noqa: F811
    tasks = ["sst2", "stsb"]

    def make_project(project: Path) -> Path:
        for task in tasks:  # 60 transfer rows each; batch_size 7: shares 4 + 3, last batches of 4 rows
            write_task(project / "data", task, n_originals=30)
        training = {"epochs": 2, "batch_size": 7, "batch_size_pair": 7, "learning_rate": 0.2, "mixed_precision": "fp32"}
        mkd = {"teacher": "single", "init_from": "checkpoint", "finetune_epochs": 1, "training": {"bilstm": training}}
        write_params(project, tasks=tasks, teacher={"checkpoint": str(teacher_dir)}, bilstm=SMALL_BILSTM, mkd=mkd)
        return project

    one, two = both_runs(make_project, tmp_path, "mkd", "--student", "bilstm")
    for name in [paths.MKD_JOINT, *tasks]:
        first, second = one / paths.mkd_dir("bilstm") / name, two / paths.mkd_dir("bilstm") / name
        fine_tuned = [
            json.loads((model / "config.json").read_text())["training"].get("fine_tuned") for model in (first, second)
        ]
        assert fine_tuned[0] == fine_tuned[1], name
        difference = max_difference(first, second)
        assert difference < TOLERANCE, (name, difference)

"""Data-parallel student training: two CPU processes (gloo DDP via torchrun) each read only their part of the logit
shards, take the same number of steps, and the main process saves a student that loads and predicts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

from pipeline import paths
from pipeline.data.shards import shard_part
from pipeline.students.architectures import load_student
from pipeline.students.inference import predict
from pipeline.training.distributed import Processes
from tests.conftest import REPO_ROOT
from tests.test_student import (  # noqa: F401 (fixture)
    sentiment_rows,
    teacher_dir,
    write_prepared,
    write_sst2_shards,
)

READS = re.compile(r"process (\d) of 2 reads (\S+)")


def test_shard_part_splits_files_or_rows() -> None:
    files = [f"part-{i}.parquet" for i in range(5)]
    parts = [shard_part(files, Processes(i, 2, None)) for i in range(2)]  # type: ignore[arg-type]
    assert parts == [(files[0::2], slice(None)), (files[1::2], slice(None))]
    assert shard_part(files[:1], Processes(1, 2, None)) == (files[:1], slice(1, None, 2))  # type: ignore[arg-type]


def test_two_processes_train_on_disjoint_shards(tmp_path: Path, teacher_dir: Path) -> None:  # noqa: F811
    project = tmp_path / "project"
    write_sst2_shards(paths.shard_dir("sst2", "single", project / paths.LOGITS_DIR), n_original=60)
    write_prepared(project / paths.PREPARED_DIR, "sst2", "dev", sentiment_rows(30, seed=2))
    shutil.copytree(teacher_dir, project / paths.teacher_dir("sst2"))
    student = {"epochs": 2, "batch_size": 8, "optimizer": "adam", "learning_rate": 0.01}
    (project / "params.yaml").write_text(yaml.safe_dump({
        "tasks": ["sst2"], "bilstm": {"hidden_size": 8, "fc_hidden": 8, "max_length": 16}, "student": student,
    }))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "pipeline", "student", "--task", "sst2"]  # fmt: skip
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    reads = dict(READS.findall(result.stderr))
    assert reads == {"0": "part-00000.parquet", "1": "part-00001.parquet"}  # each process read only its own shard
    model, encoder = load_student(project / paths.student_dir("sst2"))
    assert (project / "dvclive" / "student" / "sst2" / "metrics.json").is_file()
    dev = pq.read_table(project / paths.prepared_split("sst2", "dev"))
    logits = predict(model, encoder, "sst2", dev.column("text_a").to_pylist(), None, batch_size=8)
    assert logits.shape == (30, 2) and np.isfinite(logits).all()
    accuracy = float((logits.argmax(axis=1) == dev.column("label").to_numpy()).mean())
    assert accuracy >= 0.8, accuracy  # the toy sentiment task is learnt from both halves together

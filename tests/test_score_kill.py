"""A score run killed with SIGKILL mid-run, then rerun, ends byte-identical to an uninterrupted run."""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import paths
from pipeline.data.io import write_parquet
from pipeline.data.shards import MANIFEST_NAME, SHARD_GLOB, load_shards
from pipeline.data.tasks import get_task
from tests.conftest import REPO_ROOT, tiny_params
from tests.test_score import save_tiny_teacher, transfer_table

pytestmark = pytest.mark.e2e  # python -m pipeline score in subprocesses, one of them killed

SST2 = get_task("sst2")
ROWS, SHARD_ROWS = 5000, 100  # 50 shards; batch size 1 keeps the tiny teacher busy for seconds, long enough to kill
SHARDS = ROWS // SHARD_ROWS
SCORE = [sys.executable, "-m", "pipeline", "score", "--task", "sst2"]
RESUMING = re.compile(r"resuming: (\d+) of (\d+) shards already complete")
START_TIMEOUT_S = 120


def make_project(root: Path, teacher: Path, transfer: Path) -> Path:
    """A project folder laid out as the score stage expects: params.yaml, transfer set, fine-tuned teacher."""
    params = tiny_params(root / "glue", teacher, score={"shard_rows": SHARD_ROWS, "batch_size": 1})
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(teacher, root / paths.teacher_dir("sst2"))
    (root / paths.AUGMENTED_DIR).mkdir(parents=True)
    shutil.copy(transfer, root / paths.transfer_set("sst2"))
    return root


def score_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_killed_run_resumes_to_identical_shards(tmp_path, tiny_bert_dir):
    teacher = save_tiny_teacher(tiny_bert_dir, tmp_path / "teacher")
    write_parquet(transfer_table(SST2, ROWS), tmp_path / "transfer.parquet")
    reference = make_project(tmp_path / "reference", teacher, tmp_path / "transfer.parquet")
    killed = make_project(tmp_path / "killed", teacher, tmp_path / "transfer.parquet")
    subprocess.run(SCORE, cwd=reference, env=score_env(), check=True, capture_output=True)

    out = killed / paths.shard_dir("sst2")
    with open(tmp_path / "killed.log", "wb") as log:
        process = subprocess.Popen(SCORE, cwd=killed, env=score_env(), stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not list(out.glob(SHARD_GLOB)):
            assert process.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline, "no shard written in time"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
    written = sorted(out.glob(SHARD_GLOB))
    assert not (out / MANIFEST_NAME).exists()
    assert 0 < len(written) < SHARDS, "the kill must land mid-run"
    assert all(pq.read_metadata(path).num_rows == SHARD_ROWS for path in written)  # no partial final-named file

    rerun = subprocess.run(SCORE, cwd=killed, env=score_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert RESUMING.search(rerun.stderr).groups() == (str(len(written)), str(SHARDS))

    expected = reference / paths.shard_dir("sst2")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in expected.iterdir())  # no stale temporaries
    assert len(list(out.glob(SHARD_GLOB))) == SHARDS
    for path in expected.iterdir():
        assert sha256(out / path.name) == sha256(path), path.name
    ids = load_shards(out, columns=["id"]).column("id").to_numpy()
    np.testing.assert_array_equal(np.sort(ids), np.arange(ROWS))
    assert len(np.unique(ids)) == ROWS

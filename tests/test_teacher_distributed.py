"""Two CPU processes (gloo DDP via torchrun): every process builds the same batches and trains on a disjoint share
of each; the result equals a single-process run of the same seed, and the saved teachers load and score.

Both runs use plain SGD without gradient clipping (``tests/sgd_launch.py``): AdamW's update hardly changes with the
scale of the loss, and clipping rescales the gradients, so either would hide a wrong data-parallel loss weight.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from transformers import BertConfig

from pipeline import paths
from pipeline.data.schema import table_texts
from pipeline.data.tasks import get_task
from pipeline.params import load_params
from pipeline.serving.teacher import load_teacher, predict_logits
from pipeline.stages import teacher
from pipeline.stages.prepare import run_prepare
from pipeline.stages.teacher import fine_tune
from pipeline.training import finetune
from pipeline.training.accelerator import TRACE_ROWS_ENV
from tests.conftest import REPO_ROOT, build_tiny_bert, tiny_params
from tests.glue_fixtures import write_glue
from tests.sgd_launch import teacher_sgd

N_TRAIN = 41  # with batch_size 4: ten full batches and one of a single row (one process gets an empty share)
PROCESSES = 2
LAUNCHER = REPO_ROOT / "tests" / "sgd_launch.py"  # python -m pipeline with SGD and no gradient clipping


@pytest.fixture(scope="module")
def no_dropout_bert(tmp_path_factory) -> Path:
    """The tiny BERT without dropout, so a 2-process run and a 1-process run can be compared number for number."""
    folder = build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-no-dropout"))
    config = BertConfig.from_pretrained(folder)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    config.save_pretrained(folder)
    return folder


def make_project(root: Path, checkpoint: Path, tasks: list[str]) -> Path:
    glue = write_glue(root / "glue", tasks, n_train=N_TRAIN, n_dev=12)
    params = tiny_params(glue, checkpoint, teacher={"batch_size": 4, "learning_rate": 0.05, "mixed_precision": "fp32"})
    params["tasks"] = tasks
    project = root / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    loaded = load_params(project / "params.yaml")
    for name in tasks:
        run_prepare(name, loaded, project / paths.PREPARED_DIR)
    return project


def torchrun(project: Path, *command: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", TRACE_ROWS_ENV: str(project / "trace"),
    }  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={PROCESSES}",
           str(LAUNCHER), *command]  # fmt: skip
    result = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr[-5000:]}"
    return result


def read_trace(project: Path) -> dict[int, list[dict]]:
    return {
        index: [json.loads(line) for line in (project / "trace" / f"process-{index}.jsonl").read_text().splitlines()]
        for index in range(PROCESSES)
    }


RUNS = {  # command, its tasks, where it saves each task's model, where it logs
    "teacher": (["teacher", "--task", "sst2"], ["sst2"], paths.teacher_dir, paths.training_log_dir("teacher", "sst2")),
    "mt-teacher": (["mt-teacher"], ["sst2", "stsb"], paths.mt_teacher_dir, paths.training_log_dir("mt_teacher")),
}


@pytest.mark.e2e
@pytest.mark.parametrize("run", list(RUNS))
def test_two_process_run_shares_batches_and_matches_one_process(tmp_path, no_dropout_bert, run, monkeypatch):
    command, tasks, model_dir, log_dir = RUNS[run]
    project = make_project(tmp_path, no_dropout_bert, tasks)
    result = torchrun(project, *command)
    assert f"{PROCESSES} process(es) on cpu" in result.stderr

    # Same global batches on both processes, each process a disjoint share; together every row once per epoch.
    traces = read_trace(project)
    assert len(traces[0]) == len(traces[1]) > 0
    seen: dict[tuple[int, str], list[int]] = defaultdict(list)
    for first, second in zip(traces[0], traces[1], strict=True):
        assert (first["epoch"], first["task"]) == (second["epoch"], second["task"])
        assert not set(first["rows"]) & set(second["rows"])
        seen[first["epoch"], first["task"]] += first["rows"] + second["rows"]
    assert set(seen) == {(epoch, task) for epoch in (1, 2) for task in tasks}
    assert all(sorted(rows) == list(range(N_TRAIN)) for rows in seen.values())
    assert any(not record["rows"] for record in traces[1]), "the one-row batch should leave process 1 empty-handed"
    assert all(record["rows"] for record in traces[0])

    # Only the main process logged; the saved teachers load, score, and equal a one-process run of the same seed.
    assert json.loads((project / log_dir / "metrics.json").read_text())["step"] == 1
    params = load_params(project / "params.yaml")
    single_dirs = {name: tmp_path / "single" / name for name in tasks}
    monkeypatch.setattr(teacher, "build_optimizer", teacher_sgd)
    monkeypatch.setattr(finetune, "MAX_GRAD_NORM", math.inf)
    fine_tune([get_task(name) for name in tasks], params, project / paths.PREPARED_DIR, single_dirs, tmp_path / "log",
              params.mt_teacher)  # fmt: skip
    for name in tasks:
        task = get_task(name)
        dev = pq.read_table(paths.prepared_split(name, "dev", project / paths.PREPARED_DIR))
        text_a, text_b = table_texts(task, dev)
        distributed = predict_logits(*load_teacher(project / model_dir(name)), text_a, text_b, 16, 32, "fp32")
        single = predict_logits(*load_teacher(single_dirs[name]), text_a, text_b, 16, 32, "fp32")
        assert distributed.shape == (12, task.num_outputs) and np.isfinite(distributed).all()
        np.testing.assert_allclose(distributed, single, atol=1e-4)

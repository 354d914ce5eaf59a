"""Training stages resume: ``python -m pipeline student`` / ``teacher`` SIGKILLed after an epoch checkpoint and run
again end with the same weights (``torch.equal`` per tensor) and the same DVCLive log as an uninterrupted run, and
leave no checkpoint behind; checkpoints of other params or inputs, and unfinished epochs, are never resumed."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline import paths
from pipeline.params import load_params
from pipeline.stages.prepare import run_prepare
from pipeline.training.accelerator import accelerated
from pipeline.training.checkpoint import CheckpointPlan, Checkpoints, Progress, fingerprint
from tests.conftest import REPO_ROOT, tiny_params, write_sst2
from tests.test_mkd import write_task
from tests.test_student import sentiment_rows, teacher_dir, write_prepared, write_sst2_shards  # noqa: F401 (fixture)

KILL_TIMEOUT_S = 300


def pipeline_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def run_pipeline(project: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipeline", *args]
    result = subprocess.run(command, cwd=project, env=pipeline_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command} failed:\n{result.stderr[-5000:]}"
    return result


def complete_epochs(checkpoint_folder: Path) -> list[int]:
    return sorted(int(path.name.split("-")[1]) for path in checkpoint_folder.glob("epoch-*") if path.suffix != ".tmp")


def run_and_kill(project: Path, checkpoint_folder: Path, *args: str) -> int:
    """Run ``python -m pipeline *args`` and SIGKILL it as soon as its first epoch checkpoint is complete; return the
    latest complete epoch it left."""
    log_path = project / "killed-run.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=project, env=pipeline_env(),
                                   stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
        deadline = time.monotonic() + KILL_TIMEOUT_S
        try:
            while not complete_epochs(checkpoint_folder):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"no epoch checkpoint before the run ended or timed out:\n{log_path.read_text()[-3000:]}"
                    )
                time.sleep(0.005)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL, f"the run ended before the kill:\n{log_path.read_text()[-3000:]}"
    return complete_epochs(checkpoint_folder)[-1]


def log_files(log_dir: Path) -> dict[str, str]:
    """Every file of a DVCLive folder, by relative path."""
    return {str(path.relative_to(log_dir)): path.read_text() for path in sorted(log_dir.rglob("*")) if path.is_file()}


def assert_same_tensors(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


@dataclass(frozen=True)
class Stage:
    args: tuple[str, ...]
    checkpoints: Path  # the run's checkpoint folder: the kill comes once it holds an epoch
    log_dir: Path
    run: str  # the run's name in its log lines ("student sst2: resumed after epoch 1", "student sst2 epoch 2: ...")


def check_resume(make_project, stage: Stage, tmp_path: Path) -> tuple[Path, Path]:
    """An uninterrupted run and a killed-then-resumed one; returns their project folders after checking that the
    resumed run resumed from the epoch the kill left (before the last), logged every epoch once (the same log) and
    removed its checkpoints."""
    whole, resumed = make_project(tmp_path / "whole"), make_project(tmp_path / "resumed")
    whole_log = run_pipeline(whole, *stage.args).stderr
    killed_at = run_and_kill(resumed, resumed / stage.checkpoints, *stage.args)
    log = run_pipeline(resumed, *stage.args).stderr
    assert f"{stage.run}: resumed after epoch {killed_at}\n" in log and "resumed after" not in whole_log
    trained = [int(epoch) for epoch in re.findall(rf"^.*{stage.run} epoch (\d+): ", log, re.MULTILINE)]
    assert trained[0] == killed_at + 1, log[-3000:]  # the epochs before the checkpoint's are not trained again
    assert killed_at < max(trained) == max(map(int, re.findall(rf"{stage.run} epoch (\d+): ", whole_log)))
    assert not (resumed / paths.CHECKPOINT_DIR).exists() and not (whole / paths.CHECKPOINT_DIR).exists()
    assert log_files(resumed / stage.log_dir) == log_files(whole / stage.log_dir)  # no epoch logged twice
    return whole, resumed


@pytest.mark.e2e
def test_killed_student_resumes_to_the_same_model(tmp_path: Path, teacher_dir: Path) -> None:  # noqa: F811
    def make_project(project: Path) -> Path:
        write_sst2_shards(paths.shard_dir("sst2", "single", project / paths.LOGITS_DIR), n_original=100)
        write_prepared(project / paths.PREPARED_DIR, "sst2", "dev", sentiment_rows(30, seed=2))
        shutil.copytree(teacher_dir, project / paths.teacher_dir("sst2"))
        (project / "params.yaml").write_text(yaml.safe_dump({
            "tasks": ["sst2"], "threads": 1,
            "bilstm": {"hidden_size": 8, "fc_hidden": 8, "max_length": 16, "dropout": 0.2},  # dropout: RNG matters
            "student": {"epochs": 8, "patience": 8, "batch_size": 16, "mixed_precision": "fp32"},
        }))  # fmt: skip
        return project

    stage = Stage(("student", "--task", "sst2"), paths.checkpoint_dir("student", "sst2"),
                  paths.training_log_dir("student", "sst2"), "student sst2")  # fmt: skip
    whole, resumed = check_resume(make_project, stage, tmp_path)
    model = paths.student_dir("sst2") / "model.pt"
    assert_same_tensors(torch.load(whole / model), torch.load(resumed / model))


@pytest.mark.e2e
def test_killed_teacher_resumes_to_the_same_model(tmp_path: Path, tiny_bert_dir: Path) -> None:
    def make_project(project: Path) -> Path:
        glue = write_sst2(project / "glue")
        params = tiny_params(glue, tiny_bert_dir, teacher={"epochs": 5, "batch_size": 8, "mixed_precision": "fp32"})
        params["threads"] = 1
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        run_prepare("sst2", load_params(project / "params.yaml"), project / paths.PREPARED_DIR)
        return project

    stage = Stage(("teacher", "--task", "sst2"), paths.checkpoint_dir("teacher", "sst2"),
                  paths.training_log_dir("teacher", "sst2"), "teacher")  # fmt: skip
    whole, resumed = check_resume(make_project, stage, tmp_path)
    weights = paths.teacher_dir("sst2") / "model.safetensors"
    assert_same_tensors(load_file(whole / weights), load_file(resumed / weights))


# ---------------------------------------------------------------- the checkpoint folder, in-process


@dataclass
class Counter(Progress):
    epoch: int = 0


def saved_run(folder: Path, digest: str, epochs: int) -> None:
    """A run that checkpointed ``epochs`` epochs of a tiny model into ``folder``."""
    with accelerated("fp32", several_tasks=False) as accelerator:
        model = accelerator.prepare(torch.nn.Linear(2, 1))
        counter = Counter()
        accelerator.register_for_checkpointing(counter)
        for epoch in range(1, epochs + 1):
            counter.epoch = epoch
            with torch.no_grad():
                model.weight.add_(1.0)
            Checkpoints(folder, digest).save(accelerator, epoch, None)


def resumed_epoch(folder: Path, digest: str) -> tuple[bool, int, torch.Tensor]:
    with accelerated("fp32", several_tasks=False) as accelerator:
        model = accelerator.prepare(torch.nn.Linear(2, 1))
        counter = Counter()
        accelerator.register_for_checkpointing(counter)
        found = Checkpoints(folder, digest).resume(accelerator, None)
        return found, counter.epoch, model.weight.detach().clone()


def test_only_the_latest_complete_epoch_of_the_same_run_is_resumed(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    torch.manual_seed(0)
    saved_run(folder, "run-a", epochs=3)
    assert sorted(path.name for path in folder.iterdir()) == ["epoch-0003"]  # older epochs deleted
    shutil.copytree(folder / "epoch-0003", folder / "epoch-0004.tmp")  # a save killed halfway
    torch.manual_seed(0)
    found, epoch, weight = resumed_epoch(folder, "run-a")
    assert found and epoch == 3
    assert not (folder / "epoch-0004.tmp").exists()
    torch.manual_seed(0)
    expected = torch.nn.Linear(2, 1).weight.detach()
    for _ in range(3):
        expected = expected + 1.0
    assert torch.equal(weight, expected)  # the weights of epoch 3

    found, epoch, _ = resumed_epoch(folder, "run-b")  # other params or inputs: deleted, not resumed
    assert not found and epoch == 0 and not any(folder.iterdir())


def test_fingerprint_follows_params_inputs_and_processes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.parquet").write_bytes(b"1234")
    params = {"seed": 1, "student": load_params(REPO_ROOT / "params.yaml").student}
    digest = fingerprint(params, [data, tmp_path / "absent"], 1)
    assert digest == fingerprint(params, [data, tmp_path / "absent"], 1)
    assert digest != fingerprint({**params, "seed": 2}, [data, tmp_path / "absent"], 1)
    assert digest != fingerprint(params, [data, tmp_path / "absent"], 2)
    (data / "a.parquet").write_bytes(b"12345")
    assert digest != fingerprint(params, [data, tmp_path / "absent"], 1)
    (data / "a.parquet").write_bytes(b"1235")  # same size, other bytes
    assert digest != fingerprint(params, [data, tmp_path / "absent"], 1)


def test_touching_an_input_keeps_the_checkpoints_changing_it_discards_them(tmp_path: Path) -> None:
    """The fingerprint digests the inputs' content: a new modification time (touch, checkout) resumes; new bytes
    start afresh."""
    data, folder = tmp_path / "data", tmp_path / "checkpoints"
    data.mkdir()
    (data / "train.parquet").write_bytes(b"rows")
    plan = CheckpointPlan(folder, {"seed": 1}, [data])
    with accelerated("fp32", several_tasks=False) as accelerator:
        digest = plan.open(accelerator).fingerprint
    saved_run(folder, digest, epochs=2)
    later = (data / "train.parquet").stat().st_mtime_ns + 10**10
    os.utime(data / "train.parquet", ns=(later, later))
    with accelerated("fp32", several_tasks=False) as accelerator:
        assert plan.open(accelerator).fingerprint == digest
    assert resumed_epoch(folder, digest)[:2] == (True, 2)
    (data / "train.parquet").write_bytes(b"rowz")
    with accelerated("fp32", several_tasks=False) as accelerator:
        changed = plan.open(accelerator).fingerprint
    assert changed != digest
    assert resumed_epoch(folder, changed)[:2] == (False, 0) and not any(folder.iterdir())


# ---------------------------------------------------------------- killed mid-run: MKD and the baseline


@pytest.mark.e2e
def test_killed_baseline_resumes_to_the_same_model(tmp_path: Path, teacher_dir: Path) -> None:  # noqa: F811
    def make_project(project: Path) -> Path:
        write_prepared(project / paths.PREPARED_DIR, "sst2", "train", sentiment_rows(60, seed=3))
        write_prepared(project / paths.PREPARED_DIR, "sst2", "dev", sentiment_rows(20, seed=2))
        shutil.copytree(teacher_dir, project / paths.teacher_dir("sst2"))
        (project / "params.yaml").write_text(yaml.safe_dump({
            "tasks": ["sst2"], "threads": 1,
            "bilstm": {"hidden_size": 8, "fc_hidden": 8, "max_length": 16, "dropout": 0.2},
            "baseline": {"epochs": 8, "patience": 8, "batch_size": 16, "mixed_precision": "fp32"},
        }))  # fmt: skip
        return project

    stage = Stage(("baseline", "--task", "sst2"), paths.checkpoint_dir("baseline", "sst2"),
                  paths.training_log_dir("baseline", "sst2"), "baseline sst2")  # fmt: skip
    whole, resumed = check_resume(make_project, stage, tmp_path)
    model = paths.baseline_dir("sst2") / "model.pt"
    assert_same_tensors(torch.load(whole / model), torch.load(resumed / model))


@pytest.mark.e2e
@pytest.mark.parametrize("phase", [paths.MKD_JOINT, "sst2"])  # killed in joint distillation / sst2's fine-tuning
def test_killed_mkd_resumes_to_the_same_students(tmp_path: Path, teacher_dir: Path, phase: str) -> None:  # noqa: F811
    def make_project(project: Path) -> Path:
        for task in ("sst2", "stsb"):
            write_task(project / "data", task, n_originals=30)
        training = {"epochs": 6, "patience": 6, "batch_size": 16, "batch_size_pair": 16, "optimizer": "adam",
                    "learning_rate": 0.01, "mixed_precision": "fp32"}  # fmt: skip
        (project / "params.yaml").write_text(yaml.safe_dump({
            "tasks": ["sst2", "stsb"], "threads": 1, "teacher": {"checkpoint": str(teacher_dir)},
            "bilstm": {"hidden_size": 8, "fc_hidden": 8, "max_length": 16, "dropout": 0.2},
            "mkd": {"students": ["bilstm"], "teacher": "single", "init_from": "checkpoint", "finetune_epochs": 3,
                    "training": {"bilstm": training}},
        }))  # fmt: skip
        return project

    stage = Stage(("mkd", "--student", "bilstm"), paths.checkpoint_dir("mkd", "bilstm") / phase,
                  paths.training_log_dir("mkd", "bilstm"),
                  "mkd bilstm" if phase == paths.MKD_JOINT else f"mkd bilstm fine-tune {phase}")  # fmt: skip
    whole, resumed = check_resume(make_project, stage, tmp_path)
    finetune_logs = paths.training_log_dir("mkd_finetune", "bilstm")
    assert log_files(resumed / finetune_logs) == log_files(whole / finetune_logs)
    first, second = (student_weights(root / paths.mkd_dir("bilstm")) for root in (whole, resumed))
    assert list(first) == ["multitask/model.pt", "sst2/model.pt", "stsb/model.pt"] and list(second) == list(first)
    for name in first:
        assert_same_tensors(first[name], second[name])


def student_weights(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(path.relative_to(root)): torch.load(path) for path in sorted(root.rglob("model.pt"))}

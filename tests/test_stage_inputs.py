"""A stage run with only the inputs pipeline/paths.py declares for it (STAGE_INPUTS, what dvc.yaml lists) gives the
same output as with the whole project: nothing it reads is missing from its DVC deps."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from typer.testing import CliRunner

from pipeline import paths
from pipeline.cli import app
from tests.test_own_data import intent_rows, write_csv

TASK = "intents"


def declared_inputs(stage: str, item: str) -> list[Path]:
    return [Path(dep.replace(paths.ITEM, item)) for dep in paths.stage_inputs(stage)]


def run_stage(project: Path, monkeypatch, *args: str) -> None:
    monkeypatch.chdir(project)
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output


def test_augment_reads_only_what_it_declares(tmp_path, monkeypatch):
    files = tmp_path / "files"
    write_csv(files / "train.csv", ["text", "intent"], intent_rows(24))
    (files / "raw.txt").write_text("".join(f"an unlabelled query {i}\n" for i in range(6)), encoding="utf-8")
    params = {
        "tasks": [TASK],
        "data": {"files_dir": str(files)},
        "augment": {"n_iter_single": 2},
        "task_defs": {TASK: {"train": "train.csv", "text_columns": ["text"], "label_column": "intent",
                             "unlabelled": ["raw.txt"]}},
    }  # fmt: skip
    full, sandbox = tmp_path / "full", tmp_path / "sandbox"
    for project in (full, sandbox):
        project.mkdir()
        (project / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage(full, monkeypatch, "prepare", "--task", TASK)

    inputs = declared_inputs("augment", TASK)
    assert paths.unlabelled_text(TASK) in inputs
    for path in inputs:  # the sandbox has the declared inputs only
        (sandbox / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(full / path, sandbox / path)
    assert {p.name for p in (full / paths.prepared_dir(TASK)).iterdir()} - {p.name for p in inputs} == {"dev.parquet"}

    run_stage(full, monkeypatch, "augment", "--task", TASK)
    run_stage(sandbox, monkeypatch, "augment", "--task", TASK)
    expected = pq.read_table(full / paths.transfer_set(TASK))
    assert expected.column("is_unlabelled").to_pylist().count(True) == 6
    assert pq.read_table(sandbox / paths.transfer_set(TASK)).equals(expected)

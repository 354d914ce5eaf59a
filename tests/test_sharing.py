"""Sharing teacher outputs through a DVC remote: a second clone pulls them instead of scoring again."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from tests.conftest import copy_project, init_project, tiny_params, write_sst2
from tests.test_pipeline_e2e import dvc, run, stages_run

pytestmark = pytest.mark.e2e  # dvc repro / push / pull in two tmp clones


def digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_clone_pulls_shards_and_skips_scoring(tmp_path, tiny_bert_dir):
    glue = write_sst2(tmp_path / "glue", n_train=40, n_dev=16)
    clone_a = copy_project(tmp_path / "a")
    (clone_a / "params.yaml").write_text(yaml.safe_dump(tiny_params(glue, tiny_bert_dir), sort_keys=False))
    init_project(clone_a)
    dvc("remote", "add", "-d", "shared", str(tmp_path / "remote"), cwd=clone_a)
    dvc("repro", cwd=clone_a)
    dvc("push", cwd=clone_a)
    run(["git", "add", "-A"], clone_a)
    run(["git", "-c", "user.name=a", "-c", "user.email=a@example.com", "commit", "-qm", "scored"], clone_a)

    clone_b = tmp_path / "b"
    run(["git", "clone", "-q", str(clone_a), str(clone_b)], tmp_path)
    assert not (clone_b / "data" / "logits").exists()
    dvc("pull", cwd=clone_b)
    result = dvc("repro", cwd=clone_b)
    assert stages_run(result) == set(), result.stdout
    assert "score@sst2" in result.stdout and "didn't change, skipping" in result.stdout
    shards = "data/logits/single/sst2"
    assert digests(clone_b / shards) == digests(clone_a / shards)
    assert run([*"python -m pipeline shards verify --task sst2".split()], clone_b).returncode == 0

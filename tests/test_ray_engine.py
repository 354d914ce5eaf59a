"""``score.engine: ray``: a Ray Data pool of teacher actors writes the local engine's shards, byte for byte."""

import json
import logging
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.data.io import write_parquet
from pipeline.data.schema import shard_schema
from pipeline.data.shards import MANIFEST_NAME, verify_shards
from pipeline.data.tasks import get_task
from pipeline.stages.score import RUN_STATE_NAME, run_score
from tests.test_score import params_with, save_tiny_teacher, transfer_table

ray = pytest.importorskip("ray")
# A local Ray cluster (GCS, raylet) whose worker processes run the teacher actors: pipeline code in other processes.
pytestmark = pytest.mark.e2e

SST2 = get_task("sst2")
SHARD_ROWS = 20


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of a shard folder by name: the shards, the manifest and the run-state file."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def assert_same_folder(by_ray: Path, by_local: Path) -> None:
    """Both engines wrote the same files with the same bytes.

    Nothing is left out of the comparison: neither the manifest nor ``_score_inputs.json`` records the engine, a
    time or a host (the manifest holds task, teacher checkpoint and fingerprint, row counts, the scoring inputs and
    each shard's SHA-256), and a shard's bytes depend only on its rows and their logits, so equal files are the
    claim "the Ray engine writes what the local engine writes", not an approximation of it."""
    ray_files, local_files = folder_bytes(by_ray), folder_bytes(by_local)
    assert sorted(ray_files) == sorted(local_files)
    differing = [name for name in local_files if ray_files[name] != local_files[name]]
    assert differing == [], f"files whose bytes differ between the ray and the local engine: {differing}"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("ray-engine")
    write_parquet(transfer_table(SST2, 95), root / "transfer.parquet")
    local = run_score(
        SST2,
        params_with(shard_rows=SHARD_ROWS),
        root / "transfer.parquet",
        save_tiny_teacher(tiny_bert_dir, root / "teacher"),
        root / "local",
    )
    return root, local


def test_ray_writes_the_local_engines_shards(inputs):
    root, local = inputs
    manifest = run_score(
        SST2,
        params_with(shard_rows=SHARD_ROWS, engine="ray"),
        root / "transfer.parquet",
        root / "teacher",
        root / "ray",
    )
    assert not ray.is_initialized()  # the engine shut down the local instance it started
    assert [s["rows"] for s in manifest["shards"]] == [20, 20, 20, 20, 15]
    assert manifest == local  # shard names, rows and SHA-256, teacher fingerprint, scoring inputs
    assert json.loads((root / "ray" / MANIFEST_NAME).read_text()) == manifest
    assert_same_folder(root / "ray", root / "local")
    assert all(pq.read_schema(root / "ray" / s["file"]) == shard_schema(SST2) for s in manifest["shards"])
    assert verify_shards(root / "ray") == []


def test_ray_resumes_on_a_running_instance(inputs, caplog):
    root, local = inputs
    out = root / "resumed"
    params = params_with(shard_rows=SHARD_ROWS, engine="ray")
    run_score(SST2, params_with(shard_rows=SHARD_ROWS), root / "transfer.parquet", root / "teacher", out)
    for name in ("part-00001.parquet", "part-00003.parquet", MANIFEST_NAME):
        (out / name).unlink()
    (out / ".part-00003.parquet.x1y2.tmp").write_bytes(b"cut short")  # a write interrupted by a kill

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with caplog.at_level(logging.INFO, logger="pipeline.stages.score"):
            manifest = run_score(SST2, params, root / "transfer.parquet", root / "teacher", out)
        assert ray.is_initialized()  # an instance the engine did not start is left running
    finally:
        ray.shutdown()
    assert "resuming: 3 of 5 shards already complete" in caplog.text
    assert (out / RUN_STATE_NAME).is_file() and not list(out.glob(".*.tmp"))
    # the two shards Ray rescored, the three the local engine kept and the new manifest: all as an unbroken local run
    assert manifest == local
    assert_same_folder(out, root / "local")

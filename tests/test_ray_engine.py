"""``score.engine: ray``: a Ray Data pool of teacher actors writes the same shards as the local engine."""

import logging

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.data.io import write_parquet
from pipeline.data.schema import shard_schema
from pipeline.data.shards import MANIFEST_NAME, logits_matrix, verify_shards
from pipeline.data.tasks import get_task
from pipeline.stages.score import run_score
from tests.test_score import params_with, save_tiny_teacher, transfer_table

ray = pytest.importorskip("ray")

SST2 = get_task("sst2")
SHARD_ROWS = 20


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
    assert [(s["file"], s["rows"]) for s in manifest["shards"]] == [(s["file"], s["rows"]) for s in local["shards"]]
    assert {key: value for key, value in manifest.items() if key != "shards"} == {
        key: value for key, value in local.items() if key != "shards"
    }
    for entry in manifest["shards"]:
        by_ray, by_local = pq.read_table(root / "ray" / entry["file"]), pq.read_table(root / "local" / entry["file"])
        assert by_ray.schema == shard_schema(SST2)
        assert by_ray.drop(["logits"]).equals(by_local.drop(["logits"]))
        np.testing.assert_allclose(logits_matrix(by_ray), logits_matrix(by_local), atol=1e-4)
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
    assert not list(out.glob(".*.tmp"))
    assert [s["rows"] for s in manifest["shards"]] == [s["rows"] for s in local["shards"]]
    for entry in manifest["shards"]:
        by_ray, by_local = pq.read_table(out / entry["file"]), pq.read_table(root / "local" / entry["file"])
        assert by_ray.drop(["logits"]).equals(by_local.drop(["logits"]))
        np.testing.assert_allclose(logits_matrix(by_ray), logits_matrix(by_local), atol=1e-4)

import json

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipeline.data.io import write_parquet
from pipeline.data.schema import shard_schema, transfer_schema
from pipeline.data.shards import MANIFEST_NAME, load_shards, logits_matrix, read_manifest, verify_shards
from pipeline.data.subsets import subset_originals
from pipeline.data.tasks import get_task
from pipeline.errors import ShardError
from pipeline.params import load_params
from pipeline.stages import score as score_module
from pipeline.stages.score import run_score
from tests.conftest import REPO_ROOT
from tests.recompute import Rows, teacher_outputs

SST2 = get_task("sst2")
QQP = get_task("qqp")


def save_tiny_teacher(tiny_bert_dir, out, num_labels: int = 2):
    """The tiny BERT with a (random, seeded) sequence-classification head, saved as a teacher folder."""
    import torch

    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=num_labels).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def teacher_dir(tiny_bert_dir, tmp_path_factory):
    return save_tiny_teacher(tiny_bert_dir, tmp_path_factory.mktemp("teacher"))


def transfer_table(task, n: int) -> pa.Table:
    words = ["good", "bad", "film", "plot", "[MASK]", "the", "really"]
    rng = np.random.default_rng(0)
    text = [" ".join(rng.choice(words, size=rng.integers(1, 9))) for _ in range(n)]
    return pa.table(
        {
            "id": np.arange(n),
            "source_id": np.arange(n) // 3,
            "is_original": np.arange(n) % 3 == 0,
            "is_unlabelled": np.zeros(n, dtype=bool),
            "text_a": text,
            "text_b": text[::-1] if task.is_pair else [None] * n,
            "label": [i % 2 if i % 3 == 0 else None for i in range(n)],
            "ops": [[] if i % 3 == 0 else ["mask"] for i in range(n)],
        },
        schema=transfer_schema(task),
    )


def params_with(**score):
    params = load_params(REPO_ROOT / "params.yaml")
    return params.model_copy(update={"score": params.score.model_copy(update={"batch_size": 8, **score})})


@pytest.fixture()
def scored(tmp_path, teacher_dir):
    transfer = transfer_table(SST2, 95)
    write_parquet(transfer, tmp_path / "transfer.parquet")
    out = tmp_path / "logits"
    manifest = run_score(SST2, params_with(shard_rows=20), tmp_path / "transfer.parquet", teacher_dir, out)
    return transfer, out, manifest


def test_shards_round_trip_schema_rows_and_logits(scored, teacher_dir):
    transfer, out, manifest = scored
    assert [entry["file"] for entry in manifest["shards"]] == [f"part-0000{i}.parquet" for i in range(5)]
    assert [entry["rows"] for entry in manifest["shards"]] == [20, 20, 20, 20, 15]
    assert manifest["num_rows"] == 95 and len(manifest["teacher_fingerprint"]) == 64
    table = load_shards(out)
    assert table.schema == shard_schema(SST2)
    assert table.drop(["logits"]).equals(transfer)
    # the teacher's logits as plain transformers computes them (one padded batch), not the pipeline's scoring code
    rows = Rows("sst2", transfer.column("text_a").to_pylist(), None, np.zeros(95), ("accuracy",))
    np.testing.assert_allclose(logits_matrix(table), teacher_outputs(teacher_dir, rows, 128), atol=1e-5)
    assert verify_shards(out) == []


def test_shards_open_in_pandas_pyarrow_and_duckdb(scored):
    _, out, _ = scored
    frame = pd.read_parquet(out)
    assert len(frame) == 95 and len(frame["logits"].iloc[0]) == 2
    assert pq.read_table(out).num_rows == 95
    rows, originals = duckdb.sql(
        f"select count(*), count(*) filter (where is_original) from read_parquet('{out}/part-*.parquet')"
    ).fetchall()[0]
    assert (rows, originals) == (95, 32)
    query = f"select logits[1] from read_parquet('{out}/part-00000.parquet') order by id limit 1"
    first_logit = duckdb.sql(query).fetchall()[0][0]
    assert first_logit == pytest.approx(float(frame.sort_values("id")["logits"].iloc[0][0]))


def test_corrupted_shard_is_detected(scored):
    _, out, _ = scored
    shard = out / "part-00002.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert verify_shards(out) == [f"{shard}: checksum mismatch (corrupted or modified since scoring)"]
    with pytest.raises(ShardError, match="part-00002.parquet: checksum mismatch"):
        load_shards(out)


def test_interrupted_run_resumes_from_last_complete_shard(tmp_path, teacher_dir, scored, monkeypatch):
    transfer, reference_dir, reference = scored
    write_parquet(transfer, tmp_path / "again.parquet")
    out = tmp_path / "resumed"
    calls = []
    real_score_table = score_module.score_table

    def crash_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        calls.append(1)
        return real_score_table(*args, **kwargs)

    monkeypatch.setattr(score_module, "score_table", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_score(SST2, params_with(shard_rows=20), tmp_path / "again.parquet", teacher_dir, out)
    assert sorted(p.name for p in out.glob("part-*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    assert not (out / MANIFEST_NAME).exists()
    assert not list(out.glob(".*.tmp"))

    calls.clear()
    monkeypatch.setattr(score_module, "score_table", lambda *a, **k: calls.append(1) or real_score_table(*a, **k))
    manifest = run_score(SST2, params_with(shard_rows=20), tmp_path / "again.parquet", teacher_dir, out)
    assert len(calls) == 3
    assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in reference["shards"]]


def test_changed_inputs_discard_old_shards(scored, teacher_dir, tmp_path):
    transfer, out, _ = scored
    manifest = run_score(SST2, params_with(shard_rows=50), tmp_path / "transfer.parquet", teacher_dir, out)
    assert sorted(p.name for p in out.glob("part-*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    assert json.loads((out / MANIFEST_NAME).read_text()) == manifest == read_manifest(out)
    assert load_shards(out).num_rows == 95


def test_pair_task_shards(tmp_path, teacher_dir):
    transfer = transfer_table(QQP, 30)
    write_parquet(transfer, tmp_path / "pairs.parquet")
    run_score(QQP, params_with(shard_rows=100), tmp_path / "pairs.parquet", teacher_dir, tmp_path / "out")
    table = load_shards(tmp_path / "out")
    assert table.schema == shard_schema(QQP)
    # both texts of each pair read, as plain transformers reads them (a scorer ignoring text_b would not match)
    rows = Rows("qqp", transfer["text_a"].to_pylist(), transfer["text_b"].to_pylist(), np.zeros(30), ("accuracy",))
    np.testing.assert_allclose(logits_matrix(table), teacher_outputs(teacher_dir, rows, 128), atol=1e-5)


def test_score_subset_of_originals(tmp_path, teacher_dir, scored):
    """With max_originals the shards hold exactly the subset MKD reads (whole originals with their variants), with the
    same logits as a full run; changing the subset rescoring from scratch."""
    transfer, full_out, _ = scored
    manifest = run_score(SST2, params_with(shard_rows=20), tmp_path / "transfer.parquet", teacher_dir,
                         tmp_path / "subset", max_originals=7)  # fmt: skip
    subset = load_shards(tmp_path / "subset")
    sources = set(subset.column("source_id").to_pylist())
    assert manifest["max_originals"] == 7 and len(sources) == 7
    assert subset.num_rows == sum(source in sources for source in transfer.column("source_id").to_pylist())
    assert subset.drop(["logits"]).equals(subset_originals(transfer, 7, seed=42))
    full = load_shards(full_out).to_pandas().set_index("id")
    expected = np.stack(full.loc[subset.column("id").to_pylist(), "logits"].to_numpy())
    np.testing.assert_allclose(logits_matrix(subset), expected, atol=1e-5)
    run_score(SST2, params_with(shard_rows=20), tmp_path / "transfer.parquet", teacher_dir, tmp_path / "subset",
              max_originals=4)  # fmt: skip
    assert len(set(load_shards(tmp_path / "subset").column("source_id").to_pylist())) == 4


def test_scoring_the_same_rows_twice_gives_byte_identical_shards(scored, teacher_dir, tmp_path):
    _, _, first = scored
    second = run_score(SST2, params_with(shard_rows=20), tmp_path / "transfer.parquet", teacher_dir, tmp_path / "again")
    assert [shard["sha256"] for shard in second["shards"]] == [shard["sha256"] for shard in first["shards"]]
    assert second == first


def test_precision_is_recorded_and_a_change_rescores(scored, teacher_dir, tmp_path):
    transfer, out, fp32_manifest = scored
    assert fp32_manifest["precision"] == "fp32"
    fp32_logits = logits_matrix(load_shards(out))
    manifest = run_score(
        SST2, params_with(shard_rows=20, precision="bf16"), tmp_path / "transfer.parquet", teacher_dir, out
    )
    assert manifest["precision"] == "bf16" == json.loads((out / score_module.RUN_STATE_NAME).read_text())["precision"]
    bf16_logits = logits_matrix(load_shards(out))
    assert load_shards(out).drop(["logits"]).equals(transfer)
    assert not np.array_equal(bf16_logits, fp32_logits)  # rescored, not resumed from the fp32 shards
    np.testing.assert_allclose(bf16_logits, fp32_logits, atol=0.1)


def test_a_changed_batch_size_rescores_every_shard(scored, teacher_dir, tmp_path, monkeypatch):
    _, out, _ = scored
    calls = []
    real_score_table = score_module.score_table
    monkeypatch.setattr(score_module, "score_table", lambda *a, **k: calls.append(1) or real_score_table(*a, **k))
    manifest = run_score(
        SST2, params_with(shard_rows=20, batch_size=4), tmp_path / "transfer.parquet", teacher_dir, out
    )
    assert len(calls) == 5 and manifest["batch_size"] == 4
    run_score(SST2, params_with(shard_rows=20, batch_size=4), tmp_path / "transfer.parquet", teacher_dir, out)
    assert len(calls) == 5  # same inputs: every shard kept

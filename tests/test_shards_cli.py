"""``python -m pipeline shards show|stats|verify`` on scored tiny shard folders."""

import json
import shutil
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.special import softmax
from scipy.stats import entropy
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data.io import write_parquet
from pipeline.data.shards import MANIFEST_NAME, logits_matrix
from pipeline.data.tasks import get_task
from pipeline.serving.teacher import teacher_fingerprint
from pipeline.stages.score import run_score
from tests.test_score import params_with, save_tiny_teacher, transfer_table

SST2 = get_task("sst2")
STSB = get_task("stsb")
runner = CliRunner()


def scored_dir(tmp_path_factory, tiny_bert_dir, task, rows: int):
    root = tmp_path_factory.mktemp(f"shards-{task.name}")
    teacher = save_tiny_teacher(tiny_bert_dir, root / "teacher", num_labels=task.num_outputs)
    write_parquet(transfer_table(task, rows), root / "transfer.parquet")
    run_score(task, params_with(shard_rows=20), root / "transfer.parquet", teacher, root / "logits")
    return root / "logits", teacher


@pytest.fixture(scope="module")
def sst2_shards(tmp_path_factory, tiny_bert_dir):
    return scored_dir(tmp_path_factory, tiny_bert_dir, SST2, 95)


def shards(*args: str):
    return runner.invoke(app, ["shards", *args])


def test_show_prints_decoded_rows(sst2_shards):
    out, _ = sst2_shards
    result = shards("show", "--task", "sst2", "--dir", str(out), "--rows", "3")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out / "part-00000.parquet").slice(0, 3)
    probs = softmax(logits_matrix(table), axis=1)
    blocks = result.stdout.strip().split("\n\n")
    assert len(blocks) == 3
    for row, row_probs, block in zip(table.to_pylist(), probs, blocks):
        kind = "original" if row["is_original"] else "synthetic (mask)"
        assert block.splitlines()[0] == f"id {row['id']}  source_id {row['source_id']}  {kind}"
        assert f"text_a: {row['text_a']}" in block and "text_b" not in block
        gold = "-" if row["label"] is None else SST2.labels[row["label"]]
        assert f"label: {gold}  teacher: {SST2.labels[row_probs.argmax()]}  " in block
        assert f"probs: 0={row_probs[0]:.4f}  1={row_probs[1]:.4f}" in block


def test_stats_match_independent_computation(sst2_shards):
    out, teacher = sst2_shards
    result = shards("stats", "--task", "sst2", "--dir", str(out), "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)

    table = pq.read_table(out).sort_by("id")  # the whole folder, read by pyarrow (ignores the _manifest)
    originals = table["is_original"].to_numpy(zero_copy_only=False)
    probs = softmax(np.stack(table["logits"].to_numpy(zero_copy_only=False)), axis=1)
    gold = np.array(table["label"].to_pylist(), dtype=object)[originals].astype(int)
    predicted = probs.argmax(axis=1)
    assert stats["rows"] == 95 and stats["originals"] == 32 and stats["synthetic"] == 63 and stats["shards"] == 5
    assert stats["teacher_fingerprint"] == teacher_fingerprint(teacher)
    assert stats["teacher_checkpoint"] == params_with().teacher.checkpoint
    assert stats["gold_labels"] == {SST2.labels[k]: v for k, v in sorted(Counter(gold.tolist()).items())}
    assert stats["teacher_predictions"] == {name: int((predicted == k).sum()) for k, name in enumerate(SST2.labels)}
    assert stats["teacher_gold_agreement"] == pytest.approx(np.mean(predicted[originals] == gold))
    assert stats["mean_teacher_entropy"] == pytest.approx(entropy(probs, axis=1).mean(), rel=1e-5)

    text = shards("stats", "--task", "sst2", "--dir", str(out)).stdout
    assert "95 (32 originals, 63 synthetic)" in text
    assert f"{100 * stats['teacher_gold_agreement']:.2f}%" in text and stats["teacher_fingerprint"] in text


def test_regression_show_and_stats(tmp_path_factory, tiny_bert_dir):
    out, _ = scored_dir(tmp_path_factory, tiny_bert_dir, STSB, 30)
    show = shards("show", "--task", "stsb", "--dir", str(out), "--rows", "1")
    score = logits_matrix(pq.read_table(out / "part-00000.parquet"))[0, 0]
    assert show.exit_code == 0 and f"teacher score: {score:.4f}" in show.stdout and "text_b: " in show.stdout

    stats = json.loads(shards("stats", "--task", "stsb", "--dir", str(out), "--json").stdout)
    table = pq.read_table(out).sort_by("id")
    table = table.filter(table["is_original"])
    expected = np.corrcoef(logits_matrix(table)[:, 0], table["label"].to_numpy())[0, 1]
    assert stats["teacher_gold_pearson"] == pytest.approx(expected, rel=1e-5)
    assert stats["gold_scores"]["mean"] == pytest.approx(table["label"].to_numpy().mean())
    text = shards("stats", "--task", "stsb", "--dir", str(out)).stdout
    assert f"teacher/gold Pearson (originals)  {stats['teacher_gold_pearson']:.4f}" in text


def test_verify_ok_then_names_the_corrupted_file(sst2_shards, tmp_path):
    out, _ = sst2_shards
    result = shards("verify", "--task", "sst2", "--dir", str(out))
    assert result.exit_code == 0 and result.stdout == "ok: 5 shards, 95 rows\n"

    copy = shutil.copytree(out, tmp_path / "copy")
    shard = copy / "part-00003.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    (copy / "part-00001.parquet").unlink()
    result = shards("verify", "--task", "sst2", "--dir", str(copy))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: {copy / 'part-00001.parquet'}: missing",
        f"error: {shard}: checksum mismatch (corrupted or modified since scoring)",
    ]


@pytest.mark.parametrize("command", ["show", "stats", "verify"])
def test_user_errors_are_one_line_and_exit_1(sst2_shards, tmp_path, command):
    out, _ = sst2_shards
    missing = shards(command, "--task", "sst2", "--dir", str(tmp_path))
    assert missing.exit_code == 1
    assert missing.stderr == f"error: {tmp_path / MANIFEST_NAME}: manifest not found; run the score stage first\n"
    wrong_task = shards(command, "--task", "qqp", "--dir", str(out))
    assert wrong_task.exit_code == 1
    assert wrong_task.stderr == f"error: {out / MANIFEST_NAME}: shards of task 'sst2', not 'qqp'\n"


def test_teacher_option_picks_the_default_shard_folder(sst2_shards, tmp_path, monkeypatch):
    """Without --dir, --teacher single|multitask reads data/logits/<teacher>/<task> of the working directory."""
    out, _ = sst2_shards
    monkeypatch.chdir(tmp_path)
    shutil.copytree(out, tmp_path / "data" / "logits" / "multitask" / "sst2")
    result = shards("verify", "--task", "sst2", "--teacher", "multitask")
    assert result.exit_code == 0 and result.stdout.startswith("ok: "), result.output
    stats = json.loads(shards("stats", "--task", "sst2", "--teacher", "multitask", "--json").stdout)
    assert stats["rows"] == 95
    assert "id 0" in shards("show", "--task", "sst2", "--teacher", "multitask", "--rows", "1").stdout
    missing = shards("verify", "--task", "sst2")  # default: the single-task teacher's folder, absent here
    assert missing.exit_code == 1 and "data/logits/single/sst2/_manifest.json: manifest not found" in missing.output
    assert shards("verify", "--task", "sst2", "--teacher", "both").exit_code == 2

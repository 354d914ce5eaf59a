"""``bench score``: ceiling / ours / naive throughput on the tiny teacher (numbers checked for consistency only)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from pipeline.bench import bench_sentences, run_bench
from pipeline.cli import app
from pipeline.io import write_parquet
from pipeline.params import GLUE_DIR_ENV
from pipeline.schema import prepared_schema, transfer_schema
from pipeline.tasks import get_task
from pipeline.teacher import load_teacher
from tests.conftest import REPO_ROOT
from tests.test_score import params_with, save_tiny_teacher, transfer_table

SST2 = get_task("sst2")
QQP = get_task("qqp")


@pytest.fixture(scope="module")
def teacher_dir(tiny_bert_dir, tmp_path_factory):
    return save_tiny_teacher(tiny_bert_dir, tmp_path_factory.mktemp("bench-teacher"))


def check_consistent(report: dict, sentences: int, batch_sizes: list[int]) -> None:
    rates, ratios, ceiling = report["sentences_per_second"], report["ratios"], report["ceiling_by_batch_size"]
    assert report["sentences"] == sentences
    assert all(rate > 0 for rate in rates.values()) and set(rates) == {"ceiling", "ours", "naive"}
    assert set(ceiling) == {str(size) for size in [*batch_sizes, report["batch_size"]]}
    assert rates["ceiling"] == max(ceiling.values()) == ceiling[str(report["ceiling_batch_size"])]
    assert ratios["ours_over_ceiling"] == pytest.approx(rates["ours"] / rates["ceiling"])
    assert ratios["ours_over_ceiling_at_our_batch_size"] == pytest.approx(rates["ours"] / ceiling[str(report["batch_size"])])
    assert ratios["ours_over_naive"] == pytest.approx(rates["ours"] / rates["naive"])


@pytest.mark.parametrize("task", [SST2, QQP])
def test_bench_reports_three_rates_and_their_ratios(teacher_dir, task):
    model, tokenizer = load_teacher(teacher_dir, torch.device("cpu"))
    threads = torch.get_num_threads()
    report = run_bench(task, params_with(), model, tokenizer, transfer_table(task, 64), [4, 32], threads=1)
    check_consistent(report, 64, [4, 8, 32])
    assert report["device"] == "cpu" and report["threads"] == 1 and report["batch_size"] == 8
    assert torch.get_num_threads() == threads  # restored


def test_sentences_come_from_transfer_set_else_prepared_else_glue(tmp_path, monkeypatch, glue_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(GLUE_DIR_ENV, str(glue_dir))
    params = params_with()
    table, source = bench_sentences(SST2, params, 10)
    assert source == str(glue_dir / "SST-2" / "train.tsv") and table.num_rows == 10
    assert table.schema == transfer_schema(SST2) and all(table["is_original"].to_pylist())

    prepared = transfer_table(SST2, 30).filter(transfer_table(SST2, 30)["is_original"]).select(prepared_schema(SST2).names)
    write_parquet(prepared.cast(prepared_schema(SST2)), tmp_path / "data/prepared/sst2/train.parquet")
    table, source = bench_sentences(SST2, params, 100)
    assert source == "data/prepared/sst2/train.parquet" and table.num_rows == 10
    assert table["source_id"].equals(prepared["id"]) and table.schema == transfer_schema(SST2)

    write_parquet(transfer_table(SST2, 50), tmp_path / "data/augmented/sst2.parquet")
    table, source = bench_sentences(SST2, params, 20)
    assert source == "data/augmented/sst2.parquet" and table.equals(transfer_table(SST2, 20))


def test_bench_command_prints_and_saves_the_numbers(teacher_dir, tmp_path, monkeypatch, glue_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(GLUE_DIR_ENV, str(glue_dir))
    args = ["bench", "score", "--task", "sst2", "--params", str(REPO_ROOT / "params.yaml"), "--teacher-dir", str(teacher_dir),
            "--sentences", "40", "--batch-sizes", "8,16", "--threads", "1", "--json", "bench.json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "bench.json").read_text())
    check_consistent(report, 40, [8, 16])
    assert report["command"].startswith("python -m pipeline") and report["teacher"] == str(teacher_dir)
    for line in ("ceiling (forward only", "ours (score_table + Parquet", "naive (transformers pipeline", "ours/ceiling: "):
        assert line in result.stdout
    assert CliRunner().invoke(app, [*args[:-2], "--batch-sizes", "8,x"]).exit_code == 2

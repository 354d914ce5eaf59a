"""``bench score`` / ``bench precision`` on the tiny teacher: interleaved rounds, numbers checked for consistency."""

import json
import statistics

import pytest
import torch
from typer.testing import CliRunner

from pipeline.bench.score import Measurement, bench_sentences, interleaved_rates, run_bench, run_precision_bench
from pipeline.cli import app
from pipeline.data.io import write_parquet
from pipeline.data.schema import prepared_schema, transfer_schema
from pipeline.data.tasks import get_task
from pipeline.params import GLUE_DIR_ENV
from pipeline.serving.teacher import load_teacher
from tests.conftest import REPO_ROOT
from tests.test_score import params_with, save_tiny_teacher, transfer_table

SST2 = get_task("sst2")
QQP = get_task("qqp")
STSB = get_task("stsb")


@pytest.fixture(scope="module")
def teacher_dir(tiny_bert_dir, tmp_path_factory):
    return save_tiny_teacher(tiny_bert_dir, tmp_path_factory.mktemp("bench-teacher"))


def check_summary(summary: dict, repeats: int) -> None:
    assert len(summary["runs"]) == repeats and all(rate > 0 for rate in summary["runs"])
    assert summary["min"] == min(summary["runs"]) <= summary["median"] <= summary["max"] == max(summary["runs"])
    assert summary["median"] == statistics.median(summary["runs"])


def check_ratio(value: dict, numerator: dict, denominator: dict) -> None:
    assert value["of_medians"] == pytest.approx(numerator["median"] / denominator["median"])
    per_round = [n / d for n, d in zip(numerator["runs"], denominator["runs"])]
    assert value["median_per_round"] == pytest.approx(statistics.median(per_round))


def check_consistent(report: dict, sentences: int, batch_sizes: list[int], repeats: int) -> None:
    rates, ratios, ceiling = report["sentences_per_second"], report["ratios"], report["ceiling_by_batch_size"]
    assert report["sentences"] == sentences and report["repeats"] == repeats
    assert set(rates) == {"ceiling", "ours", "naive"}
    for summary in [*rates.values(), *ceiling.values()]:
        check_summary(summary, repeats)
    assert set(ceiling) == {str(size) for size in [*batch_sizes, report["batch_size"]]}
    assert rates["ceiling"] == ceiling[str(report["ceiling_batch_size"])]
    assert rates["ceiling"]["median"] == max(summary["median"] for summary in ceiling.values())
    check_ratio(ratios["ours_over_ceiling"], rates["ours"], rates["ceiling"])
    check_ratio(ratios["ours_over_ceiling_at_our_batch_size"], rates["ours"], ceiling[str(report["batch_size"])])
    check_ratio(ratios["ours_over_naive"], rates["ours"], rates["naive"])


def test_rounds_interleave_every_measurement_after_one_warm_up_each():
    calls = []
    measurements = {
        name: Measurement(
            warm_up=lambda name=name: calls.append(f"warm {name}"), run=lambda name=name: calls.append(name)
        )
        for name in ("a", "b", "c")
    }
    rates = interleaved_rates(measurements, rows=10, repeats=3, device=torch.device("cpu"))
    assert calls == ["warm a", "warm b", "warm c", *["a", "b", "c"] * 3]
    assert set(rates) == {"a", "b", "c"} and all(len(runs) == 3 and min(runs) > 0 for runs in rates.values())


@pytest.mark.parametrize("task", [SST2, QQP])
def test_bench_reports_three_rates_and_their_ratios(teacher_dir, task):
    model, tokenizer = load_teacher(teacher_dir, torch.device("cpu"))
    threads = torch.get_num_threads()
    report = run_bench(task, params_with(), model, tokenizer, transfer_table(task, 64), [4, 32], threads=1, repeats=2)
    check_consistent(report, 64, [4, 8, 32], repeats=2)
    assert report["device"] == "cpu" and report["threads"] == 1 and report["batch_size"] == 8
    assert report["precision"] == "fp32" and report["autocast"] == "off (fp32)"
    assert torch.get_num_threads() == threads  # restored


def test_precision_bench_times_each_precision_and_compares_logits_with_fp32(teacher_dir):
    model, tokenizer = load_teacher(teacher_dir, torch.device("cpu"))
    report = run_precision_bench(
        SST2, params_with(), model, tokenizer, transfer_table(SST2, 48), ["bf16"], 1, repeats=2
    )
    fp32, bf16 = report["precisions"]["fp32"], report["precisions"]["bf16"]
    for result in (fp32, bf16):
        check_summary(result["sentences_per_second"], 2)
        check_ratio(result["speed_over_fp32"], result["sentences_per_second"], fp32["sentences_per_second"])
    exact = fp32["logits_vs_fp32"]
    assert (exact["max_abs_diff"], exact["mean_abs_diff"], exact["argmax_agreement"]) == (0.0, 0.0, 1.0)
    assert fp32["logits_vs_fp32"]["mean_abs_reference"] == bf16["logits_vs_fp32"]["mean_abs_reference"] > 0
    assert bf16["autocast"] == "bfloat16"
    assert 0 < bf16["logits_vs_fp32"]["mean_abs_diff"] <= bf16["logits_vs_fp32"]["max_abs_diff"] < 0.1
    assert 0 <= bf16["logits_vs_fp32"]["argmax_agreement"] <= 1


def test_precision_bench_on_regression_has_no_argmax(tiny_bert_dir, tmp_path):
    teacher_dir = save_tiny_teacher(tiny_bert_dir, tmp_path / "stsb", num_labels=1)
    model, tokenizer = load_teacher(teacher_dir, torch.device("cpu"))
    report = run_precision_bench(
        STSB, params_with(), model, tokenizer, transfer_table(STSB, 16), ["bf16"], 1, repeats=1
    )
    differences = report["precisions"]["bf16"]["logits_vs_fp32"]
    assert set(differences) == {"max_abs_diff", "mean_abs_diff", "mean_abs_reference"}


def test_sentences_come_from_transfer_set_else_prepared_else_glue(tmp_path, monkeypatch, glue_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(GLUE_DIR_ENV, str(glue_dir))
    params = params_with()
    table, source = bench_sentences(SST2, params, 10)
    assert source == str(glue_dir / "SST-2" / "train.tsv") and table.num_rows == 10
    assert table.schema == transfer_schema(SST2) and all(table["is_original"].to_pylist())

    transfer = transfer_table(SST2, 30)
    prepared = transfer.filter(transfer["is_original"]).select(prepared_schema(SST2).names)
    write_parquet(prepared.cast(prepared_schema(SST2)), tmp_path / "data/prepared/sst2/train.parquet")
    table, source = bench_sentences(SST2, params, 100)
    assert source == "data/prepared/sst2/train.parquet" and table.num_rows == 10
    assert table["source_id"].equals(prepared["id"]) and table.schema == transfer_schema(SST2)

    write_parquet(transfer_table(SST2, 50), tmp_path / "data/augmented/sst2.parquet")
    table, source = bench_sentences(SST2, params, 20)
    assert source == "data/augmented/sst2.parquet" and table.equals(transfer_table(SST2, 20))


def test_bench_commands_print_and_save_the_numbers(teacher_dir, tmp_path, monkeypatch, glue_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(GLUE_DIR_ENV, str(glue_dir))
    common = [
        "--task",
        "sst2",
        "--params",
        str(REPO_ROOT / "params.yaml"),
        "--teacher-dir",
        str(teacher_dir),
        "--sentences",
        "40",
        "--threads",
        "1",
        "--repeats",
        "2",
    ]
    args = ["bench", "score", *common, "--batch-sizes", "8,16", "--json", "bench.json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "bench.json").read_text())
    check_consistent(report, 40, [8, 16], repeats=2)
    assert report["command"].startswith("python -m pipeline") and report["teacher"] == str(teacher_dir)
    for line in (
        "ceiling (forward only",
        "ours (score_table + Parquet",
        "naive (transformers pipeline",
        "ours/ceiling: ",
        "rounds: 2 (interleaved",
    ):
        assert line in result.stdout
    assert CliRunner().invoke(app, [*args[:-2], "--batch-sizes", "8,x"]).exit_code == 2

    result = CliRunner().invoke(app, [*args[:-2], "--precision", "bf16", "--repeats", "1", "--json", "bf16.json"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "bf16.json").read_text())["autocast"] == "bfloat16"
    assert CliRunner().invoke(app, [*args[:-2], "--precision", "int8"]).exit_code == 2

    result = CliRunner().invoke(app, ["bench", "precision", *common, "--json", "precision.json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads((tmp_path / "precision.json").read_text())["precisions"]) == {"fp32", "bf16"}
    assert "bf16 (autocast bfloat16): " in result.stdout and "argmax agreement" in result.stdout

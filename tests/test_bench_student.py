"""``bench student``: the time breakdown of a tiny saved BiLSTM student and its exported variants at batch size 1."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline import paths
from pipeline.cli import app
from pipeline.data.io import write_parquet
from pipeline.data.schema import prepared_schema
from pipeline.data.tasks import get_task
from pipeline.params import BiLSTMParams, ExportParams, Params
from pipeline.serving import deploy
from pipeline.serving.export import write_export
from pipeline.students.architectures import load_student, save_student
from pipeline.students.bilstm import BiLSTMStudent
from tests.conftest import make_sentence, tiny_params

SST2 = get_task("sst2")
DEV_ROWS, TIMED = 30, 12
VARIANTS = ["onnx", "int8", "table"]  # the fp32 export is always written; int8 and the gate table as asked
PYTORCH_PARTS = [
    "tokeniser",
    "embedding look-up",
    "LSTM input projection",
    "LSTM recurrence",
    "pooling + head",
    "framework overhead (rest)",
    "total (predict, batch 1)",
]
# Parts timed directly (the best of the timed passes): each must take some time. The remainders ("framework
# overhead (rest)", "Python glue ...") are differences of timings, so only their sum with the others is checked.
ONNX_PARTS = [
    "tokeniser",
    "onnxruntime call overhead",
    "Python glue (arrays, batching)",
    "total (logits, batch 1)",
]  # besides one "op <type>" part per op type the profiler saw
MEASURED = {"tokeniser", "embedding look-up", "LSTM input projection", "LSTM recurrence", "pooling + head",
            "onnxruntime call overhead"}  # fmt: skip
MAX_US = 1e6  # a tiny student at batch size 1: far less than a second a sentence, even on a loaded machine


def dev_rows(n: int) -> pa.Table:
    rng = random.Random(3)
    return pa.table(
        {
            "id": list(range(n)),
            "text_a": [make_sentence(rng, bool(i % 2)) for i in range(n)],
            "text_b": [None] * n,
            "label": [i % 2 for i in range(n)],
        },
        schema=prepared_schema(SST2),
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert_dir) -> Path:
    """A working folder as ``bench student`` reads it: params, dev split, saved student and its export folder."""
    root = tmp_path_factory.mktemp("bench-student")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(root / "glue", tiny_bert_dir), sort_keys=False))
    dev = dev_rows(DEV_ROWS)
    write_parquet(dev, root / paths.prepared_split("sst2", "dev"))
    torch.manual_seed(0)
    params = Params(bilstm=BiLSTMParams(hidden_size=8, fc_hidden=8, max_length=16))
    model, encoder = BiLSTMStudent.build(params, [SST2], tiny_bert_dir, dev.column("text_a").to_pylist(), 0)
    save_student(model.eval(), encoder, root / paths.student_dir("sst2"), {})
    folder = root / paths.export_dir("sst2")
    folder.mkdir(parents=True)
    write_export(model.eval(), encoder, SST2, folder, ExportParams(variants=["int8", "table"]), {})
    return root


def check_parts(name: str, parts: dict[str, float]) -> None:
    """Every part a finite time; the parts (all but the total) add up to the total; plausible magnitudes."""
    assert all(isinstance(v, float) and math.isfinite(v) for v in parts.values()), (name, parts)
    totals = [key for key in parts if key.startswith("total")]
    assert len(totals) == 1, (name, list(parts))
    total = parts[totals[0]]
    assert 0 < total < MAX_US, (name, total)
    for key in MEASURED & set(parts):
        assert 0 < parts[key] < total, (name, key, parts[key], total)  # a part takes less time than the whole call
    rest = sum(value for key, value in parts.items() if key != totals[0])
    assert rest == pytest.approx(total, rel=1e-9), f"{name}: parts add up to {rest} us, not the total {total} us"


def printed_tables(stdout: str) -> dict[str, list[tuple[str, int, int]]]:
    """The Markdown tables ``bench student`` prints: per model, its rows (part, microseconds, share in %)."""
    tables: dict[str, list[tuple[str, int, int]]] = {}
    for line in stdout.splitlines():
        if line.startswith("**"):
            rows = tables.setdefault(line[2 : line.index("**", 2)], [])
        elif line.startswith("| ") and not line.startswith("| part |"):
            part, us, share = (cell.strip() for cell in line.strip("|").split("|"))
            rows.append((part, int(us), int(share.removesuffix("%"))))
    return tables


def test_bench_student_breaks_down_pytorch_and_every_exported_variant(project, monkeypatch):
    monkeypatch.chdir(project)
    args = ["bench", "student", "--task", "sst2", "--sentences", str(TIMED), "--threads", "1", "--repeats", "2"]
    args += ["--json", "bench.json"]
    monkeypatch.setattr(sys, "argv", ["pipeline", *args])  # the report records the command line it was run with
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((project / "bench.json").read_text())

    models = ["pytorch", *(f"onnx {v}" for v in VARIANTS)]
    assert set(report) == {"sentences", "threads", "mean_tokens", "command", *models}
    assert report["sentences"] == TIMED and report["threads"] == 1
    assert report["command"] == "python -m pipeline " + " ".join(args)
    # the first TIMED dev sentences, as the student's encoder tokenises them (at most its max_length tokens)
    _, encoder = load_student(project / paths.student_dir("sst2"), torch.device("cpu"))
    lengths = [len(ids) for ids in encoder.encode(dev_rows(DEV_ROWS).column("text_a").to_pylist()[:TIMED])]
    assert report["mean_tokens"] == pytest.approx(sum(lengths) / TIMED) and 1 <= report["mean_tokens"] <= 16

    assert set(report["pytorch"]) == set(PYTORCH_PARTS)
    for name in models:
        check_parts(name, report[name])
    for variant in VARIANTS:
        parts = report[f"onnx {variant}"]
        ops = [key for key in parts if key.startswith("op ")]
        assert set(parts) - set(ops) == set(ONNX_PARTS), (variant, list(parts))
        assert ops and all(parts[op] >= 0 for op in ops), (variant, parts)  # the session's time, apportioned by op
    # the gate table replaces the embedding look-up and input projection by a table: no LSTM op left, a Scan instead
    assert "op LSTM" in report["onnx onnx"] and "op LSTM" not in report["onnx table"]

    # the printed tables: the same numbers (rounded), parts in the documented order, the total in the heading
    assert f"{TIMED} sentences (mean {report['mean_tokens']:.1f} tokens), batch size 1, 1 threads" in result.stdout
    tables = printed_tables(result.stdout)
    exported = deploy.read_config(project / paths.export_dir("sst2"))["models"]
    assert set(exported) == set(VARIANTS) and list(tables) == ["pytorch", *(f"onnx {v}" for v in exported)]
    assert [part for part, _, _ in tables["pytorch"]] == PYTORCH_PARTS[:-1]
    for name in models:
        total = next(value for key, value in report[name].items() if key.startswith("total"))
        assert f"**{name}** (total {total:.0f} us = {1e6 / total:.0f} sentences/s)" in result.stdout
        assert {part: us for part, us, _ in tables[name]} == {
            part: round(value) for part, value in report[name].items() if not part.startswith("total")
        }
        assert [part for part, _, _ in tables[name]][-2:] == (
            PYTORCH_PARTS[-3:-1] if name == "pytorch" else ONNX_PARTS[-3:-1]
        )


def test_bench_student_refuses_pair_tasks(project, monkeypatch):
    monkeypatch.chdir(project)
    result = CliRunner().invoke(app, ["bench", "student", "--task", "qqp"])
    assert result.exit_code == 2 and "bench student times single-sentence tasks" in result.output

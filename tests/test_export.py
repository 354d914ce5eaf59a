"""Export: ONNX parity with PyTorch (single, pair, padded batches), the gate-table and int8 variants, the standalone
folder (onnxruntime + tokenizers only, in an isolated interpreter), and the export of any saved student folder."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.data.metrics import compute_metrics
from pipeline.data.tasks import get_task
from pipeline.errors import ExportError
from pipeline.params import BiLSTMParams, ExportParams, Params
from pipeline.serving import deploy
from pipeline.serving.export import check_variants, standalone_tokenizer, write_export
from pipeline.stages.export import export_student
from pipeline.students.architectures import save_student
from pipeline.students.bilstm import BiLSTMStudent
from pipeline.students.encoding import WordEncoder, build_word_vocab
from pipeline.students.inference import predict
from tests.conftest import make_sentence

PARITY = 1e-4


def texts(n: int, seed: int) -> list[str]:
    """Sentences of varied lengths (1 to ~20 tokens), some with unknown words, a [MASK] and punctuation."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sentence = " ".join(make_sentence(rng, bool(i % 2)) for _ in range(rng.randint(1, 3)))
        out.append(sentence if i % 5 else f"{sentence}, zebra [MASK] !")
    return out + ["good"]


def build_student(
    tiny_bert_dir: Path, task_names: list[str], seed: int = 0, **bilstm: object
) -> tuple[BiLSTMStudent, object]:
    torch.manual_seed(seed)
    params = Params(bilstm=BiLSTMParams(**{"hidden_size": 8, "fc_hidden": 8, "max_length": 16, **bilstm}))
    model, encoder = BiLSTMStudent.build(params, [get_task(t) for t in task_names], tiny_bert_dir, texts(50, 1), seed)
    return model.eval(), encoder


def exported(tmp_path: Path, model, encoder, task_name: str, **export: object) -> Path:
    folder = tmp_path / f"export-{task_name}"
    folder.mkdir()
    write_export(model, encoder, get_task(task_name), folder, ExportParams(**export), {})
    return folder


@pytest.mark.parametrize(("task_name", "pooling"), [("sst2", "max"), ("mrpc", "max"), ("stsb", "last")])
def test_fp32_variants_match_pytorch_on_padded_batches(tmp_path, tiny_bert_dir, task_name, pooling):
    model, encoder = build_student(tiny_bert_dir, [task_name], pooling=pooling)
    folder = exported(tmp_path, model, encoder, task_name, variants=["table"])
    task = get_task(task_name)
    text_a = texts(30, 2)
    # pairs: first sides sometimes longer, sometimes shorter than the second (the common padded width varies)
    text_b = list(reversed(texts(30, 3))) if task.is_pair else None
    reference = predict(model, encoder, task_name, text_a, text_b, batch_size=7)
    for variant in ("onnx", "table"):
        runner = deploy.ExportedStudent(folder, variant)
        for batch_size in (1, 7, 64):
            logits = runner.logits(text_a, text_b, batch_size)
            assert logits.shape == (len(text_a), task.num_outputs)
            np.testing.assert_allclose(logits, reference, atol=PARITY, rtol=0, err_msg=f"{variant} batch {batch_size}")


def test_pair_export_keeps_the_common_width_dynamic(tmp_path, tiny_bert_dir):
    """Traced with its first side shorter, the export must still pad correctly when the first side is longer."""
    model, encoder = build_student(tiny_bert_dir, ["qqp"])
    folder = exported(tmp_path, model, encoder, "qqp", variants=[])
    long_text = "the film is a story with acting and plot really quite very good " * 2
    for text_a, text_b in (([long_text], ["bad"]), (["bad"], [long_text]), ([long_text, "dull"], ["fine", long_text])):
        reference = predict(model, encoder, "qqp", text_a, text_b, batch_size=8)
        logits = deploy.ExportedStudent(folder).logits(text_a, text_b, batch_size=8)
        np.testing.assert_allclose(logits, reference, atol=PARITY, rtol=0)


def test_export_check_fails_on_a_parity_violation(tmp_path, tiny_bert_dir):
    model, encoder = build_student(tiny_bert_dir, ["sst2"])
    folder = exported(tmp_path, model, encoder, "sst2", variants=[])
    dev = pa.table({"text_a": texts(10, 4), "text_b": [None] * 11, "label": [i % 2 for i in range(11)]})
    with torch.no_grad():
        model.heads["sst2"][-1].bias += 1e-3  # the exported file no longer computes this model's function
    with pytest.raises(ExportError, match="differ from the PyTorch student"):
        check_variants(model, encoder, get_task("sst2"), folder, {"dev": dev}, ExportParams(variants=[]))


def test_int8_is_close_to_fp32_and_its_metric_drop_is_reported(tmp_path, tiny_bert_dir):
    model, encoder = build_student(tiny_bert_dir, ["sst2"], hidden_size=32, fc_hidden=32)
    task = get_task("sst2")
    folder = exported(tmp_path, model, encoder, "sst2", variants=["int8"])
    text_a = texts(60, 5)
    dev = pa.table({"text_a": text_a, "text_b": [None] * len(text_a), "label": [i % 2 for i in range(len(text_a))]})
    report = check_variants(model, encoder, task, folder, {"dev": dev}, ExportParams(variants=["int8"]))

    fp32 = deploy.ExportedStudent(folder, "onnx").logits(text_a)
    int8 = deploy.ExportedStudent(folder, "int8").logits(text_a)
    scale = np.abs(fp32).max()
    assert 0 < np.abs(int8 - fp32).max() < 0.05 * scale  # quantised (not identical), yet close
    drop = report["int8_drop_points"]
    labels = dev.column("label").to_numpy()
    expected = 100 * (compute_metrics(task, fp32, labels)["accuracy"] - compute_metrics(task, int8, labels)["accuracy"])
    assert drop["by_split"]["dev"] == pytest.approx(expected)
    assert drop["within"] == (expected <= 0.5)
    assert report["variants"]["int8"]["file_bytes"] > 0


def test_gate_table_replaces_the_embeddings_and_input_projection(tmp_path, tiny_bert_dir):
    import onnx

    model, encoder = build_student(tiny_bert_dir, ["sst2"])
    folder = exported(tmp_path, model, encoder, "sst2", variants=["table"])
    ops = {node.op_type for node in onnx.load(folder / "model-table.onnx").graph.node}
    assert "Scan" in ops and "LSTM" not in ops
    generic_ops = {node.op_type for node in onnx.load(folder / "model.onnx").graph.node}
    assert "LSTM" in generic_ops


def test_word_vocabulary_encoder_is_reproduced_by_the_standalone_tokenizer():
    sample = texts(40, 6) + ["Don't STOP-me now!!", "café, naïve [MASK]", "   spaced\tout   "]
    encoder = WordEncoder(build_word_vocab(sample[:20], min_freq=1), max_length=64)
    tokenizer, replace = standalone_tokenizer(encoder)
    assert replace == {}
    encoded = [tokenizer.encode(t, add_special_tokens=False).ids or [encoder.unk_id] for t in sample]
    assert encoded == encoder.encode(sample)


def test_wordpiece_encoder_is_reproduced_by_the_standalone_tokenizer(tiny_bert_dir):
    _, encoder = build_student(tiny_bert_dir, ["sst2"], max_length=64)
    tokenizer, replace = standalone_tokenizer(encoder)
    sample = texts(40, 7)
    ids = [tokenizer.encode(t.replace("[MASK]", replace["[MASK]"]), add_special_tokens=False).ids for t in sample]
    assert ids == encoder.encode(sample)


STANDALONE = textwrap.dedent("""
    # What a deployment needs: numpy, onnxruntime, tokenizers and the exported folder (no torch, no repository).
    import json, sys
    import numpy as np, onnxruntime as ort
    from tokenizers import Tokenizer

    folder, variant = sys.argv[1], sys.argv[2]
    config = json.load(open(f"{folder}/config.json"))
    tokenizer = Tokenizer.from_file(f"{folder}/{config['tokenizer']}")
    session = ort.InferenceSession(f"{folder}/{config['models'][variant]}", providers=["CPUExecutionProvider"])

    def ids(text):
        for old, new in config["replace"].items():
            text = text.replace(old, new)
        return (tokenizer.encode(text, add_special_tokens=False).ids or [config["unk_id"]])[: config["max_length"]]

    rows = [line.rstrip("\\n").split("\\t") for line in sys.stdin]
    out = []
    for row in rows:  # one row per call: batch size 1, no padding
        feed = {}
        for name, text in zip(config["inputs"], row):
            tokens = ids(text)
            feed[name], feed[name + "_lengths"] = np.array([tokens]), np.array([len(tokens)])
        out.append(session.run(["logits"], feed)[0][0].tolist())
    assert not any(m == "torch" or m.startswith("pipeline") for m in sys.modules), "imported torch or pipeline"
    print(json.dumps({"labels": config["labels"], "logits": out}))
""")


@pytest.mark.parametrize(("task_name", "variant"), [("sst2", "onnx"), ("mrpc", "table"), ("stsb", "int8")])
def test_exported_folder_runs_in_an_isolated_interpreter(tmp_path, tiny_bert_dir, task_name, variant):
    model, encoder = build_student(tiny_bert_dir, [task_name])
    folder = exported(tmp_path, model, encoder, task_name, variants=["int8", "table"])
    task = get_task(task_name)
    text_a = texts(8, 8)
    text_b = texts(8, 9) if task.is_pair else None
    lines = "".join("\t".join(row) + "\n" for row in zip(text_a, *([text_b] if text_b else [])))
    script = tmp_path / "standalone.py"
    script.write_text(STANDALONE)
    # -I: isolated mode (no PYTHONPATH, no user site, the script's folder instead of the repository on sys.path)
    result = subprocess.run([sys.executable, "-I", str(script), str(folder), variant], input=lines, text=True,
                            capture_output=True, cwd=tmp_path, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["labels"] == (list(task.labels) if task.labels else None)
    # batch size 1 as the script: int8 quantises activations per call, so a row's logits depend on its batch
    expected = deploy.ExportedStudent(folder, variant).logits(text_a, text_b, batch_size=1)
    np.testing.assert_allclose(np.array(answer["logits"]), expected, atol=1e-5, rtol=0)
    if variant != "int8":
        np.testing.assert_allclose(expected, predict(model, encoder, task_name, text_a, text_b, 4), atol=PARITY, rtol=0)


def test_export_student_from_a_saved_multitask_folder(tmp_path, tiny_bert_dir):
    model, encoder = build_student(tiny_bert_dir, ["sst2", "mrpc"])
    model_dir = tmp_path / "models" / "mkd"
    save_student(model, encoder, model_dir, {"note": "test"})
    rows = texts(12, 10)
    dev = pa.table({"text_a": rows, "text_b": list(reversed(rows)), "label": [i % 2 for i in range(len(rows))]})
    out, metrics = tmp_path / "export" / "mrpc", tmp_path / "metrics" / "mrpc.json"
    report = export_student(get_task("mrpc"), ExportParams(), model_dir, out, {"dev": dev}, metrics)

    config = deploy.read_config(out)
    assert config["task"] == "mrpc" and config["inputs"] == ["a", "b"] and config["labels"] == ["0", "1"]
    assert set(config["models"]) == {"onnx", "int8", "table"}
    assert config["source"]["architecture"] == "bilstm" and len(config["source"]["model_sha256"]) == 64
    assert json.loads(metrics.read_text()) == json.loads(json.dumps(report))
    assert report["variants"]["table"]["max_abs_logit_diff"] <= PARITY
    reference = predict(model, encoder, "mrpc", rows, list(reversed(rows)), 4)  # the mrpc head, not sst2's
    np.testing.assert_allclose(deploy.ExportedStudent(out).logits(rows, list(reversed(rows))), reference, atol=PARITY)

    with pytest.raises(ExportError, match="no head for task qqp"):
        export_student(get_task("qqp"), ExportParams(), model_dir, tmp_path / "x", {"dev": dev}, tmp_path / "x.json")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("architecture", ["biattentive", "transformer"])
@pytest.mark.parametrize("task_name", ["sst2", "mrpc"])
def test_mkd_architectures_export_with_parity(tmp_path, tiny_bert_dir, architecture, task_name):
    """The MKD students export too: the bi-attentive LSTM (separate token lists) and the Transformer (one joint
    "[CLS] a [SEP] b [SEP]" sequence with segment ids, truncated longest-first like the PyTorch encoder)."""
    from pipeline.students.architectures import get_architecture

    params = Params.model_validate({
        "biattentive": {"feedforward_size": 8, "encoder_size": 4, "integrator_size": 4, "output_sizes": [8],
                        "max_length": 16},
        "transformer": {"layers": 1, "max_length": 12},
    })  # fmt: skip
    torch.manual_seed(0)
    model, encoder = get_architecture(architecture).build(params, [get_task(task_name)], tiny_bert_dir, texts(50, 1), 0)
    model.eval()
    folder = exported(tmp_path, model, encoder, task_name)
    config = deploy.read_config(folder)
    assert config["encoding"] == ("joint" if architecture == "transformer" else "separate")
    text_a = texts(25, 2)
    text_b = list(reversed(texts(25, 3))) if get_task(task_name).is_pair else None
    reference = predict(model, encoder, task_name, text_a, text_b, batch_size=5)
    runner = deploy.ExportedStudent(folder, "onnx")
    for batch_size in (1, 5, 64):
        np.testing.assert_allclose(runner.logits(text_a, text_b, batch_size), reference, atol=PARITY, rtol=0)
    counts = runner.token_counts(text_a, text_b)
    assert counts.shape == (len(text_a),) and (counts > config["max_length"]).any()  # some inputs need truncating

"""Export: ONNX parity with PyTorch (single, pair, padded batches), the gate-table and int8 variants, the pruned
vocabulary (parity on seen tokens; unseen ones read as unknown, or through the fallback table as the unpruned student
reads them), the standalone folder (onnxruntime + tokenizers only, in an isolated interpreter), and the export of any
saved student folder."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pytest
import torch
from onnx import numpy_helper

from pipeline import paths
from pipeline.data.metrics import compute_metrics
from pipeline.data.tasks import get_task
from pipeline.errors import ExportError
from pipeline.params import BiLSTMParams, ExportParams, Params
from pipeline.serving import deploy
from pipeline.serving.export import check_variants, standalone_tokenizer, vocabulary_ids, write_export
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


def exported(tmp_path: Path, model, encoder, task_name: str, kept=None, name: str = "export", **export: object) -> Path:
    folder = tmp_path / f"{name}-{task_name}"
    folder.mkdir()
    write_export(model, encoder, get_task(task_name), folder, ExportParams(**export), {}, kept)
    return folder


def table_rows(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the 2-D initialisers of an ONNX file, by name."""
    return {init.name: tuple(init.dims) for init in onnx.load(path).graph.initializer if len(init.dims) == 2}


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
    kept = vocabulary_ids(encoder, texts(8, 8) + texts(8, 9))  # the script reads a pruned tokenizer
    folder = exported(tmp_path, model, encoder, task_name, kept, variants=["int8", "table"])
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
    train = pa.table({"text_a": ["the film is good"], "text_b": ["a bad plot"]})  # few tokens: most are pruned
    report = export_student(get_task("mrpc"), ExportParams(), model_dir, out, {"dev": dev}, metrics, [train])

    config = deploy.read_config(out)
    assert config["task"] == "mrpc" and config["inputs"] == ["a", "b"] and config["labels"] == ["0", "1"]
    assert set(config["models"]) == {"onnx", "int8"}  # the gate table is opt-in
    assert config["default_variant"] == "int8" and deploy.ExportedStudent(out).variant == "int8"
    assert config["source"]["architecture"] == "bilstm" and len(config["source"]["model_sha256"]) == 64
    assert json.loads(metrics.read_text()) == json.loads(json.dumps(report))
    # pruned to the tokens of train (dev reads through the fallback, as unpruned: parity), and the tables lost rows
    assert report["variants"]["onnx"]["max_abs_logit_diff"] <= PARITY
    train_ids = vocabulary_ids(encoder, ["the film is good", "a bad plot"])
    assert config["vocabulary"]["rows"] == encoder.vocab_size > config["vocabulary"]["kept"] == len(train_ids)
    assert {rows for rows, _ in table_rows(out / "model.onnx").values()} >= {len(train_ids)}
    for variant, entry in report["variants"].items():
        assert entry["file_bytes"] == (out / config["models"][variant]).stat().st_size
        accuracy = entry["dev"]["dev"]["accuracy"]
        assert entry["drop_points"]["dev"] == pytest.approx(100 * (report["pytorch"]["dev"]["accuracy"] - accuracy))
    assert report["folder_bytes"] == sum(path.stat().st_size for path in out.iterdir())
    unseen = report["unseen_tokens"]["dev"]  # dev's tokens outside train's, read as unknown and by the fallback
    assert 0 < unseen["outside_training"] < unseen["tokens"]
    assert set(unseen["metrics_unseen_as_unknown"]) == {"onnx", "int8"}
    assert unseen["metrics_unseen_by_fallback"] == {variant: report["variants"][variant]["dev"]["dev"]
                                                    for variant in ("onnx", "int8")}  # fmt: skip
    assert unseen["metrics_unseen_by_fallback"]["onnx"] == report["pytorch"]["dev"]
    # without the fallback, dev's tokens are kept too (dev reads exactly) and only the [UNK] reading is reported
    unk = export_student(get_task("mrpc"), ExportParams(unseen_tokens="unk"), model_dir, tmp_path / "unk", {"dev": dev},
                         None, [train])  # fmt: skip
    dev_ids = vocabulary_ids(encoder, rows + list(reversed(rows)))
    assert unk["vocabulary"]["kept"] == len(np.union1d(train_ids, dev_ids)) > len(train_ids)
    assert unk["variants"]["onnx"]["max_abs_logit_diff"] <= PARITY
    assert "metrics_unseen_by_fallback" not in unk["unseen_tokens"]["dev"]
    assert unk["unseen_tokens"]["dev"]["metrics_unseen_as_unknown"] == unseen["metrics_unseen_as_unknown"]
    reference = predict(model, encoder, "mrpc", rows, list(reversed(rows)), 4)  # the mrpc head, not sst2's
    runner = deploy.ExportedStudent(out, "onnx")
    np.testing.assert_allclose(runner.logits(rows, list(reversed(rows))), reference, atol=PARITY)

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


SEEN = ["the film is good", "a bad plot, really", "[MASK] acting"]  # the texts whose tokens the pruned export keeps
UNSEEN = ["lovely superb story", "the film is tedious and dull", "quite very zebra"]


@pytest.mark.parametrize(
    ("architecture", "task_name"),
    [("bilstm", "sst2"), ("bilstm", "mrpc"), ("transformer", "mrpc"), ("biattentive", "sst2")],
)
def test_pruned_vocabulary_keeps_seen_texts_exact_and_reads_unseen_tokens_as_unknown_or_by_fallback(
    tmp_path, tiny_bert_dir, architecture, task_name
):
    from pipeline.students.architectures import get_architecture

    params = Params.model_validate({
        "bilstm": {"hidden_size": 8, "fc_hidden": 8, "max_length": 16},
        "transformer": {"layers": 1, "max_length": 12},
        "biattentive": {"feedforward_size": 8, "encoder_size": 4, "integrator_size": 4, "output_sizes": [8],
                        "max_length": 16},
    })  # fmt: skip
    torch.manual_seed(0)
    model, encoder = get_architecture(architecture).build(params, [get_task(task_name)], tiny_bert_dir, texts(50, 1), 0)
    model.eval()
    kept = vocabulary_ids(encoder, SEEN)
    assert 4 < len(kept) < encoder.vocab_size / 2
    with torch.no_grad():  # trained as on SEEN: the trainable tables' rows of its tokens moved, the others did not
        for table in (p for p in model.parameters() if p.requires_grad and p.shape[0] == encoder.vocab_size):
            table[kept] += 0.1 * torch.randn_like(table[kept])
    variants = ["table"] if architecture == "bilstm" else []
    full = exported(tmp_path, model, encoder, task_name, None, "full", variants=variants)
    pruned = exported(tmp_path, model, encoder, task_name, kept, "pruned", variants=variants, unseen_tokens="unk")
    fallback = exported(tmp_path, model, encoder, task_name, kept, "fallback", variants=variants)  # the default
    pair = get_task(task_name).is_pair
    unseen_b = SEEN if pair else None
    truth = predict(model, encoder, task_name, UNSEEN, unseen_b, 2)  # the PyTorch student on unseen tokens

    for variant in ("onnx", *variants):  # the embedding (or gate) tables have one row per kept token
        shapes = table_rows(pruned / deploy.read_config(pruned)["models"][variant]).values()
        assert any(rows == len(kept) for rows, _ in shapes)
        assert not any(rows == encoder.vocab_size for rows, _ in shapes)
        runner = deploy.ExportedStudent(pruned, variant)
        # texts made of seen tokens: the unpruned PyTorch student's logits
        seen_b = list(reversed(SEEN)) if pair else None
        reference = predict(model, encoder, task_name, SEEN, seen_b, 2)
        np.testing.assert_allclose(runner.logits(SEEN, seen_b, 2), reference, atol=PARITY, rtol=0)
        # unseen tokens: as the unpruned export with those tokens replaced by the unknown token
        reader = deploy.ExportedStudent(full, variant)
        arrays, known = (reader.inputs[:1] if reader.joint else reader.inputs), set(kept.tolist())
        ids = reader.encode(UNSEEN, unseen_b)
        as_unknown = [
            [[t if t in known else reader.unk_id for t in row] for row in column] if name in arrays else column
            for name, column in zip(reader.inputs, ids, strict=True)
        ]
        assert as_unknown != ids  # some tokens were unseen
        as_unk = runner.logits(UNSEEN, unseen_b, 2)
        np.testing.assert_allclose(as_unk, reader.logits_from_ids(as_unknown, 2), atol=PARITY, rtol=0)
        # the fallback: every token its own row, so seen and unseen texts get the PyTorch student's logits
        by_fallback = deploy.ExportedStudent(fallback, variant)
        fallback_logits = by_fallback.logits(UNSEEN, unseen_b, 2)
        np.testing.assert_allclose(fallback_logits, truth, atol=PARITY, rtol=0)
        # [UNK] is not what the student reads (the tiny untrained Transformer's logits barely move: 3e-5)
        assert np.abs(as_unk - truth).max() > max(100 * np.abs(fallback_logits - truth).max(), 1e-5)
        assert architecture == "transformer" or np.abs(as_unk - truth).max() > PARITY  # outside the tolerance
        np.testing.assert_allclose(by_fallback.logits(SEEN, seen_b, 2), reference, atol=PARITY, rtol=0)
        # the pruned tokenizer gives each kept token its position in ``kept``; with the fallback, the others follow
        encoded = zip(reader.inputs, reader.encode(SEEN, seen_b), runner.encode(SEEN, seen_b), strict=True)
        for name, old, new in encoded:
            assert [kept[row].tolist() for row in new] == old if name in arrays else new == old
        order = np.concatenate([kept, np.setdiff1d(np.arange(encoder.vocab_size), kept)])  # new id -> old id
        encoded = zip(reader.inputs, ids, by_fallback.encode(UNSEEN, unseen_b), strict=True)
        for name, old, new in encoded:
            assert [order[row].tolist() for row in new] == old if name in arrays else new == old
    # the fp32 graph: the pruned tables, and one fallback table of the other rows
    config = deploy.read_config(fallback)
    rows = [rows for rows, _ in table_rows(fallback / "model.onnx").values()]
    assert rows.count(encoder.vocab_size - len(kept)) == 1 and len(kept) in rows and encoder.vocab_size not in rows
    assert config["vocabulary"] == {
        "rows": encoder.vocab_size, "kept": len(kept), "unseen_tokens": "fallback",
        "fallback_rows": encoder.vocab_size - len(kept),
    }  # fmt: skip


def test_int8_stores_the_pruned_tables_as_int8_rows_and_the_table_variant_is_opt_in(tmp_path, tiny_bert_dir):
    model, encoder = build_student(tiny_bert_dir, ["sst2"], hidden_size=32, fc_hidden=32)
    kept = vocabulary_ids(encoder, SEEN + UNSEEN)
    with torch.no_grad():  # a trained student: the trainable channel no longer equals the frozen one
        model.embedding.weight += 0.1 * torch.randn_like(model.embedding.weight)
    assert "table" not in ExportParams().variants
    folder = exported(tmp_path, model, encoder, "sst2", kept, unseen_tokens="unk")  # the default variants
    config = deploy.read_config(folder)
    assert set(config["models"]) == {"onnx", "int8"} and config["default_variant"] == "int8"
    graph = onnx.load(folder / "model-int8.onnx").graph
    tables = {init.name: numpy_helper.to_array(init) for init in graph.initializer if init.name.endswith("_int8")}
    assert len(tables) == 2  # the frozen and the trainable channel
    fp32 = {init.name: numpy_helper.to_array(init) for init in onnx.load(folder / "model.onnx").graph.initializer}
    for name, table in tables.items():
        assert table.dtype == np.int8 and table.shape[0] == len(kept)
        scale = {i.name: numpy_helper.to_array(i) for i in graph.initializer}[name.replace("_int8", "_scale")]
        original = fp32[name.removesuffix("_int8")]
        assert np.abs(table * scale - original).max() <= np.abs(original).max(axis=1).max() / 254 + 1e-7
    assert (folder / "model-int8.onnx").stat().st_size < (folder / "model.onnx").stat().st_size
    int8 = deploy.ExportedStudent(folder).logits(SEEN + UNSEEN, batch_size=1)
    reference = predict(model, encoder, "sst2", SEEN + UNSEEN, None, 1)
    assert 0 < np.abs(int8 - reference).max() < 0.05 * np.abs(reference).max()


def test_fallback_table_is_one_channel_of_the_untrained_rows_in_four_bits(tmp_path, tiny_bert_dir):
    model, encoder = build_student(tiny_bert_dir, ["sst2"], hidden_size=32, fc_hidden=32)
    kept = vocabulary_ids(encoder, SEEN)
    unseen = np.setdiff1d(np.arange(encoder.vocab_size), kept)
    tokens = {t for ids in encoder.encode(UNSEEN) for t in ids} - set(kept.tolist())
    other_task = sorted(tokens)[:2]  # tokens of UNSEEN that the trainable channel learnt (another task's texts)
    with torch.no_grad():
        model.embedding.weight[kept] += 0.1 * torch.randn_like(model.embedding.weight[kept])
        model.embedding.weight[other_task] += 0.1 * torch.randn_like(model.embedding.weight[other_task])
    folder = exported(tmp_path, model, encoder, "sst2", kept, fallback_block_size=128)
    vocabulary = deploy.read_config(folder)["vocabulary"]
    fallback_rows = encoder.vocab_size - len(kept) - len(other_task)
    # the rows whose channels differ are kept whole; the 32 columns take one 4-bit block (128 does not divide them)
    assert vocabulary == {
        "rows": encoder.vocab_size, "kept": len(kept) + 2, "unseen_tokens": "fallback", "fallback_rows": fallback_rows,
        "fallback_int8_bits": 4, "fallback_int8_block": 32, "int8_table_bits": 8,
    }  # fmt: skip
    fp32 = {init.name: numpy_helper.to_array(init) for init in onnx.load(folder / "model.onnx").graph.initializer}
    rest = np.setdiff1d(unseen, other_task)
    np.testing.assert_array_equal(fp32["unseen_token_rows"], model.frozen_embedding.weight[rest].numpy())
    reference = predict(model, encoder, "sst2", SEEN + UNSEEN, None, 1)
    logits = deploy.ExportedStudent(folder, "onnx").logits(SEEN + UNSEEN, batch_size=1)
    np.testing.assert_allclose(logits, reference, atol=PARITY, rtol=0)
    graph = onnx.load(folder / "model-int8.onnx").graph
    packed = {init.name: numpy_helper.to_array(init) for init in graph.initializer}["unseen_token_rows_int4"]
    assert packed.dtype == np.uint8 and packed.shape == (fallback_rows, model.embedding.weight.shape[1] // 2)
    int8 = deploy.ExportedStudent(folder).logits(SEEN + UNSEEN, batch_size=1)
    assert 0 < np.abs(int8 - reference).max() < 0.05 * np.abs(reference).max()
    eight = exported(tmp_path, model, encoder, "sst2", kept, "eight", fallback_bits=8)
    two = exported(tmp_path, model, encoder, "sst2", kept, "two", fallback_bits=2, fallback_block_size=16)
    unk = exported(tmp_path, model, encoder, "sst2", kept, "unk", unseen_tokens="unk")
    sizes = [(path / "model-int8.onnx").stat().st_size for path in (unk, two, folder, eight)]
    assert sizes[0] < sizes[1] < sizes[2] < sizes[3]
    assert deploy.read_config(eight)["vocabulary"]["fallback_int8_bits"] == 8
    graph = onnx.load(two / "model-int8.onnx").graph
    packed = {init.name: numpy_helper.to_array(init) for init in graph.initializer}["unseen_token_rows_int2"]
    assert packed.shape == (fallback_rows, model.embedding.weight.shape[1] // 4)  # four columns a byte
    int2 = deploy.ExportedStudent(two).logits(SEEN + UNSEEN, batch_size=1)
    seen_rows = len(SEEN)  # texts of kept tokens read no fallback row: as the 4-bit fallback's
    np.testing.assert_allclose(int2[:seen_rows], int8[:seen_rows], atol=1e-6, rtol=0)
    assert 0 < np.abs(int2 - reference).max() < 0.1 * np.abs(reference).max()


@pytest.mark.parametrize(("width", "expected"), [(384, (4, 128)), (32, (4, 32)), (48, (4, 16)), (300, (8, 0))])
def test_fallback_blocks_are_the_largest_power_of_two_dividing_the_width(width, expected):
    from pipeline.serving.export import fallback_quantisation

    assert fallback_quantisation(ExportParams(fallback_block_size=128), width) == expected
    two_bits = (2, expected[1]) if expected[0] == 4 else expected  # 2 bits take the same blocks
    assert fallback_quantisation(ExportParams(fallback_bits=2, fallback_block_size=128), width) == two_bits
    assert fallback_quantisation(ExportParams(fallback_bits=8), width) == (8, 0)


def test_two_bit_blocks_unpack_to_their_quantised_values():
    """The 2-bit packing (four columns a byte, the first in the low bits) reads back through GatherBlockQuantized as
    the values rounded to the block scale's steps -2..1, the largest ones clipped."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from pipeline.serving.export import quantized_table

    values = np.array([[0.0, 1.0, -1.0, 0.5, 2.5, -2.5, 0.25, -0.6] * 2], dtype=np.float32)  # one block of 16
    data, scale = quantized_table(values, "t", 2, 16)
    node = helper.make_node("GatherBlockQuantized", ["t_int2", "i", "t_scale"], ["y"], domain="com.microsoft",
                            gather_axis=0, quantize_axis=1, block_size=16, bits=2)  # fmt: skip
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("i", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [data, scale])  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    out = ort.InferenceSession(model.SerializeToString()).run(None, {"i": np.array([0])})[0]
    step = 2.5 / 2.5  # the block's largest |value| over 2.5
    expected = np.array([[0, 1, -1, 0, 1, -2, 0, -1] * 2], dtype=np.float32) * step
    np.testing.assert_array_equal(out, expected)


def test_four_bit_tables_halve_the_int8_tables_and_stay_close(tmp_path, tiny_bert_dir):
    model, encoder = build_student(tiny_bert_dir, ["sst2"], hidden_size=32, fc_hidden=32)
    kept = vocabulary_ids(encoder, SEEN + UNSEEN)
    eight = exported(tmp_path, model, encoder, "sst2", kept, "eight", unseen_tokens="unk")
    four = exported(
        tmp_path, model, encoder, "sst2", kept, "four", unseen_tokens="unk", table_bits=4, table_block_size=16
    )
    graph = onnx.load(four / "model-int8.onnx").graph
    assert "GatherBlockQuantized" in {node.op_type for node in graph.node}
    packed = [numpy_helper.to_array(init) for init in graph.initializer if init.name.endswith("_int4")]
    width = model.embedding.weight.shape[1]
    assert packed and all(t.dtype == np.uint8 and t.shape == (len(kept), width // 2) for t in packed)
    assert (four / "model-int8.onnx").stat().st_size < (eight / "model-int8.onnx").stat().st_size
    reference = predict(model, encoder, "sst2", SEEN + UNSEEN, None, 1)
    logits = deploy.ExportedStudent(four).logits(SEEN + UNSEEN, batch_size=1)
    assert 0 < np.abs(logits - reference).max() < 0.1 * np.abs(reference).max()
    with pytest.raises(ExportError, match="table_block_size: 64 does not divide"):
        exported(tmp_path, model, encoder, "sst2", kept, "bad", table_bits=4, table_block_size=64)


def test_int8_deployable_takes_coarser_tables_until_it_fits_max_deployable_mb(tmp_path, tiny_bert_dir, caplog):
    model, encoder = build_student(tiny_bert_dir, ["sst2"], hidden_size=32, fc_hidden=32)
    kept = vocabulary_ids(encoder, SEEN)
    with torch.no_grad():
        model.embedding.weight[kept] += 0.1 * torch.randn_like(model.embedding.weight[kept])

    def deployable(folder: Path) -> int:
        return sum((folder / name).stat().st_size for name in ("model-int8.onnx", "tokenizer.json"))

    def bits(folder: Path) -> tuple[int, int]:
        vocabulary = deploy.read_config(folder)["vocabulary"]
        return vocabulary["int8_table_bits"], vocabulary["fallback_int8_bits"]

    # without a budget, as set: each coarser setting is smaller
    settings = {(8, 4): {}, (4, 4): {"table_bits": 4}, (4, 2): {"table_bits": 4, "fallback_bits": 2}}
    free = {key: exported(tmp_path, model, encoder, "sst2", kept, f"free{i}", max_deployable_mb=None, **export)
            for i, (key, export) in enumerate(settings.items())}  # fmt: skip
    sizes = {key: deployable(folder) for key, folder in free.items()}
    assert sizes[(8, 4)] > sizes[(4, 4)] > sizes[(4, 2)] and all(bits(free[key]) == key for key in free)
    budgets = {  # MB -> the setting that must be chosen: the finest that fits, else the configured one
        (sizes[(8, 4)] + 1) / 1e6: (8, 4),
        (sizes[(8, 4)] + sizes[(4, 4)]) / 2e6: (4, 4),
        (sizes[(4, 4)] + sizes[(4, 2)]) / 2e6: (4, 2),
        sizes[(4, 2)] / 2e6: (8, 4),
    }
    for i, (budget, expected) in enumerate(budgets.items()):
        caplog.clear()
        folder = exported(tmp_path, model, encoder, "sst2", kept, f"budget{i}", max_deployable_mb=budget)
        assert bits(folder) == expected and deployable(folder) == sizes[expected]
        assert ("over export.max_deployable_mb" in caplog.text) == (sizes[expected] > budget * 1e6)
        np.testing.assert_array_equal(  # the same graph as exporting at those bits
            deploy.ExportedStudent(folder).logits(SEEN + UNSEEN, batch_size=1),
            deploy.ExportedStudent(free[expected]).logits(SEEN + UNSEEN, batch_size=1),
        )
    assert ExportParams().max_deployable_mb == 10


@pytest.mark.parametrize("processor", ["template", "bert"])
def test_pruned_tokenizer_renumbers_the_special_tokens_of_its_template(tiny_bert_dir, processor):
    from tokenizers import Tokenizer, processors

    from pipeline.serving.export import id_map, prune_tokenizer

    _, encoder = build_student(tiny_bert_dir, ["sst2"])
    tokenizer, _ = standalone_tokenizer(encoder)
    if processor == "bert":
        tokenizer.post_processor = processors.BertProcessing(("[SEP]", tokenizer.token_to_id("[SEP]")),
                                                             ("[CLS]", tokenizer.token_to_id("[CLS]")))  # fmt: skip
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    # without the padding id, so that every kept id below the pieces moves down
    kept = np.union1d([encoder.unk_id, cls, sep], tokenizer.encode("the film", add_special_tokens=False).ids)
    new_ids = id_map(kept, encoder.vocab_size, encoder.unk_id)
    pruned = Tokenizer.from_str(prune_tokenizer(tokenizer, new_ids))
    for a, b in (("the film", None), ("the zebra film", "good")):
        old = tokenizer.encode(a, b).ids
        expected = [
            int(np.searchsorted(kept, t)) if t in kept else int(np.searchsorted(kept, encoder.unk_id)) for t in old
        ]
        assert pruned.encode(a, b).ids == expected
        assert expected[0] == int(np.searchsorted(kept, cls)) != cls and expected[-1] != sep


def test_the_kept_vocabulary_comes_from_every_text_of_the_task_but_dev(tmp_path):
    import pyarrow.parquet as pq

    from pipeline.stages.export import texts as table_texts
    from pipeline.stages.export import training_tables

    def write(path: Path, rows: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text_a": rows, "text_b": pa.array([None] * len(rows), pa.string()),
                                 "label": [0] * len(rows)}), path)  # fmt: skip

    prepared, augmented = tmp_path / "prepared", tmp_path / "augmented"
    write(prepared / "sst2" / "train.parquet", ["train one"])
    write(prepared / "sst2" / "dev.parquet", ["dev only"])
    write(paths.unlabelled_text("sst2", prepared), ["unlabelled text"])
    write(augmented / "sst2.parquet", ["train one", "train [MASK]"])
    tables = training_tables(get_task("sst2"), prepared, augmented)
    assert sorted(table_texts(get_task("sst2"), tables)) == [
        "train [MASK]",
        "train one",
        "train one",
        "unlabelled text",
    ]


def test_word_by_word_collection_finds_the_ids_of_whole_texts(tiny_bert_dir):
    _, encoder = build_student(tiny_bert_dir, ["sst2"])
    sample = texts(60, 12) + ["good,bad!  film\tplot\u00a0story", "ZEBRA [MASK]acting"]
    whole = vocabulary_ids(encoder, sample)
    assert vocabulary_ids(encoder, sample, by_word=True).tolist() == whole.tolist()
    assert encoder.unk_id in whole and len(whole) > 10

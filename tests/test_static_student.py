"""The static student: model2vec-initialised embeddings (offline, from a local folder), mean pooling, pair features,
config round trip, KD training by the pipeline's loop on logit shards, and ONNX export parity."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from model2vec.distill import distill
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertTokenizer

from pipeline import paths
from pipeline.data.tasks import get_task
from pipeline.params import ExportParams, Params
from pipeline.serving import catalogue, deploy
from pipeline.serving.export import write_export
from pipeline.stages.static import distill_source, train_static
from pipeline.students.architectures import load_student, save_student
from pipeline.students.inference import predict
from pipeline.students.static import StaticStudent
from tests import conftest
from tests.conftest import make_sentence
from tests.test_student import FILLER, NEGATIVE, POSITIVE, sentiment_rows, write_prepared, write_sst2_shards

PCA_DIMS = 8
PARITY = 1e-5


def static_params(**training: object) -> Params:
    train = {"epochs": 5, "steps": None, "batch_size": 16, "batch_size_pair": 16, "learning_rate": 1e-2, **training}
    return Params.model_validate({"static": {"pca_dims": PCA_DIMS, "hidden_size": 16, "max_length": 16,
                                             "dropout": 0.0, "training": train}})  # fmt: skip


def texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [make_sentence(rng, bool(i % 2)) + (" zebra [MASK] !" if i % 5 == 0 else "") for i in range(n)]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT sequence classifier folder, like models/teacher/<task>, whose WordPiece vocabulary holds
    every word of the test sentences (tests/conftest.py's and tests/test_student.py's)."""
    out = tmp_path_factory.mktemp("classifier")
    words = sorted({*conftest.POSITIVE, *conftest.NEGATIVE, *conftest.FILLER, *POSITIVE, *NEGATIVE, *FILLER, "!", ","})
    (out / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizer.from_pretrained(out)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build(folder: Path, task_names: list[str]) -> tuple[StaticStudent, object]:
    torch.manual_seed(0)
    model, encoder = StaticStudent.build(static_params(), [get_task(t) for t in task_names], folder, [], 0)
    return model.eval(), encoder


def test_embeddings_are_model2vecs_indexed_by_the_teachers_token_ids(classifier_dir: Path) -> None:
    """Distilled offline from a local classifier folder: each token's row is model2vec's vector of that token, and a
    sentence's mean-pooled, L2-normalised vector is what model2vec's own StaticModel.encode gives."""
    model, encoder = build(classifier_dir, ["sst2"])
    reference = distill(model_name=str(classifier_dir), pca_dims=PCA_DIMS, quantize_to="float32")
    tokenizer = AutoTokenizer.from_pretrained(classifier_dir)
    table = model.embedding.weight.detach()
    assert table.shape == (len(tokenizer), PCA_DIMS)
    for token in ("good", "film", "[UNK]"):
        expected = reference.embedding[reference.tokens.index(token)]
        np.testing.assert_allclose(table[tokenizer.convert_tokens_to_ids(token)].numpy(), expected, rtol=0, atol=1e-6)
    assert not table[tokenizer.cls_token_id].any()  # special tokens model2vec leaves out: zero rows
    sentences = ["the film is good", "really dull acting , a weak plot"]
    batch = encoder.encode_inputs(sentences, None).batch(np.arange(2))
    pooled = model.encode(batch["a"], batch["a_lengths"]).detach().numpy()
    np.testing.assert_allclose(pooled, reference.encode(sentences), rtol=0, atol=1e-5)


def test_distill_source_follows_static_distill_from(tiny_bert_dir: Path, tmp_path: Path) -> None:
    teacher = tmp_path / "teacher"
    params = Params.model_validate({"teacher": {"checkpoint": str(tiny_bert_dir)}})
    assert distill_source(params, teacher) == teacher
    params = Params.model_validate(
        {"teacher": {"checkpoint": str(tiny_bert_dir)}, "static": {"distill_from": "checkpoint"}}
    )
    assert distill_source(params, teacher) == tiny_bert_dir


@pytest.mark.parametrize("task_name", ["sst2", "mrpc", "stsb"])
def test_forward_shapes_and_padding_invariance(classifier_dir: Path, task_name: str) -> None:
    """Logits [batch, outputs] for single and pair tasks; a row's logits do not depend on the batch's padding."""
    model, encoder = build(classifier_dir, [task_name])
    task = get_task(task_name)
    text_a, text_b = texts(6, 1), (texts(6, 2) if task.is_pair else None)
    inputs = encoder.encode_inputs(text_a, text_b)
    together = model(task_name, inputs.batch(np.arange(6)))
    assert together.shape == (6, task.num_outputs)
    alone = torch.cat([model(task_name, inputs.batch(np.array([i]))) for i in range(6)])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=1e-5)
    if task.is_pair:  # the sides are not interchangeable inputs of the same features: swapping them changes a, b order
        swapped = model(task_name, encoder.encode_inputs(text_b, text_a).batch(np.arange(6)))
        assert not torch.allclose(swapped, together)


def test_config_round_trip(classifier_dir: Path, tmp_path: Path) -> None:
    model, encoder = build(classifier_dir, ["sst2", "mrpc"])
    with torch.no_grad():
        model.embedding.weight.add_(1.0)  # not the distilled table any more: the saved weights must be loaded
    save_student(model, encoder, tmp_path / "saved", {})
    loaded, loaded_encoder = load_student(tmp_path / "saved", torch.device("cpu"))
    assert isinstance(loaded, StaticStudent) and loaded.config() == model.config()
    for task_name, text_b in (("sst2", None), ("mrpc", texts(9, 4))):
        expected = predict(model, encoder, task_name, texts(9, 3), text_b, 4)
        np.testing.assert_array_equal(predict(loaded, loaded_encoder, task_name, texts(9, 3), text_b, 4), expected)


def test_kd_training_learns_the_teachers_labels(classifier_dir: Path, tmp_path: Path) -> None:
    """train_static (the pipeline's KD loop on logit shards, synthetic rows without labels included) lowers the loss,
    reaches the teacher's answers on dev, trains the embedding rows of the transfer set's tokens only, and saves a
    student that reproduces its dev metric."""
    shards, prepared = tmp_path / "logits", tmp_path / "prepared"
    write_sst2_shards(shards)
    dev = sentiment_rows(60, seed=2)
    write_prepared(prepared, "sst2", "dev", dev)
    out, log_dir = tmp_path / "static", tmp_path / "log"
    summary = train_static(get_task("sst2"), static_params(), shards, prepared, classifier_dir, out, log_dir)
    assert summary["train_rows"] == {"sst2": 200} and summary["dev"]["sst2"]["accuracy"] >= 0.9
    curve = [line.split("\t")[1] for line in (log_dir / "plots/metrics/train/loss.tsv").read_text().splitlines()[1:]]
    assert float(curve[-1]) < float(curve[0])
    model, encoder = load_student(out, torch.device("cpu"))
    assert isinstance(model, StaticStudent)
    initial, _ = build(classifier_dir, ["sst2"])
    changed = (model.embedding.weight != initial.embedding.weight).any(dim=1)
    seen = set(np.concatenate(encoder.encode(pq.read_table(shards).column("text_a").to_pylist())).tolist())
    assert changed.any() and set(torch.nonzero(changed)[:, 0].tolist()) <= seen
    logits = predict(model, encoder, "sst2", [row["text_a"] for row in dev], None, 7)
    accuracy = float((logits.argmax(axis=1) == np.array([row["label"] for row in dev])).mean())
    assert accuracy == pytest.approx(summary["dev"]["sst2"]["accuracy"])


@pytest.mark.parametrize("task_name", ["sst2", "mrpc"])
def test_onnx_export_matches_pytorch(classifier_dir: Path, tmp_path: Path, task_name: str) -> None:
    """The generic export handles the static student: fp32 ONNX equals PyTorch on padded batches and one text at a
    time; int8 is written; the BiLSTM-only table variant is skipped."""
    model, encoder = build(classifier_dir, [task_name])
    write_export(model, encoder, get_task(task_name), tmp_path, ExportParams(variants=["int8", "table"]), {})
    assert set(deploy.read_config(tmp_path)["models"]) == {"onnx", "int8"}
    text_a, text_b = texts(20, 5), (texts(20, 6) if get_task(task_name).is_pair else None)
    reference = predict(model, encoder, task_name, text_a, text_b, 8)
    runner = deploy.ExportedStudent(tmp_path, "onnx")
    for batch_size in (1, 8):
        np.testing.assert_allclose(runner.logits(text_a, text_b, batch_size), reference, atol=PARITY, rtol=0)
    # one text per call (the single-row path: no sorting or padding), as a server at batch size 1 calls it
    alone = [runner.logits([a], None if text_b is None else [text_b[i]]) for i, a in enumerate(text_a)]
    np.testing.assert_allclose(np.concatenate(alone), reference, atol=PARITY, rtol=0)
    int8 = deploy.ExportedStudent(tmp_path, "int8").logits(text_a, text_b, 8)
    assert int8.shape == reference.shape and np.abs(int8 - reference).max() < 0.1


def test_catalogue_names_the_static_student_and_its_exports(classifier_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """``static`` loads models/static/<task>, ``static-onnx`` / ``static-int8`` its export; evaluate and compare list
    them (single_task_models) once they exist, and a missing export names the stage to run."""
    monkeypatch.chdir(tmp_path)
    task = get_task("sst2")
    model, encoder = build(classifier_dir, ["sst2"])
    save_student(model, encoder, paths.static_dir("sst2"), {})
    params = Params()
    with pytest.raises(FileNotFoundError, match="export_static@sst2"):
        catalogue.model_source("static-onnx", task, params)
    export_dir = paths.static_export_dir("sst2")
    export_dir.mkdir(parents=True)
    write_export(model, encoder, task, export_dir, ExportParams(variants=["int8"]), {})
    assert {"static", "static-onnx", "static-int8"} <= set(catalogue.single_task_models(task, params))
    text_a = texts(12, 7)
    reference = predict(model, encoder, "sst2", text_a, None, 4)
    np.testing.assert_array_equal(catalogue.load_model("static", task, params).logits(text_a, None, 4), reference)
    onnx = catalogue.load_model("static-onnx", task, params).logits(text_a, None, 4)
    np.testing.assert_allclose(onnx, reference, atol=PARITY, rtol=0)

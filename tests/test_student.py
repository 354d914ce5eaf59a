"""BiLSTM student: encoders, model, distillation loss, and end-to-end training on tiny synthetic data."""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import ANY

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import yaml
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

from pipeline.data.batching import bucket_batches
from pipeline.data.schema import prepared_schema, shard_schema
from pipeline.data.tasks import Task, get_task
from pipeline.errors import ParamsError, ShardError
from pipeline.params import BiLSTMParams, Params, StudentParams, TrainParams, load_params
from pipeline.stages.baseline import train_baseline
from pipeline.stages.score import write_manifest
from pipeline.stages.student import train_student
from pipeline.students.architectures import load_student
from pipeline.students.base import count_parameters
from pipeline.students.bilstm import BiLSTMStudent
from pipeline.students.encoding import (
    StudentEncoder,
    TokenArray,
    WordEncoder,
    build_encoder,
    build_word_vocab,
    read_word_vectors,
)
from pipeline.students.inference import predict
from pipeline.training import device
from pipeline.training import fit as fit_module
from pipeline.training.accelerator import USE_CPU_ENV, accelerated
from pipeline.training.fit import step_optimizers
from pipeline.training.losses import distillation_loss
from pipeline.training.optim import SparseAdadelta
from pipeline.training.student_data import distillation_targets, read_shards
from tests.conftest import REPO_ROOT
from tests.recompute import task_metrics

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE = ["good", "great", "fine", "lovely"]
NEGATIVE = ["bad", "awful", "poor", "dull"]
FILLER = ["the", "a", "movie", "film", "was", "is", "really", "very", "plot", "acting", "and", "."]
TEACHER_HIDDEN = 32


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT classifier saved with its WordPiece tokenizer."""
    root = tmp_path_factory.mktemp("teacher")
    (root / "vocab.txt").write_text("\n".join(SPECIALS + FILLER + POSITIVE + NEGATIVE + ["##s"]) + "\n")
    tokenizer = BertTokenizer.from_pretrained(root)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEACHER_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        num_labels=2,
    )
    out = root / "model"
    torch.manual_seed(0)  # the tests' outcomes depend on these random weights (the students' WordPiece embeddings)
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tiny_params(epochs: int = 6, alpha: float = 0.0, optimizer: str = "adam", **bilstm: object) -> Params:
    learning_rate = 0.01 if optimizer == "adam" else 1.0
    train = {
        "epochs": epochs,
        "batch_size": 16,
        "optimizer": optimizer,
        "learning_rate": learning_rate,
        "patience": 3,
        "batch_size_pair": 256,
        "mixed_precision": "fp32",
    }
    return Params(
        bilstm=BiLSTMParams(**{"hidden_size": 16, "fc_hidden": 16, "max_length": 16, "dropout": 0.0, **bilstm}),
        student=StudentParams(alpha=alpha, **train),
        baseline=TrainParams(**train),
    )


def sentence(rng: random.Random, positive: bool) -> str:
    words = rng.choices(FILLER, k=rng.randint(1, 6))
    words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if positive else NEGATIVE))
    return " ".join(words)


def sentiment_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        rows.append({"id": i, "text_a": sentence(rng, bool(label)), "text_b": None, "label": label})
    return rows


def write_prepared(root: Path, task_name: str, split: str, rows: list[dict]) -> None:
    table = pa.Table.from_pylist(rows, schema=prepared_schema(get_task(task_name)))
    (root / task_name).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / task_name / f"{split}.parquet")


def write_sst2_shards(shard_dir: Path, n_original: int = 100) -> None:
    """Originals plus one masked synthetic copy each (label null); teacher logits agree with the sentiment."""
    rows = []
    for row in sentiment_rows(n_original, seed=1):
        logits = [-2.0, 2.0] if row["label"] else [2.0, -2.0]
        base = {"source_id": row["id"], "text_b": None, "logits": logits, "is_unlabelled": False}
        original = {"id": 2 * row["id"], "is_original": True, "text_a": row["text_a"], "label": row["label"], "ops": []}
        masked = {"id": 2 * row["id"] + 1, "is_original": False, "text_a": "[MASK] " + row["text_a"], "ops": ["mask"]}
        rows += [{**base, **original}, {**base, **masked, "label": None}]
    table = pa.Table.from_pylist(rows, schema=shard_schema(get_task("sst2")))
    shard_dir.mkdir(parents=True)
    half = len(rows) // 2
    pq.write_table(table.slice(0, half), shard_dir / "part-00000.parquet")
    pq.write_table(table.slice(half), shard_dir / "part-00001.parquet")
    write_manifest(get_task("sst2"), shard_dir, {}, Params())


# ---------------------------------------------------------------- model


# A single-sentence task with three classes, and a sentence-pair task with three (MNLI).
SINGLE = Task("toy", "TOY", ("sentence",), "label", ("a", "b", "c"), ("accuracy",))
PAIR = get_task("mnli")


def make_model(pooling: str = "max", multichannel: bool = True) -> BiLSTMStudent:
    """A small two-task model: 20-word vocabulary, 6-d embeddings, 8 LSTM units per direction, 12-unit ReLU layers."""
    torch.manual_seed(0)
    params = BiLSTMParams(hidden_size=8, fc_hidden=12, pooling=pooling, multichannel=multichannel, dropout=0.1)
    return BiLSTMStudent(params, torch.randn(20, 6), [SINGLE, PAIR])


def batch(lengths: list[int], seed: int = 0, side: str = "a") -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, 20, (n,), generator=generator)
    return {side: ids, f"{side}_lengths": torch.tensor(lengths)}


def task_batch(pair: bool, a: list[int], b: list[int], seed: int = 0) -> tuple[str, dict[str, torch.Tensor]]:
    if pair:
        return PAIR.name, {**batch(a, seed), **batch(b, seed + 1, side="b")}
    return SINGLE.name, batch(a, seed)


@pytest.mark.parametrize("pooling", ["max", "last"])
@pytest.mark.parametrize("pair", [False, True])
def test_forward_shapes(pooling: str, pair: bool) -> None:
    model = make_model(pooling)
    assert model(*task_batch(pair, [3, 5, 1, 2], [7, 1, 2, 4])).shape == (4, 3)


@pytest.mark.parametrize("pooling", ["max", "last"])
@pytest.mark.parametrize("pair", [False, True])
def test_padding_invariance(pooling: str, pair: bool) -> None:
    """A sentence's output does not change when it is batched with longer sentences (eval mode)."""
    model = make_model(pooling).eval()
    task, alone_batch = task_batch(pair, [3], [2], seed=5)
    alone = model(task, alone_batch)

    def with_longer(side: str, seed: int) -> dict[str, torch.Tensor]:
        others = batch([9, 6], seed=seed, side=side)
        ids = alone_batch[side]
        return {
            side: torch.cat([F.pad(ids, (0, 9 - ids.shape[1])), others[side]]),
            f"{side}_lengths": torch.cat([alone_batch[f"{side}_lengths"], others[f"{side}_lengths"]]),
        }

    together = model(task, {**with_longer("a", 2), **(with_longer("b", 3) if pair else {})})
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=1e-5)


def test_bilstm_matches_packed_bidirectional_lstm() -> None:
    """The padded two-direction LSTM computes what torch's packed bidirectional LSTM computes."""
    model = make_model().eval()
    reference = torch.nn.LSTM(12, 8, batch_first=True, bidirectional=True)
    for suffix, direction in (("", model.lstm.forward_lstm), ("_reverse", model.lstm.backward_lstm)):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(reference, f"{name}_l0{suffix}").data.copy_(getattr(direction, f"{name}_l0"))
    inputs = batch([4, 2, 7, 1])
    embedded = torch.cat([model.frozen_embedding(inputs["a"]), model.embedding(inputs["a"])], dim=-1)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        embedded, inputs["a_lengths"], batch_first=True, enforce_sorted=False
    )
    expected, (hidden, _) = reference(packed)
    expected, _ = torch.nn.utils.rnn.pad_packed_sequence(expected, batch_first=True)
    outputs, final = model.lstm(embedded, inputs["a_lengths"])
    real = torch.arange(7)[None, :] < inputs["a_lengths"][:, None]
    torch.testing.assert_close(outputs[real], expected[real], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(final, torch.cat([hidden[0], hidden[1]], dim=-1), atol=1e-6, rtol=1e-5)


def test_multichannel_gradients() -> None:
    model = make_model(multichannel=True)
    assert not model.frozen_embedding.weight.requires_grad
    model(*task_batch(False, [3, 4], [])).sum().backward()
    assert model.frozen_embedding.weight.grad is None
    assert model.embedding.weight.grad is not None and model.embedding.weight.grad.to_dense().abs().sum() > 0
    for name, param in model.lstm.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert model.lstm.forward_lstm.input_size == 12  # frozen + trainable copies of the 6-d embeddings
    assert model.sparse_parameters() == [model.embedding.weight]


def test_single_channel_has_one_trainable_table() -> None:
    model = make_model(multichannel=False)
    assert model.frozen_embedding is None and model.lstm.forward_lstm.input_size == 6


def test_parameter_count_matches_formula() -> None:
    model = make_model()
    d_in, h, fc, vocab, dim = 12, 8, 12, 20, 6
    lstm = 2 * (4 * h * d_in + 4 * h * h + 2 * 4 * h)  # two directions, W_ih, W_hh, two bias vectors
    heads = sum(features * fc + fc + fc * 3 + 3 for features in (2 * h, 8 * h))  # single-sentence head, pair head
    assert count_parameters(model, include_embeddings=False) == lstm + heads
    assert count_parameters(model, include_embeddings=True) == lstm + heads + 2 * vocab * dim


def test_config_round_trip() -> None:
    model = make_model().eval()
    rebuilt = BiLSTMStudent.from_config(json.loads(json.dumps(model.config())), [SINGLE, PAIR])
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    for pair in (False, True):
        torch.testing.assert_close(rebuilt(*task_batch(pair, [3, 5], [2, 4])), model(*task_batch(pair, [3, 5], [2, 4])))


def test_paper_size_is_096m() -> None:
    """Tang et al.'s SST-2 student: 300-d multichannel, 150 units per direction, 200-unit ReLU layer."""
    params = BiLSTMParams(hidden_size=150, fc_hidden=200, multichannel=True)
    model = BiLSTMStudent(params, torch.zeros(10, 300), [get_task("sst2")])
    assert round(count_parameters(model, include_embeddings=False) / 1e6, 2) == 0.96


# ---------------------------------------------------------------- loss


def test_distillation_loss_hand_computed() -> None:
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, -0.5]])
    teacher = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    labels = torch.tensor([1, 1, 0])
    mask = torch.tensor([True, True, False])  # third row unlabelled: hard target = teacher argmax = 1
    hard = torch.tensor([1, 1, 1])
    ce = -torch.log_softmax(student, dim=-1)[torch.arange(3), hard].mean()
    mse = ((student - teacher) ** 2).mean()
    for alpha, expected in [(0.0, mse), (1.0, ce), (0.5, 0.5 * ce + 0.5 * mse)]:
        got = distillation_loss(student, teacher, labels, mask, alpha, regression=False)
        torch.testing.assert_close(got, expected)
    # The unlabelled row's placeholder label (0) must not be used.
    wrong = -torch.log_softmax(student, dim=-1)[torch.arange(3), labels].mean()
    assert not torch.isclose(distillation_loss(student, teacher, labels, mask, 1.0, False), wrong)


def test_distillation_loss_regression() -> None:
    student = torch.tensor([[1.0], [3.0]])
    teacher = torch.tensor([[2.0], [5.0]])
    labels = torch.tensor([0.0, 0.0])
    mask = torch.tensor([True, False])  # second row: target = teacher score 5
    hard_mse = ((1.0 - 0.0) ** 2 + (3.0 - 5.0) ** 2) / 2
    soft_mse = ((1.0 - 2.0) ** 2 + (3.0 - 5.0) ** 2) / 2
    got = distillation_loss(student, teacher, labels, mask, 0.25, regression=True)
    assert got.item() == pytest.approx(0.25 * hard_mse + 0.75 * soft_mse)


def test_sparse_adadelta_equals_dense_adadelta() -> None:
    """Rows skipped by some batches end up exactly where dense Adadelta (zero gradients) puts them."""
    torch.manual_seed(0)
    init = torch.randn(8, 3, dtype=torch.float64)
    sparse = torch.nn.Embedding.from_pretrained(init.clone(), freeze=False, sparse=True)
    dense = torch.nn.Embedding.from_pretrained(init.clone(), freeze=False)
    sparse_opt = SparseAdadelta(sparse.parameters(), lr=1.0, rho=0.9)
    dense_opt = torch.optim.Adadelta(dense.parameters(), lr=1.0, rho=0.9)
    for ids in ([0, 1, 1], [2], [0, 5, 7], [3], [1, 2, 3, 0], [7]):
        for module, optimizer in ((sparse, sparse_opt), (dense, dense_opt)):
            optimizer.zero_grad()
            (module(torch.tensor(ids)) ** 2).sum().backward()
            optimizer.step()
        torch.testing.assert_close(sparse.weight, dense.weight)
    assert not torch.equal(sparse.weight, init)


# ---------------------------------------------------------------- encoders and batching


def test_token_array_batch_pads() -> None:
    tokens = TokenArray.concat([TokenArray.from_lists([[5, 6, 7], [8]]), TokenArray.from_lists([[9, 10]])])
    ids, lengths = tokens.batch(np.array([2, 1, 0]), pad_id=0)
    assert ids.tolist() == [[9, 10, 0], [8, 0, 0], [5, 6, 7]] and lengths.tolist() == [2, 1, 3]


def test_bucket_batches_cover_every_row_once() -> None:
    lengths = np.random.default_rng(0).integers(1, 50, size=1000)
    batches = bucket_batches(lengths, 10, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert max(len(b) for b in batches) == 10
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread < 5  # sorted within chunks: batches hold similar lengths


def test_wordpiece_encoder(teacher_dir: Path, tmp_path: Path) -> None:
    encoder, matrix = build_encoder(BiLSTMParams(max_length=4), teacher_dir, [], seed=0)
    teacher = BertForSequenceClassification.from_pretrained(teacher_dir)
    torch.testing.assert_close(matrix, teacher.get_input_embeddings().weight.detach())
    assert encoder.vocab_size == len(matrix)
    texts = ["The [MASK] movie", "", "good good good good good good", "zzz"]
    ids = encoder.encode(texts)
    vocab = encoder.tokenizer.get_vocab()
    assert ids[0] == [vocab["the"], encoder.unk_id, vocab["movie"]]
    assert ids[1] == [encoder.unk_id]
    assert ids[2] == [vocab["good"]] * 4
    assert ids[3] == [encoder.unk_id]
    encoder.save(tmp_path / "enc")
    assert StudentEncoder.load(tmp_path / "enc").encode(texts) == ids


def test_word_encoder(tmp_path: Path) -> None:
    texts = ["Good movie, good!", "a [MASK] movie", "rare"]
    assert build_word_vocab(texts, min_freq=2) == ["[PAD]", "[UNK]", "good", "movie"]
    params = BiLSTMParams(embeddings="word", embedding_dim=7, max_length=3)
    encoder, matrix = build_encoder(params, Path("unused"), texts, seed=0)
    assert isinstance(encoder, WordEncoder) and matrix.shape == (encoder.vocab_size, 7)
    assert matrix[encoder.pad_id].abs().sum() == 0
    ids = encoder.encode(["GOOD [MASK] unseen words", ""])
    good = encoder.words.index("good")
    assert ids == [[good, encoder.unk_id, encoder.unk_id], [encoder.unk_id]]
    encoder.save(tmp_path / "enc")
    loaded = StudentEncoder.load(tmp_path / "enc")
    assert loaded.encode(texts) == encoder.encode(texts) and loaded.vocab_size == encoder.vocab_size
    _, again = build_encoder(params, Path("unused"), texts, seed=0)
    torch.testing.assert_close(again, matrix)  # seeded init


@pytest.mark.parametrize("header", [True, False])
def test_read_word_vectors(tmp_path: Path, header: bool) -> None:
    path = tmp_path / "vectors.txt"
    lines = ["Good 9 9 9", "good 1 2 3", "GOOD 8 8 8", "Movie 4 5 6", "absent 0 0 0"]
    path.write_text(("5 3\n" if header else "") + "\n".join(lines) + "\n")
    words = ["[PAD]", "[UNK]", "good", "movie", "other"]
    matrix, found = read_word_vectors(path, words, torch.Generator().manual_seed(0))
    assert matrix.shape == (5, 3) and found == 2
    assert matrix[2].tolist() == [1, 2, 3]  # exact-case entry wins
    assert matrix[3].tolist() == [4, 5, 6]  # otherwise the first casing
    assert matrix[4].abs().sum() > 0  # random init for words without a vector


@pytest.mark.parametrize("bad_line", ["good 1 2", "good 1 x 3"])
def test_read_word_vectors_malformed_line_names_file_and_line(tmp_path: Path, bad_line: str) -> None:
    path = tmp_path / "vectors.txt"
    path.write_text(f"movie 4 5 6\n{bad_line}\n")
    with pytest.raises(ValueError, match=r"vectors\.txt:2: "):
        read_word_vectors(path, ["[PAD]", "[UNK]", "good", "movie"], torch.Generator())


def test_vectors_embeddings_via_builder(tmp_path: Path) -> None:
    path = tmp_path / "vectors.txt"
    path.write_text("good 1 2\nmovie 3 4\n")
    params = BiLSTMParams(embeddings="vectors", vectors_path=path)
    encoder, matrix = build_encoder(params, Path("unused"), ["good movie", "bad"], seed=0)
    assert matrix.shape == (encoder.vocab_size, 2)
    assert matrix[encoder.encode(["movie"])[0][0]].tolist() == [3, 4]


# ---------------------------------------------------------------- training end to end


def read_log(log_dir: Path) -> tuple[dict, dict[str, list[float]]]:
    """DVCLive summary (metrics.json) and curves (plots/metrics/**.tsv, name -> values per step)."""
    summary = json.loads((log_dir / "metrics.json").read_text())
    curves = {}
    for path in sorted((log_dir / "plots" / "metrics").rglob("*.tsv")):
        rows = path.read_text().splitlines()[1:]
        curves[path.relative_to(log_dir / "plots" / "metrics").with_suffix("").as_posix()] = [
            float(row.split("\t")[1]) for row in rows
        ]
    return summary, curves


def assert_saved_model_reproduces(
    model_dir: Path, prepared: Path, task_name: str, metric: str, value: float
) -> np.ndarray:
    """load_student + predict on the dev split give ``value`` for ``metric`` again, scored by sklearn/scipy
    (``tests.recompute``, not the pipeline's metrics code); return the logits."""
    task = get_task(task_name)
    dev = pq.read_table(prepared / task_name / "dev.parquet")
    model, encoder = load_student(model_dir)
    text_b = dev.column("text_b").to_pylist() if task.is_pair else None
    logits = predict(model, encoder, task_name, dev.column("text_a").to_pylist(), text_b, batch_size=7)
    assert logits.dtype == np.float32 and logits.shape == (len(dev), task.num_outputs)
    assert task_metrics(task_name, logits, dev.column("label").to_numpy())[metric] == pytest.approx(value, abs=1e-6)
    return logits


def test_train_student_learns(teacher_dir: Path, tmp_path: Path) -> None:
    shards, prepared = tmp_path / "logits", tmp_path / "prepared"
    write_sst2_shards(shards)
    write_prepared(prepared, "sst2", "dev", sentiment_rows(60, seed=2))
    out, log_dir = tmp_path / "student", tmp_path / "dvclive" / "student"
    summary = train_student(get_task("sst2"), tiny_params(), shards, prepared, teacher_dir, out, log_dir)

    accuracy = summary["dev"]["sst2"]["accuracy"]
    assert summary["train_rows"] == {"sst2": 200} and accuracy >= 0.85
    assert 0 < summary["parameters"] < summary["parameters_with_embeddings"]
    assert {p.name for p in out.iterdir()} == {"model.pt", "config.json", "encoder"}
    logged, curves = read_log(log_dir)
    assert set(curves) == {"train/loss", "dev/accuracy"}
    assert len(curves["train/loss"]) == summary["epochs_run"] and curves["train/loss"][-1] < curves["train/loss"][0]
    assert curves["dev/accuracy"][summary["best_epoch"] - 1] == pytest.approx(accuracy)
    assert logged == {"dev": {"sst2": pytest.approx(accuracy)}, "best_epoch": summary["best_epoch"], "step": ANY}
    assert_saved_model_reproduces(out, prepared, "sst2", "accuracy", accuracy)


def test_train_student_is_deterministic(teacher_dir: Path, tmp_path: Path) -> None:
    """Same seed, data and thread count: byte-identical weights."""
    shards, prepared = tmp_path / "logits", tmp_path / "prepared"
    write_sst2_shards(shards, n_original=40)
    write_prepared(prepared, "sst2", "dev", sentiment_rows(20, seed=2))
    for run in ("one", "two"):
        train_student(
            get_task("sst2"),
            tiny_params(epochs=2),
            shards,
            prepared,
            teacher_dir,
            tmp_path / run,
            tmp_path / f"log-{run}",
        )
    assert (tmp_path / "one" / "model.pt").read_bytes() == (tmp_path / "two" / "model.pt").read_bytes()


@pytest.mark.parametrize(
    ("mixed_precision", "native_bf16", "expected"),
    [("auto", True, "bf16"), ("auto", False, "no"), ("fp32", True, "no"), ("bf16", False, "bf16")],
)
def test_students_train_in_the_training_precision_on_cpu(monkeypatch, mixed_precision, native_bf16, expected) -> None:
    """Students take the teacher's precision rule (``device.training_precision``) through Accelerate."""
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native_bf16)
    monkeypatch.setenv(USE_CPU_ENV, "1")
    with accelerated(mixed_precision, several_tasks=False) as accelerator:
        assert accelerator.mixed_precision == expected


def test_fp16_grad_scaler_steps_the_dense_and_the_sparse_optimizer_then_updates_once() -> None:
    """fp16 training (GPUs without bf16): the scaled gradients reach both optimizers unscaled, and a step with an
    inf gradient is skipped by both, halving the scale once."""

    def make() -> tuple[torch.nn.Embedding, torch.nn.Linear, list[torch.optim.Optimizer]]:
        torch.manual_seed(0)
        embedding, linear = torch.nn.Embedding(10, 4, sparse=True), torch.nn.Linear(4, 1)
        return (
            embedding,
            linear,
            [torch.optim.Adadelta(linear.parameters()), SparseAdadelta(embedding.parameters(), 1.0, 0.9)],
        )

    def loss(embedding: torch.nn.Embedding, linear: torch.nn.Linear, scale: float = 1.0) -> torch.Tensor:
        return linear(embedding(torch.tensor([1, 3, 3]))).sum() * scale

    embedding, linear, optimizers = make()
    loss(embedding, linear).backward()
    for optimizer in optimizers:
        optimizer.step()
    scaled = make()
    accelerator = SimpleNamespace(scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))
    accelerator.scaler.scale(loss(*scaled[:2])).backward()
    step_optimizers(scaled[2], accelerator)  # type: ignore[arg-type]
    assert torch.equal(scaled[0].weight, embedding.weight) and torch.equal(scaled[1].weight, linear.weight)

    before = [scaled[0].weight.clone(), scaled[1].weight.clone()]
    for optimizer in scaled[2]:
        optimizer.zero_grad(set_to_none=True)
    accelerator.scaler.scale(loss(*scaled[:2], scale=math.inf)).backward()
    step_optimizers(scaled[2], accelerator)  # type: ignore[arg-type]
    assert torch.equal(scaled[0].weight, before[0]) and torch.equal(scaled[1].weight, before[1])
    assert accelerator.scaler.get_scale() == 2.0**9


@pytest.mark.skipif(
    not device.cpu_has_native_bf16(), reason="oneDNN has no bf16 LSTM kernel on a CPU without AVX512-BF16/AMX"
)
def test_train_student_in_bf16_learns_and_keeps_fp32_weights(teacher_dir: Path, tmp_path: Path) -> None:
    """bf16 autocast (what ``auto`` picks on a CPU with native bf16) trains other weights than fp32, as well, and
    saves fp32 weights."""
    shards, prepared = tmp_path / "logits", tmp_path / "prepared"
    write_sst2_shards(shards)
    write_prepared(prepared, "sst2", "dev", sentiment_rows(60, seed=2))
    weights = {}
    for precision in ("fp32", "bf16"):
        params = tiny_params()
        params = params.model_copy(update={"student": params.student.model_copy(update={"mixed_precision": precision})})
        out, log_dir = tmp_path / precision, tmp_path / f"log-{precision}"
        summary = train_student(get_task("sst2"), params, shards, prepared, teacher_dir, out, log_dir)
        assert summary["dev"]["sst2"]["accuracy"] >= 0.85, precision
        model, _ = load_student(out)
        weights[precision] = model.lstm.forward_lstm.weight_ih_l0
        assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    assert not torch.equal(weights["fp32"], weights["bf16"])


def test_logit_temperature_divides_classification_targets_only() -> None:
    """``student.logit_temperature`` scales a classifier's teacher logits; a regression score stays the score."""
    rows = [{"id": 0, "source_id": 0, "is_original": True, "is_unlabelled": False, "text_a": "a", "text_b": "b",
             "ops": []}]  # fmt: skip
    for name, label, logits, expected in (("mrpc", 1, [-1.0, 3.0], [-0.25, 0.75]), ("stsb", 4.2, [4.0], [4.0])):
        task = get_task(name)
        table = pa.Table.from_pylist([{**rows[0], "label": label, "logits": logits}], schema=shard_schema(task))
        assert distillation_targets(task, table, 4.0)["teacher"].tolist() == [expected]
        assert distillation_targets(task, table)["teacher"].tolist() == [logits]


def test_logit_temperature_shrinks_the_students_logits(teacher_dir: Path, tmp_path: Path) -> None:
    """The student regresses the divided logits: at temperature 4 its dev logits are several times smaller than at
    1, and it still learns the task."""
    shards, prepared = tmp_path / "logits", tmp_path / "prepared"
    write_sst2_shards(shards)
    write_prepared(prepared, "sst2", "dev", sentiment_rows(60, seed=2))
    mean_abs = {}
    for temperature in (1.0, 4.0):
        params = tiny_params()
        params = params.model_copy(
            update={"student": params.student.model_copy(update={"logit_temperature": temperature})}
        )
        out = tmp_path / f"t{temperature:g}"
        summary = train_student(
            get_task("sst2"), params, shards, prepared, teacher_dir, out, tmp_path / f"log{temperature:g}"
        )
        accuracy = summary["dev"]["sst2"]["accuracy"]
        assert accuracy >= 0.85
        mean_abs[temperature] = np.abs(
            assert_saved_model_reproduces(out, prepared, "sst2", "accuracy", accuracy)
        ).mean()
    assert 0.1 < mean_abs[4.0] / mean_abs[1.0] < 0.5


def test_train_baseline_learns(teacher_dir: Path, tmp_path: Path) -> None:
    prepared = tmp_path / "prepared"
    write_prepared(prepared, "sst2", "train", sentiment_rows(200, seed=3))
    write_prepared(prepared, "sst2", "dev", sentiment_rows(60, seed=2))
    out, log_dir = tmp_path / "baseline", tmp_path / "dvclive" / "baseline"
    params = tiny_params(embeddings="word", embedding_dim=16, multichannel=False, pooling="last")
    summary = train_baseline(get_task("sst2"), params, prepared, teacher_dir, out, log_dir)
    assert summary["dev"]["sst2"]["accuracy"] >= 0.85
    assert (log_dir / "metrics.json").exists() and (out / "encoder" / "words.txt").exists()
    assert_saved_model_reproduces(out, prepared, "sst2", "accuracy", summary["dev"]["sst2"]["accuracy"])


def test_train_student_regression_pairs(teacher_dir: Path, tmp_path: Path) -> None:
    task = get_task("stsb")
    rng = random.Random(4)
    rows = []
    for i in range(60):
        a, b = sentence(rng, i % 2 == 0), sentence(rng, i % 3 == 0)
        score = float(rng.uniform(0, 5))
        original = i % 2 == 0
        rows.append({
            "id": i, "source_id": i, "is_original": original, "is_unlabelled": False, "text_a": a, "text_b": b,
            "label": score if original else None, "ops": [], "logits": [score],
        })  # fmt: skip
    shards, prepared = tmp_path / "logits", tmp_path / "prepared"
    shards.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=shard_schema(task)), shards / "part-00000.parquet")
    write_manifest(task, shards, {}, Params())
    dev = [{"id": r["id"], "text_a": r["text_a"], "text_b": r["text_b"], "label": r["logits"][0]} for r in rows[:20]]
    write_prepared(prepared, "stsb", "dev", dev)
    params = tiny_params(epochs=2, alpha=0.5, optimizer="adadelta")
    summary = train_student(task, params, shards, prepared, teacher_dir, tmp_path / "out", tmp_path / "log")
    assert set(read_log(tmp_path / "log")[1]) == {"train/loss", "dev/pearson", "dev/spearman"}
    pearson = summary["dev"]["stsb"]["pearson"]
    logits = assert_saved_model_reproduces(tmp_path / "out", prepared, "stsb", "pearson", pearson)
    assert logits.shape == (20, 1)


def test_student_refuses_corrupted_shards(tmp_path):
    shard_dir = tmp_path / "logits"
    write_sst2_shards(shard_dir, n_original=10)
    (shard_dir / "part-00001.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(ShardError, match="part-00001.parquet: checksum mismatch"):
        read_shards(get_task("sst2"), shard_dir)


# ---------------------------------------------------------------- training budget and early stopping


@pytest.mark.parametrize(
    ("steps", "steps_per_epoch", "expected"),
    [(10000, 17687, 1), (20000, 17687, 1), (10000, 2560, 4), (10000, 570, 18), (10000, 157, 64), (40, 13, 3),
     (100, 13, 8)],
)  # fmt: skip
def test_max_epochs_follow_the_step_budget(steps: int, steps_per_epoch: int, expected: int) -> None:
    """With ``epochs`` null, the whole number of epochs closest to the ``steps`` budget, at least one: a large transfer
    set (SST-2, 17,687 steps an epoch) trains one epoch, a small one (MRPC at batch 64) many."""
    hp = TrainParams(epochs=None, steps=steps)
    assert hp.max_epochs(steps_per_epoch) == expected
    assert hp.length_rule(steps_per_epoch, ("student.epochs", "student.steps")) == (
        f"up to {expected} epoch{'s' if expected > 1 else ''} (student.steps {steps} at {steps_per_epoch:,} steps an "
        "epoch), early stopping patience 2"
    )


@pytest.mark.parametrize("steps", [None, 7500, 10])
def test_explicit_epochs_are_obeyed_whatever_the_step_budget(steps: int | None) -> None:
    """``epochs`` set wins over any ``steps`` (BANKING77's 3,042 steps an epoch: 6 epochs, not the budget's 2)."""
    hp = StudentParams(epochs=6, steps=steps)
    assert hp.max_epochs(3042) == 6
    assert hp.length_rule(3042, ("student.epochs", "student.steps")) == (
        "up to 6 epochs (student.epochs), early stopping patience 3"
    )


def test_training_length_needs_epochs_or_steps(tmp_path) -> None:
    """Both null is refused with one line naming the section."""
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["student"].update(epochs=None, steps=None)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"params.yaml: student: .*epochs and steps are both null"):
        load_params(path)


def scripted_dev_scores(monkeypatch: pytest.MonkeyPatch, scores: list[float]) -> list[dict[str, torch.Tensor]]:
    """Make the dev evaluation after epoch k return accuracy ``scores[k - 1]``; return the weights seen at each."""
    states: list[dict[str, torch.Tensor]] = []

    def evaluate(model, data, accelerator):  # noqa: ANN001, ANN202
        states.append({name: value.detach().clone() for name, value in model.state_dict().items()})
        return {name: {"accuracy": scores[len(states) - 1]} for name in data}

    monkeypatch.setattr(fit_module, "_evaluate", evaluate)
    return states


def budget_params(steps: int, patience: int) -> Params:
    params = tiny_params(epochs=1)
    update = {"epochs": None, "steps": steps, "patience": patience}
    return params.model_copy(update={"student": params.student.model_copy(update=update)})


def test_student_trains_until_the_step_budget(teacher_dir, tmp_path, monkeypatch) -> None:
    """200 shard rows at batch 16 are 13 steps an epoch: with ``epochs`` null, ``steps: 52`` is 4 epochs while dev
    improves; the summary says so."""
    shards, prepared = tmp_path / "logits", tmp_path / "prepared"
    write_sst2_shards(shards)
    write_prepared(prepared, "sst2", "dev", sentiment_rows(20, seed=2))
    scripted_dev_scores(monkeypatch, [0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    params = budget_params(steps=52, patience=2)
    summary = train_student(get_task("sst2"), params, shards, prepared, teacher_dir, tmp_path / "out", tmp_path / "log")
    assert summary["epochs_run"] == 4 and summary["best_epoch"] == 4
    assert summary["dev"]["sst2"]["accuracy"] == 0.8
    assert summary["length"] == "up to 4 epochs (student.steps 52 at 13 steps an epoch), early stopping patience 2"


def test_student_with_explicit_epochs_ignores_the_step_budget(teacher_dir, tmp_path, monkeypatch, caplog) -> None:
    """``epochs: 6`` with a budget (``steps: 13``) that would give 1 epoch: 6 epochs run, logged and recorded."""
    shards, prepared = tmp_path / "logits", tmp_path / "prepared"
    write_sst2_shards(shards)
    write_prepared(prepared, "sst2", "dev", sentiment_rows(20, seed=2))
    scripted_dev_scores(monkeypatch, [0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    params = budget_params(steps=13, patience=2)
    params = params.model_copy(update={"student": params.student.model_copy(update={"epochs": 6})})
    with caplog.at_level(logging.INFO, logger="pipeline.training.fit"):
        summary = train_student(get_task("sst2"), params, shards, prepared, teacher_dir, tmp_path / "out",
                                tmp_path / "log")  # fmt: skip
    assert summary["epochs_run"] == 6
    rule = "up to 6 epochs (student.epochs), early stopping patience 2"
    assert summary["length"] == rule and f"student sst2: {rule}" in caplog.text
    assert json.loads((tmp_path / "out" / "config.json").read_text())["training"]["length"] == rule


def test_student_stops_early_and_keeps_its_best_epoch(teacher_dir, tmp_path, monkeypatch) -> None:
    """Dev accuracy peaks at epoch 2: with patience 2 training ends after epoch 4 and the saved student is epoch 2's
    (not the last one's)."""
    shards, prepared = tmp_path / "logits", tmp_path / "prepared"
    write_sst2_shards(shards)
    write_prepared(prepared, "sst2", "dev", sentiment_rows(20, seed=2))
    states = scripted_dev_scores(monkeypatch, [0.6, 0.8, 0.7, 0.75, 0.9, 0.9, 0.9, 0.9])
    params = budget_params(steps=104, patience=2)  # at most 8 epochs
    out = tmp_path / "out"
    summary = train_student(get_task("sst2"), params, shards, prepared, teacher_dir, out, tmp_path / "log")
    assert summary["epochs_run"] == 4 and summary["best_epoch"] == 2
    assert summary["dev"]["sst2"]["accuracy"] == 0.8
    saved, _ = load_student(out)
    kept = saved.state_dict()
    assert all(torch.equal(kept[name], value) for name, value in states[1].items())
    assert not all(torch.equal(kept[name], value) for name, value in states[3].items())

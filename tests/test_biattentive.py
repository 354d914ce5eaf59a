"""Bi-attentive LSTM student (MKD): shapes, padding, round trip, gradients, size, build, ONNX export."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data.tasks import get_task
from pipeline.params import BiattentiveParams, Params, load_params
from pipeline.students.base import Batch, count_parameters
from pipeline.students.biattentive import BiattentiveStudent
from pipeline.students.encoding import WordEncoder, WordPieceEncoder
from tests.conftest import REPO_ROOT

TASKS = [get_task(name) for name in ("sst2", "mrpc", "stsb")]
DEFAULT_TASKS = [get_task(name) for name in ("sst2", "cola", "mrpc", "rte", "stsb")]
VOCAB, DIM, PAD = 30, 6, 0
TEACHER_WIDTH = 384  # all-MiniLM-L6-v2's WordPiece embeddings, the default student input
TEXTS = ["the film is good", "a dull and boring plot", "really quite lovely acting"]


def small_params(**overrides: object) -> BiattentiveParams:
    sizes = {"feedforward_size": 8, "encoder_size": 5, "integrator_size": 4, "output_sizes": [7, 6], "max_length": 16}
    return BiattentiveParams(**{**sizes, **overrides})


def make_model(**overrides: object) -> BiattentiveStudent:
    torch.manual_seed(0)
    return BiattentiveStudent(small_params(**overrides), torch.randn(VOCAB, DIM), TASKS)


def padded(lengths: list[int], seed: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random real ids (never the padding id) right-padded with PAD to ``width`` (default: the longest)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), width or max(lengths)), PAD, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(1, VOCAB, (length,), generator=generator)
    return ids, torch.tensor(lengths)


def make_batch(lengths_a: list[int], lengths_b: list[int] | None = None, seed: int = 0) -> Batch:
    batch = dict(zip(("a", "a_lengths"), padded(lengths_a, seed), strict=True))
    if lengths_b is not None:
        batch.update(zip(("b", "b_lengths"), padded(lengths_b, seed + 1), strict=True))
    return batch


def task_batch(task: str, lengths_a: list[int], lengths_b: list[int], seed: int = 0) -> Batch:
    return make_batch(lengths_a, lengths_b if get_task(task).is_pair else None, seed)


@pytest.mark.parametrize("output_layer", ["maxout", "relu"])
@pytest.mark.parametrize("output_sizes", [[7, 6], []])
def test_output_shapes_single_and_pair_tasks(output_layer: str, output_sizes: list[int]) -> None:
    model = make_model(output_layer=output_layer, output_sizes=output_sizes)
    assert model("sst2", make_batch([3, 5, 1, 2])).shape == (4, 2)
    assert model("mrpc", make_batch([3, 5, 1, 2], [7, 1, 2, 4])).shape == (4, 2)
    assert model("stsb", make_batch([2, 2, 6, 1], [1, 3, 3, 8])).shape == (4, 1)
    assert set(model.heads) == {"sst2", "mrpc", "stsb"}


def test_attention_weights_are_zero_exactly_at_padding() -> None:
    model = make_model().eval()
    lengths_a, lengths_b = [3, 6, 1], [5, 2, 4]
    (self_weights,) = model.attention_weights("sst2", make_batch(lengths_a))
    a_over_b, b_over_a = model.attention_weights("mrpc", make_batch(lengths_a, lengths_b))
    for weights, key_lengths in ((self_weights, lengths_a), (a_over_b, lengths_b), (b_over_a, lengths_a)):
        for row, length in enumerate(key_lengths):
            assert torch.all(weights[row, :, length:] == 0)
            assert torch.all(weights[row, :, :length] > 0)
            torch.testing.assert_close(weights[row].sum(-1), torch.ones(weights.shape[1]))


def with_longer_rows(batch: Batch, side: str, other_lengths: list[int], seed: int) -> Batch:
    """``side``'s rows padded to the width of longer random rows appended after them."""
    ids, lengths = batch[side], batch[f"{side}_lengths"]
    others, others_lengths = padded(other_lengths, seed)
    widened = F.pad(ids, (0, others.shape[1] - ids.shape[1]), value=PAD)
    return {side: torch.cat([widened, others]), f"{side}_lengths": torch.cat([lengths, others_lengths])}


@pytest.mark.parametrize("task", ["sst2", "mrpc"])
def test_row_alone_equals_row_in_wider_padded_batch(task: str) -> None:
    """Attention and max/min/mean/self-attentive pooling ignore padding (eval mode)."""
    model = make_model().eval()
    alone = task_batch(task, [3], [2])
    together = with_longer_rows(alone, "a", [9, 6], seed=7)
    if get_task(task).is_pair:
        together |= with_longer_rows(alone, "b", [4, 11], seed=8)
    torch.testing.assert_close(model(task, together)[:1], model(task, alone), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("task", ["sst2", "stsb"])
def test_ids_at_padded_positions_change_nothing(task: str) -> None:
    model = make_model().eval()
    batch = task_batch(task, [3, 7, 1], [4, 2, 6])
    scrambled = dict(batch)
    for side in ("a", "b") if get_task(task).is_pair else ("a",):
        ids = batch[side].clone()
        is_padding = torch.arange(ids.shape[1])[None, :] >= batch[f"{side}_lengths"][:, None]
        ids[is_padding] = torch.randint(1, VOCAB, (int(is_padding.sum()),))
        scrambled[side] = ids
    torch.testing.assert_close(model(task, scrambled), model(task, batch), atol=1e-6, rtol=1e-6)


def test_config_round_trip_gives_identical_outputs() -> None:
    model = make_model(output_layer="relu", multichannel=False).eval()
    config = json.loads(json.dumps(model.config()))
    rebuilt = BiattentiveStudent.from_config(config, TASKS)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    for task in ("sst2", "mrpc", "stsb"):
        batch = task_batch(task, [3, 5], [2, 4])
        torch.testing.assert_close(rebuilt(task, batch), model(task, batch), atol=0, rtol=0)


def test_gradients_reach_sparse_embedding_table_and_all_shared_layers() -> None:
    model = make_model(multichannel=True)
    model("mrpc", make_batch([3, 4], [2, 5])).sum().backward()
    (table,) = model.sparse_parameters()
    assert table is model.embedding.trainable.weight
    assert table.grad is not None and table.grad.is_sparse and table.grad.to_dense().abs().sum() > 0
    assert model.embedding.frozen is not None and model.embedding.frozen.weight.grad is None
    for name, param in model.named_parameters():
        if param.requires_grad and param is not table and not name.startswith(("heads.sst2", "heads.stsb")):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert model.heads["sst2"].weight.grad is None


def test_default_size_is_about_3m_without_embeddings() -> None:
    """MKD's student has ~2.8M non-embedding parameters; the five default tasks' model is sized to match."""
    embeddings = torch.zeros(10, TEACHER_WIDTH)
    five = BiattentiveStudent(BiattentiveParams(), embeddings, DEFAULT_TASKS)
    one = BiattentiveStudent(BiattentiveParams(), embeddings, DEFAULT_TASKS[:1])
    head = BiattentiveParams().output_sizes[-1] + 1
    extra_heads = sum(head * task.num_outputs for task in DEFAULT_TASKS[1:])
    without_embeddings = count_parameters(five, include_embeddings=False)
    assert 2.7e6 <= without_embeddings <= 3.3e6
    assert without_embeddings - count_parameters(one, include_embeddings=False) == extra_heads
    assert count_parameters(five, include_embeddings=True) - without_embeddings == 2 * 10 * TEACHER_WIDTH


def test_build_with_tiny_bert_wordpiece(tiny_bert_dir: Path) -> None:
    params = Params(biattentive=small_params())
    model, encoder = BiattentiveStudent.build(params, TASKS, tiny_bert_dir, [], seed=3)
    again, _ = BiattentiveStudent.build(params, TASKS, tiny_bert_dir, [], seed=3)
    assert isinstance(encoder, WordPieceEncoder)
    assert model.embedding.output_size == 2 * 32  # multichannel copies of the tiny BERT's 32-d embeddings
    for key, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, atol=0, rtol=0)
    inputs = encoder.encode_inputs(TEXTS, TEXTS[::-1])
    assert model.eval()("mrpc", inputs.batch(np.arange(len(TEXTS)))).shape == (3, 2)


def test_build_with_word_embeddings(tiny_bert_dir: Path) -> None:
    params = Params(biattentive=small_params(embeddings="word", embedding_dim=5, multichannel=False))
    model, encoder = BiattentiveStudent.build(params, TASKS, tiny_bert_dir, TEXTS, seed=0)
    assert isinstance(encoder, WordEncoder) and encoder.vocab_size == 2 + len(set(" ".join(TEXTS).split()))
    assert model.embedding.trainable.weight.shape == (encoder.vocab_size, 5) and model.embedding.frozen is None
    inputs = encoder.encode_inputs(TEXTS, None)
    assert model("sst2", inputs.batch(np.arange(len(TEXTS)))).shape == (3, 2)


class SingleTaskExport(nn.Module):
    """``lambda ids, lengths: model(task, batch)`` as a module, for ``torch.onnx.export``."""

    def __init__(self, model: BiattentiveStudent, task: str) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model(self.task, {"a": ids, "a_lengths": lengths})


def test_onnx_export_matches_torch_on_other_shapes(tmp_path: Path) -> None:
    exported = SingleTaskExport(make_model(), "sst2").eval()
    path = tmp_path / "student.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            exported,
            padded([3, 7, 2], seed=0),
            path,
            input_names=["ids", "lengths"],
            output_names=["logits"],
            dynamic_axes={"ids": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    session = onnxruntime.InferenceSession(str(path))
    ids, lengths = padded([11, 1, 4, 9, 2], seed=5, width=12)
    (logits,) = session.run(None, {"ids": ids.numpy(), "lengths": lengths.numpy()})
    np.testing.assert_allclose(logits, exported(ids, lengths).detach().numpy(), atol=1e-4)


def test_repo_params_yaml_section_matches_defaults() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.biattentive == BiattentiveParams()

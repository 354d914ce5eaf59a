import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipeline.data.tasks import get_task
from pipeline.params import load_params
from pipeline.serving.teacher import load_teacher, predict_logits, resolve_checkpoint
from pipeline.stages.prepare import run_prepare
from pipeline.stages.teacher import fine_tune
from pipeline.training.accelerator import RowTrace, accelerated
from pipeline.training.finetune import FineTuning, build_teacher, load_task_data, training_schedule
from pipeline.training.sampling import TaskBatchSampler
from tests.conftest import REPO_ROOT

SENTENCES = ["a charming and often affecting journey .", "unflinchingly bleak and desperate", "the film is good"]
SST2 = get_task("sst2")


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


def teacher_params(checkpoint: Path, **teacher):
    params = load_params(REPO_ROOT / "params.yaml")
    values = {"checkpoint": str(checkpoint), "batch_size": 8, "learning_rate": 2e-3, "max_length": 32, **teacher}
    return params.model_copy(update={"teacher": params.teacher.model_copy(update=values)})


@pytest.fixture()
def prepared_sst2(glue_dir, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DISTILLERY_GLUE_DIR", str(glue_dir))
    run_prepare("sst2", load_params(REPO_ROOT / "params.yaml"), tmp_path / "prepared")
    return tmp_path / "prepared"


def read_curve(path: Path) -> list[float]:
    """Values of one DVCLive curve (``plots/metrics/<name>.tsv``: step, value)."""
    rows = path.read_text().splitlines()
    assert rows[0].split("\t") == ["step", path.stem]
    return [float(row.split("\t")[1]) for row in rows[1:]]


def test_fine_tune_learns_tiny_task_and_logs_with_dvclive(prepared_sst2, tiny_bert_dir, tmp_path):
    params = teacher_params(tiny_bert_dir, epochs=6)
    log_dir = tmp_path / "dvclive" / "teacher" / "sst2"
    metrics = fine_tune([SST2], params, prepared_sst2, {"sst2": tmp_path / "teacher"}, log_dir)
    assert metrics["sst2"]["accuracy"] >= 0.8
    summary = json.loads((log_dir / "metrics.json").read_text())
    assert summary == {"dev": {"sst2": metrics["sst2"]["accuracy"]}, "step": 5}  # the headline only
    losses = read_curve(log_dir / "plots" / "metrics" / "train" / "loss.tsv")
    accuracy = read_curve(log_dir / "plots" / "metrics" / "dev" / "accuracy.tsv")
    assert len(losses) == len(accuracy) == 6 and losses[-1] < losses[0] and accuracy[-1] == metrics["sst2"]["accuracy"]
    model, _ = load_teacher(tmp_path / "teacher")
    assert model.config.num_labels == 2 and model.config.id2label == {0: "0", 1: "1"}


def test_training_schedule_accumulates_within_epochs():
    sampler = TaskBatchSampler({"a": np.arange(50) % 7, "b": np.arange(12)}, {"a": 8, "b": 8}, seed=0)
    per_epoch = sampler.batches_per_epoch()  # 7 + 2 = 9 batches
    schedule = training_schedule(sampler, 2.5, accumulation_steps=4)
    assert [len(steps) for steps in schedule] == [3, 3, 2]  # 9 = 4+4+1 per full epoch; the half epoch: 5 = 4+1
    assert [sum(len(step) for step in steps) for steps in schedule] == [per_epoch, per_epoch, 5]
    assert all(1 <= len(step) <= 4 for steps in schedule for step in steps)
    first_epoch_rows = np.concatenate([rows for step in schedule[0] for task, rows in step if task == "a"])
    assert sorted(first_epoch_rows.tolist()) == list(range(50))


def test_accumulated_step_equals_one_batch_of_all_its_rows(prepared_sst2, tiny_bert_dir):
    """Gradients of a step are those of the mean loss over all its rows, however the rows are split into batches."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    data = {"sst2": load_task_data(SST2, tokenizer, prepared_sst2, max_length=32)}

    def update(step) -> tuple[list[torch.Tensor], torch.Tensor]:
        torch.manual_seed(0)
        teacher = build_teacher(str(tiny_bert_dir), [SST2]).eval()  # eval: no dropout, so both runs are comparable
        before = [p.detach().clone() for p in teacher.parameters()]
        optimizer = torch.optim.SGD(teacher.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        totals = {"sst2": torch.zeros(2)}
        with accelerated("fp32", several_tasks=False) as accelerator:
            run = FineTuning(accelerator, teacher, optimizer, scheduler, tokenizer, data, RowTrace(0))
            run.train_step(step, 1, totals)
        return [p.detach() - b for p, b in zip(teacher.parameters(), before, strict=True)], totals["sst2"]

    rows = np.arange(3, 15)
    accumulated, accumulated_loss = update([("sst2", rows[:5]), ("sst2", rows[5:9]), ("sst2", rows[9:])])
    single, single_loss = update([("sst2", rows)])
    assert any(delta.abs().max() > 0 for delta in single)
    for a, b in zip(accumulated, single, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(accumulated_loss, single_loss)
    assert single_loss[1] == len(rows)

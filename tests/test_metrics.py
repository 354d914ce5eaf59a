import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from pipeline.data.metrics import compute_metrics, predictions_from_outputs, task_score
from pipeline.data.tasks import get_task

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(200, 2)).astype(np.float32)
GOLD = RNG.integers(0, 2, size=200)
PRED = LOGITS.argmax(axis=1)


def test_accuracy_from_logits_matches_hand_count():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5], [0.2, 0.1]])
    gold = np.array([0, 1, 1, 1])
    assert compute_metrics(get_task("sst2"), logits, gold) == {"accuracy": 0.5}


def test_f1_and_accuracy_for_qqp_and_mrpc():
    for name in ("qqp", "mrpc"):
        metrics = compute_metrics(get_task(name), LOGITS, GOLD)
        assert list(metrics) == ["f1", "accuracy"]
        assert metrics["f1"] == pytest.approx(f1_score(GOLD, PRED))
        assert metrics["accuracy"] == pytest.approx(accuracy_score(GOLD, PRED))


def test_matthews_for_cola():
    metrics = compute_metrics(get_task("cola"), LOGITS, GOLD)
    assert metrics["mcc"] == pytest.approx(matthews_corrcoef(GOLD, PRED))


def test_pearson_spearman_for_stsb_from_single_output_column():
    gold = RNG.uniform(0, 5, size=100)
    outputs = (gold + RNG.normal(scale=1.0, size=100)).reshape(-1, 1)
    metrics = compute_metrics(get_task("stsb"), outputs, gold)
    assert metrics["pearson"] == pytest.approx(pearsonr(outputs[:, 0], gold)[0])
    assert metrics["spearman"] == pytest.approx(spearmanr(outputs[:, 0], gold)[0])
    assert 0.5 < metrics["pearson"] < 1.0


def test_mnli_three_classes_argmax():
    logits = np.eye(3)[[0, 1, 2, 2]]
    assert predictions_from_outputs(get_task("mnli"), logits).tolist() == [0, 1, 2, 2]
    assert compute_metrics(get_task("mnli"), logits, np.array([0, 1, 2, 0]))["accuracy"] == 0.75


def test_task_score_follows_the_glue_convention():
    """CoLA scores MCC alone; MRPC the mean of F1 and accuracy; STS-B of Pearson and Spearman; SST-2 accuracy."""
    assert task_score(get_task("cola"), {"mcc": 0.2, "accuracy": 0.7}) == pytest.approx(0.2)
    assert task_score(get_task("mrpc"), {"f1": 0.8, "accuracy": 0.7}) == pytest.approx(0.75)
    assert task_score(get_task("stsb"), {"pearson": 0.8, "spearman": 0.9}) == pytest.approx(0.85)
    assert task_score(get_task("sst2"), {"accuracy": 0.9}) == pytest.approx(0.9)

"""End-to-end on tasks of your own: a 3-class CSV task with unlabelled text and no dev file, a JSONL sentence-pair
task with dev and test files, and a CSV regression task, through every single- and multi-task stage of `dvc repro`,
then `predict` and `evaluate --data` on the user's files. Tiny random BERT, tiny data."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import paths
from tests.conftest import FILLER, LEARNING, NEGATIVE, POSITIVE, copy_project, init_project, tiny_params
from tests.recompute import (
    Rows,
    assert_exports_match,
    assert_same_metrics,
    recompute,
)
from tests.test_pipeline_e2e import dvc, stages_run

pytestmark = pytest.mark.e2e

TASKS = ["reviews", "pairs", "ratings"]
# default params: no multi-task teacher, the MKD students learn from the single-task teachers' shards
STAGES = ("prepare", "teacher", "augment", "score", "student", "baseline", "reference", "export", "evaluate")
STAGES += ("static", "export_static")  # the static student and its export
MKD = ("biattentive", "transformer", "bilstm")
MULTI_TASK = {*(f"{stage}@{s}" for stage in ("mkd", "export_mkd") for s in MKD), "compare"}
MOODS = ("negative", "neutral", "positive")


def review(rng: random.Random, mood: str) -> str:
    words = rng.sample(FILLER, rng.randint(2, 5))
    if mood != "neutral":
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if mood == "positive" else NEGATIVE))
    return " ".join(words)


def write_files(root):
    rng = random.Random(0)
    root.mkdir(parents=True)
    rows = [(review(rng, MOODS[i % 3]), MOODS[i % 3]) for i in range(60)]
    lines = ["text,mood", *(f"{text},{mood}" for text, mood in rows)]
    (root / "reviews.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "raw.txt").write_text("\n".join(review(rng, rng.choice(MOODS)) + " again" for _ in range(30)) + "\n")
    for split, n in (("train", 40), ("dev", 12), ("test", 10)):
        items = []
        for _ in range(n):
            first, second = rng.choice(["positive", "negative"]), rng.choice(["positive", "negative"])
            same = "yes" if first == second else "no"
            items.append({"a": review(rng, first), "b": review(rng, second), "same": same})
        (root / f"pairs_{split}.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    lines = ["text,stars"]
    for _ in range(50):
        good = rng.randint(0, 2)
        words = [*rng.sample(FILLER, 3), *rng.sample(POSITIVE, good)]
        lines.append(f"{' '.join(words)},{good + rng.random() / 2:.3f}")
    (root / "ratings.csv").write_text("\n".join(lines) + "\n")
    (root / "other_reviews.csv").write_text(
        "text,mood\n" + "".join(f"{review(rng, m)},{m}\n" for m in MOODS * 3), encoding="utf-8"
    )
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("own-e2e")
    files = write_files(root / "files")
    proj = copy_project(root / "proj")
    params = tiny_params(root / "files", tiny_bert_dir, **LEARNING)
    params["tasks"] = TASKS
    params["data"]["files_dir"] = str(files)
    params["task_defs"] = {
        "reviews": {"train": "reviews.csv", "text_columns": ["text"], "label_column": "mood", "dev_fraction": 0.2,
                    "unlabelled": ["raw.txt"]},
        "pairs": {"train": "pairs_train.jsonl", "dev": "pairs_dev.jsonl", "test": "pairs_test.jsonl",
                  "text_columns": ["a", "b"], "label_column": "same"},
        "ratings": {"train": "ratings.csv", "text_columns": ["text"], "label_column": "stars"},
    }  # fmt: skip
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    init_project(proj)
    return proj


def test_repro_runs_every_stage_for_tasks_of_your_own(project):
    result = dvc("repro", cwd=project)
    assert stages_run(result) == {f"{stage}@{task}" for stage in STAGES for task in TASKS} | MULTI_TASK

    reviews = json.loads((project / "data" / "prepared" / "reviews" / "task.json").read_text())
    assert reviews["task"]["labels"] == list(MOODS) and reviews["task"]["metrics"] == ["accuracy", "macro_f1"]
    assert reviews["rows"]["dev"] == 12
    assert pq.read_metadata(paths.unlabelled_text("reviews", project / paths.PREPARED_DIR)).num_rows == 30
    transfer = pq.read_table(paths.transfer_set("reviews", project / paths.AUGMENTED_DIR))
    assert sum(transfer.column("is_unlabelled").to_pylist()) == 30  # joined, not augmented (default)
    shards = pq.read_table(project / "data" / "logits" / "single" / "reviews", columns=["is_unlabelled", "logits"])
    assert sum(shards.column("is_unlabelled").to_pylist()) == 30  # scored by the teacher
    ratings = json.loads((project / "data" / "prepared" / "ratings" / "task.json").read_text())
    assert ratings["problem"] == "regression" and ratings["task"]["metrics"] == ["pearson", "spearman"]

    expected = {"reviews": ("accuracy", "macro_f1"), "pairs": ("accuracy", "f1"), "ratings": ("pearson", "spearman")}
    # the pairs test split is the user's file, row for row, labels in class-index order (sorted: no, yes)
    pairs = json.loads((project / "data" / "prepared" / "pairs" / "task.json").read_text())["task"]
    assert pairs["labels"] == ["no", "yes"]
    test_file = [json.loads(line) for line in (project.parent / "files" / "pairs_test.jsonl").read_text().splitlines()]
    test = Rows.prepared(project, "pairs", "test", expected["pairs"])
    assert test.text_a == [item["a"] for item in test_file] and test.text_b == [item["b"] for item in test_file]
    assert test.labels.tolist() == [["no", "yes"].index(item["same"]) for item in test_file]
    for task in TASKS:
        report = json.loads((project / "metrics" / "report" / f"{task}.json").read_text())
        assert list(report["quality"]) == (["dev", "test"] if task == "pairs" else ["dev"])
        # The numbers themselves, on every split (the pairs test file too): the teacher, the PyTorch students,
        # TF-IDF (refitted on the prepared train split) and model2vec rescored outside the pipeline's evaluation
        # code, the exported variants run from their folders by tokenizers and onnxruntime alone, batched as
        # evaluate batches them (teacher.eval_batch_size) and, for the export stage's own report on dev, as export
        # does (export.check_batch_size); metrics by sklearn/scipy.
        # the pairs fixture's 12 dev rows are too few for the tiny teacher and students to leave the majority class,
        # so their metrics cannot tell shifted labels apart: compared, not required to discern
        discerning = task != "pairs"
        for split, quality in report["quality"].items():
            rows = Rows.prepared(project, task, split, expected[task])
            what = f"metrics/report/{task}.json {split}"
            assert_same_metrics(quality, recompute(project, rows, discerning=discerning), what)
            assert_exports_match(project, rows, split, quality, what, discerning)
        headline = json.loads((project / "metrics" / f"{task}.json").read_text())
        assert set(headline) >= {"teacher", "student", "baseline", "tfidf", "model2vec", "kd_gain"}
        assert ("classes" in report) == (task != "ratings")  # per-class scores for a classification task only
    per_class = json.loads((project / "metrics" / "report" / "reviews.json").read_text())["classes"]["dev"]["student"]
    assert list(per_class["per_class"]) == list(MOODS)
    assert sum(row["support"] for row in per_class["per_class"].values()) == reviews["rows"]["dev"]
    config = json.loads((project / "models" / "student" / "reviews" / "config.json").read_text())
    assert config["task_specs"]["reviews"] == reviews["task"]  # a saved model carries its labels
    export_config = json.loads((project / "models" / "export" / "reviews" / "config.json").read_text())
    assert export_config["labels"] == list(MOODS)
    comparison = json.loads((project / "metrics" / "comparison_summary.json").read_text())
    assert set(comparison["score"]["mkd_bilstm"]) == set(TASKS)
    # default MKD: no multi-task teacher; the students learnt from the Tang students' shards, every row of them
    assert not (project / "models" / "mt_teacher").exists() and "mt_teacher" not in comparison["models"]
    assert comparison["comparison"].startswith("equal data")

    # predict prints the user's label names; evaluate --data scores any file with the task's columns
    predicted = subprocess.run(
        [sys.executable, "-m", "pipeline", "predict", "--task", "reviews", "-"], cwd=project, check=True,
        input="the film is superb\nthe plot\n", capture_output=True, text=True,
    )  # fmt: skip
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert len(lines) == 2
    assert all(line["label"] in MOODS and set(line["probabilities"]) == set(MOODS) for line in lines)
    other = project.parent / "files" / "other_reviews.csv"
    out = project / "other.json"
    subprocess.run(
        [sys.executable, "-m", "pipeline", "evaluate", "--task", "reviews", "--data", str(other), "--out", str(out)],
        cwd=project, check=True, capture_output=True,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert list(report["quality"]) == ["other_reviews"]
    assert set(report["quality"]["other_reviews"]["student"]) == {"accuracy", "macro_f1"}

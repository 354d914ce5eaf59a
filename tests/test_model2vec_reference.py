"""The model2vec reference model: the ``reference`` stage distils the tiny BERT offline and fits the library's
classifier (regressor); the catalogue's ``model2vec`` scores what the library's own pipeline predicts."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from model2vec.inference import StaticModelPipeline
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score

from pipeline import paths
from pipeline.data.tasks import get_task
from pipeline.params import Params
from pipeline.serving.catalogue import MODEL2VEC, model_source, single_task_models
from pipeline.serving.model2vec_classifier import Model2VecModel
from pipeline.stages.reference import SUMMARY, build_reference
from tests.glue_fixtures import generate_examples


def prepared(task_name: str, n: int, seed: int) -> pa.Table:
    """Learnable rows of a task in the prepared splits' columns (a cue word decides the label)."""
    task = get_task(task_name)
    examples = generate_examples(task, n, random.Random(seed))
    labels = [float(e.label) if task.is_regression else task.labels.index(e.label) for e in examples]
    columns = {"text_a": [e.text_a for e in examples], "label": labels}
    if task.is_pair:
        columns["text_b"] = [e.text_b for e in examples]
    return pa.table(columns)


@pytest.fixture()
def workspace(tmp_path, monkeypatch, tiny_bert_dir):
    """A working directory with prepared sst2 and stsb splits and params whose checkpoint is the tiny BERT; the Hub
    unreachable (a download attempt fails)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for task, n_train in (("sst2", 96), ("stsb", 96)):
        for split, n, seed in (("train", n_train, 0), ("dev", 40, 1)):
            path = paths.prepared_split(task, split)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(prepared(task, n, seed), path)
    return Params(teacher={"checkpoint": str(tiny_bert_dir)}, model2vec={"pca_dims": 16, "max_epochs": 30})


def test_reference_stage_fits_offline_and_the_catalogue_scores_what_the_library_predicts(workspace, monkeypatch):
    task = get_task("sst2")
    source = model_source(MODEL2VEC, task, workspace)
    assert MODEL2VEC in single_task_models(task, workspace)
    with pytest.raises(FileNotFoundError, match="pipeline reference --task sst2"):
        source.load(None)

    summary = build_reference(task, workspace, paths.PREPARED_DIR, paths.model2vec_dir("sst2"))
    folder = paths.model2vec_dir("sst2")
    assert summary["embedding_shape"][1] == 16 and summary["train_rows"] == 96
    assert (folder / SUMMARY).is_file() and not list(folder.parent.glob(".*tmp"))  # written whole

    dev = pq.read_table(paths.prepared_split("sst2", "dev"))
    texts, gold = dev.column("text_a").to_pylist(), dev.column("label").to_numpy()
    logits = model_source(MODEL2VEC, task, workspace).load(None).logits(texts, None, 7)
    assert logits.shape == (40, 2) and logits.dtype == np.float32
    library = StaticModelPipeline.from_pretrained(folder)  # the library's own inference on the saved folder
    predicted = library.predict(texts, use_multiprocessing=False).astype(int)
    assert logits.argmax(axis=1).tolist() == predicted.tolist()
    np.testing.assert_allclose(np.exp(logits), library.predict_proba(texts, use_multiprocessing=False), atol=1e-6)
    assert accuracy_score(gold, predicted) >= 0.9  # the cue words are learnt: rows and labels are aligned
    reference = Model2VecModel.load(task, folder)
    head_rows: list[int] = []  # batch size bounds every call of the head, as in a deployment at that batch size
    head = reference.pipeline.head.predict_proba
    monkeypatch.setattr(reference.pipeline.head, "predict_proba", lambda x: head_rows.append(len(x)) or head(x))
    np.testing.assert_array_equal(reference.logits(texts, None, 7), logits)
    assert head_rows == [7, 7, 7, 7, 7, 5]
    loaded = model_source(MODEL2VEC, task, workspace).load(None)
    assert loaded.parameters["total"] > loaded.parameters["without_embeddings"] > 0
    assert loaded.token_counts(["the film is good"], None).tolist() == [4]

    again = build_reference(task, workspace, paths.PREPARED_DIR, folder.parent / "again")
    assert again["parameters"] == summary["parameters"]
    np.testing.assert_array_equal(  # seeded: the same model twice
        StaticModelPipeline.from_pretrained(folder.parent / "again").predict_proba(texts, use_multiprocessing=False),
        library.predict_proba(texts, use_multiprocessing=False),
    )


def test_regression_pairs_are_joined_and_scored_with_the_library_regressor(workspace):
    task = get_task("stsb")
    build_reference(task, workspace, paths.PREPARED_DIR, paths.model2vec_dir("stsb"))
    dev = pq.read_table(paths.prepared_split("stsb", "dev"))
    text_a, text_b = dev.column("text_a").to_pylist(), dev.column("text_b").to_pylist()
    loaded = model_source(MODEL2VEC, task, workspace).load(None)
    outputs = loaded.logits(text_a, text_b, 16)
    assert outputs.shape == (40, 1)
    library = StaticModelPipeline.from_pretrained(paths.model2vec_dir("stsb"))
    joined = [f"{a} [SEP] {b}" for a, b in zip(text_a, text_b)]
    np.testing.assert_allclose(outputs[:, 0], library.predict(joined, use_multiprocessing=False)[:, 0], atol=1e-6)
    assert pearsonr(outputs[:, 0], dev.column("label").to_numpy())[0] > 0.5  # the similar/dissimilar cue is learnt
    assert loaded.token_counts(["the film"], ["a story"]).tolist() == [len(library.model.tokenizer.encode(
        "the film [SEP] a story", add_special_tokens=False).ids)]  # fmt: skip

"""The TF-IDF reference model (evaluate and compare report it beside the others) and the per-class report."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from pipeline import paths
from pipeline.data.metrics import class_report
from pipeline.data.tasks import get_task
from pipeline.params import Params, TfidfParams
from pipeline.serving.catalogue import TFIDF, model_source, single_task_models
from pipeline.serving.tfidf import ABSENT_CLASS_LOGIT, fit_tfidf

TOPICS = {0: ["card", "pin", "atm"], 1: ["transfer", "wire", "iban"], 2: ["refund", "charge", "fee"]}
FILLER = ["my", "the", "please", "why", "is", "help", "today", "again"]
THREE_CLASSES = dataclasses.replace(get_task("sst2"), name="intents", labels=("card", "transfer", "fee"))


def queries(n: int, seed: int) -> pa.Table:
    """Short queries whose class shows in one topic word among filler words."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    texts = [" ".join([*rng.choice(FILLER, 3), str(rng.choice(TOPICS[int(label)]))]) for label in labels]
    return pa.table({"text_a": texts, "label": labels})


def test_tfidf_matches_an_independent_scikit_learn_fit_and_learns_the_task():
    train, dev = queries(300, 0), queries(100, 1)
    params = TfidfParams(C=10.0)
    model = fit_tfidf(THREE_CLASSES, train, params, seed=0)
    logits = model.logits(dev.column("text_a").to_pylist(), None, batch_size=7)

    def vectorizers():  # as documented: word 1-2-grams and char_wb 2-5-grams, sublinear tf
        return [TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True),
                TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)]  # fmt: skip

    reference = vectorizers()
    texts = train.column("text_a").to_pylist()
    features = sparse.hstack([vectorizer.fit_transform(texts) for vectorizer in reference]).tocsr()
    classifier = LogisticRegression(C=10.0, max_iter=2000).fit(features, train.column("label").to_numpy())
    dev_features = sparse.hstack([vectorizer.transform(dev.column("text_a").to_pylist()) for vectorizer in reference])
    expected = classifier.predict_log_proba(dev_features.tocsr())

    assert logits.shape == (100, 3) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    assert (logits.argmax(axis=1) == dev.column("label").to_numpy()).mean() > 0.95
    again = fit_tfidf(THREE_CLASSES, train, params, seed=0).logits(dev.column("text_a").to_pylist(), None, 100)
    np.testing.assert_array_equal(logits, again)


def test_a_class_train_never_saw_never_wins():
    train = queries(200, 0).filter(pa.compute.not_equal(pa.array(queries(200, 0).column("label")), 1))
    model = fit_tfidf(THREE_CLASSES, train, TfidfParams(), seed=0)
    logits = model.logits(["wire transfer to iban", "atm pin", "refund the fee"], None, batch_size=2)
    assert (logits[:, 1] == ABSENT_CLASS_LOGIT).all()
    assert list(logits.argmax(axis=1)) != [1, 1, 1] and 1 not in logits.argmax(axis=1)
    np.testing.assert_allclose(np.exp(logits).sum(axis=1), 1.0, atol=1e-5)


def test_pair_texts_are_separate_features_and_regression_uses_ridge():
    pair = get_task("mrpc")
    rng = np.random.default_rng(0)
    words = rng.choice(FILLER + ["card", "fee"], size=(200, 4))
    text_a = [" ".join(row[:2]) for row in words]
    text_b = [" ".join(row[2:]) for row in words]
    labels = np.array(["card" in b for b in text_b], dtype=np.int64)  # only the second text decides
    model = fit_tfidf(pair, pa.table({"text_a": text_a, "text_b": text_b, "label": labels}), TfidfParams(), seed=0)
    assert len(model.features) == 2
    swapped = model.logits(text_b, text_a, batch_size=50).argmax(axis=1)
    assert (model.logits(text_a, text_b, batch_size=50).argmax(axis=1) == labels).mean() > 0.95
    assert (swapped == labels).mean() < 0.9  # a word counts differently in the first and second text
    assert list(model.token_counts(["aa bb cc", "xx"], ["one two", "uu vv ww xx yy"])) == [3, 5]

    stsb = get_task("stsb")
    scores = rng.uniform(0, 5, size=200)
    train = pa.table({"text_a": text_a, "text_b": text_b, "label": scores})
    outputs = fit_tfidf(stsb, train, TfidfParams(alpha=1.0), seed=0).logits(text_a, text_b, batch_size=64)
    assert outputs.shape == (200, 1) and np.isfinite(outputs).all() and outputs.std() > 0


def test_class_report_matches_scikit_learn_and_orders_the_confusions():
    rng = np.random.default_rng(3)
    gold = rng.integers(0, 3, size=120)
    logits = rng.normal(size=(120, 3)) + 2.0 * np.eye(3)[gold]
    predicted = logits.argmax(axis=1)
    report = class_report(THREE_CLASSES, logits, gold, top_confusions=2)

    precision, recall, f1, support = precision_recall_fscore_support(gold, predicted, labels=[0, 1, 2])
    assert list(report["per_class"]) == ["card", "transfer", "fee"]
    for index, name in enumerate(THREE_CLASSES.labels):
        row = report["per_class"][name]
        assert row == pytest.approx({"precision": precision[index], "recall": recall[index], "f1": f1[index],
                                     "support": support[index]})  # fmt: skip
    matrix = confusion_matrix(gold, predicted, labels=[0, 1, 2])
    off_diagonal = sorted(((matrix[g, p], g, p) for g in range(3) for p in range(3) if g != p), reverse=True)
    pairs = report["confused_pairs"]
    assert len(pairs) == 2 and pairs[0]["count"] >= pairs[1]["count"]
    assert [pair["count"] for pair in pairs] == [count for count, *_ in off_diagonal[:2]]
    names = THREE_CLASSES.labels
    assert all(matrix[names.index(p["gold"]), names.index(p["predicted"])] == p["count"] for p in pairs)
    assert class_report(THREE_CLASSES, np.eye(3)[gold], gold, top_confusions=5)["confused_pairs"] == []


def test_catalogue_fits_tfidf_on_the_prepared_train_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = get_task("sst2")
    source = model_source(TFIDF, task, Params())
    assert TFIDF in single_task_models(task, Params())
    with pytest.raises(FileNotFoundError, match="prepare --task sst2"):
        source.load("cpu")
    path = paths.prepared_split("sst2", "train")
    path.parent.mkdir(parents=True)
    train = queries(120, 0).filter(pa.compute.less(queries(120, 0).column("label"), 2))
    pq.write_table(train, path)
    loaded = model_source(TFIDF, task, Params()).load("cpu")
    assert loaded.logits(["the atm pin", "wire to iban"], None, 2).argmax(axis=1).tolist() == [0, 1]
    assert loaded.parameters["bytes"] > 0

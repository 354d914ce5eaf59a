"""The TF-IDF reference model, the one users try first: word 1-2-gram and char_wb 2-5-gram TF-IDF (sublinear tf),
then logistic regression (Ridge for a regression task), fitted on a task's labelled train rows; no teacher, no GPU.

A pair task's two texts get a vectorizer pair each and their features are concatenated, ``[features(a),
features(b)]``: a word of the first text and the same word of the second are different features.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from scipy import sparse
from scipy.special import log_softmax
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import FeatureUnion

from pipeline.data.schema import table_texts
from pipeline.data.tasks import Task
from pipeline.params import TfidfParams

MAX_ITER = 2000  # lbfgs iterations: enough to converge on tasks of ~10k rows and 77 classes
ABSENT_CLASS_LOGIT = -1e4  # log-probability of a class no train row has: it never wins, softmax gives it 0


def _vectorizers(params: TfidfParams) -> FeatureUnion:
    """Word and char_wb TF-IDF of one text column, side by side."""
    options = {"sublinear_tf": True, "max_features": params.max_features}
    return FeatureUnion(
        [
            ("word", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), **options)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), **options)),
        ]
    )


def _columns(text_a: Sequence[str], text_b: Sequence[str] | None) -> list[Sequence[str]]:
    return [text_a] if text_b is None else [text_a, text_b]


class TfidfModel:
    """Fitted vectorizers (one ``FeatureUnion`` per text column) and the linear model on their features."""

    def __init__(self, task: Task, features: list[FeatureUnion], model: LogisticRegression | Ridge) -> None:
        self.task = task
        self.features = features
        self.model = model
        self.parameters = {"bytes": len(pickle.dumps((features, model)))}  # pickled vectorizers and model

    def _matrix(self, text_a: Sequence[str], text_b: Sequence[str] | None) -> sparse.csr_matrix:
        blocks = [
            union.transform(column) for union, column in zip(self.features, _columns(text_a, text_b), strict=True)
        ]
        return sparse.hstack(blocks, format="csr")

    def _outputs(self, matrix: sparse.csr_matrix) -> np.ndarray:
        if self.task.is_regression:
            return self.model.predict(matrix)[:, None]
        scores = self.model.decision_function(matrix)
        if scores.ndim == 1:  # two classes: the score of the second, against 0 for the first
            scores = np.stack([np.zeros_like(scores), scores], axis=1)
        out = np.full((matrix.shape[0], self.task.num_outputs), ABSENT_CLASS_LOGIT)
        out[:, self.model.classes_] = log_softmax(scores, axis=1)
        return out

    def logits(self, text_a: Sequence[str], text_b: Sequence[str] | None, batch_size: int) -> np.ndarray:
        """``[n, num_outputs]`` float32, ``batch_size`` rows at a time: class log-probabilities in class-index order
        (``ABSENT_CLASS_LOGIT`` for a class train lacks), or the predicted score (regression)."""
        out = np.empty((len(text_a), self.task.num_outputs), dtype=np.float32)
        for start in range(0, len(text_a), batch_size):
            batch = slice(start, start + batch_size)
            out[batch] = self._outputs(self._matrix(text_a[batch], text_b[batch] if text_b is not None else None))
        return out

    def token_counts(self, text_a: Sequence[str], text_b: Sequence[str] | None) -> np.ndarray:
        """Words per row as the word vectorizer splits them (the longer text of a pair); nothing is ever cut."""
        analyzers = [union.named_transformers["word"].build_tokenizer() for union in self.features]
        counts = [
            [len(analyze(text)) for text in column]
            for analyze, column in zip(analyzers, _columns(text_a, text_b), strict=True)
        ]
        return np.max(counts, axis=0).astype(np.int64)


def fit_tfidf(task: Task, train: pa.Table, params: TfidfParams, seed: int) -> TfidfModel:
    """The model fitted on a prepared train split (``text_a``, ``text_b``, ``label``); deterministic."""
    features = [_vectorizers(params) for _ in task.text_columns]
    text_a, text_b = table_texts(task, train)
    blocks = [union.fit_transform(column) for union, column in zip(features, _columns(text_a, text_b), strict=True)]
    labels = train.column("label").to_numpy()
    if task.is_regression:
        model = Ridge(alpha=params.alpha, random_state=seed)
    else:
        model = LogisticRegression(C=params.C, max_iter=MAX_ITER, random_state=seed)
    model.fit(sparse.hstack(blocks, format="csr"), labels)
    return TfidfModel(task, features, model)

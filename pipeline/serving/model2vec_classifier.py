"""The model2vec reference model, what users try after TF-IDF: static token embeddings distilled by the ``model2vec``
library from the teacher's base checkpoint (one forward pass per vocabulary token, PCA, SIF weights), then the
library's ``StaticModelForClassification`` (``StaticModelForRegression`` for a regression task: an MLP on the mean
embedding, MSE) fitted on a task's labelled train rows, early-stopped on a dev split. No fine-tuned teacher, no
transfer set.

Saved as the library's pipeline folder (safetensors embeddings and head, ``tokenizer.json``, ``config.json``):
loading and scoring need numpy and tokenizers only (torch and ``datasets`` only to fit). A pair task's texts are
joined as ``a [SEP] b``: a mean of static embeddings cannot tell which text a token came from, so on pair tasks this
is the naive model a user would build, not a strong one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.data.schema import table_texts
from pipeline.data.tasks import Task
from pipeline.params import Model2VecParams

if TYPE_CHECKING:
    import pyarrow as pa
    from model2vec import StaticModel
    from model2vec.inference import StaticModelPipeline

PAIR_SEPARATOR = " [SEP] "
ABSENT_CLASS_LOGIT = -1e4  # log-probability of a class no train row has: it never wins, softmax gives it 0
MIN_PROBABILITY = float(np.finfo(np.float32).tiny)  # floor before the log: a softmax underflow stays finite


def joined_texts(text_a: Sequence[str], text_b: Sequence[str] | None) -> list[str]:
    """The model's input texts: ``text_a``, or ``a [SEP] b`` for a pair."""
    if text_b is None:
        return list(text_a)
    return [a + PAIR_SEPARATOR + b for a, b in zip(text_a, text_b, strict=True)]


class Model2VecModel:
    """A fitted model2vec pipeline (static model + MLP head) scoring a task's texts."""

    def __init__(self, task: Task, pipeline: StaticModelPipeline) -> None:
        self.task = task
        self.pipeline = pipeline
        static = pipeline.model
        head = [array for layer in pipeline.head.layers for array in (layer.weight, layer.bias)]
        embeddings = [static.embedding] + ([static.weights] if static.weights is not None else [])
        head_size = sum(array.size for array in head)
        self.parameters = {
            "total": sum(array.size for array in embeddings) + head_size,
            "without_embeddings": head_size,
            "bytes": sum(array.nbytes for array in embeddings + head),
        }
        self.max_length: int | None = static.max_length

    @classmethod
    def load(cls, task: Task, folder: Path) -> Model2VecModel:
        """The pipeline saved in ``folder`` (``save``)."""
        from model2vec.inference import StaticModelPipeline

        return cls(task, StaticModelPipeline.from_pretrained(folder))

    def save(self, folder: Path) -> None:
        """Write the library's pipeline folder."""
        self.pipeline.save_pretrained(str(folder))

    def logits(self, text_a: Sequence[str], text_b: Sequence[str] | None, batch_size: int) -> np.ndarray:
        """``[n, num_outputs]`` float32: class log-probabilities in class-index order (``ABSENT_CLASS_LOGIT`` for a
        class train lacks), or the predicted score (regression); in one process, one library call (tokeniser,
        pooling and head) per ``batch_size`` rows, as the students are run (the library's own ``batch_size`` batches
        the pooling only and runs the head once over every row, which no batch-1 deployment does)."""
        texts = joined_texts(text_a, text_b)
        out = np.full((len(texts), self.task.num_outputs), ABSENT_CLASS_LOGIT, dtype=np.float32)
        options = {"batch_size": batch_size, "use_multiprocessing": False}
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            rows = slice(start, start + len(batch))
            if self.task.is_regression:
                out[rows] = np.asarray(self.pipeline.predict(batch, **options), dtype=np.float32).reshape(-1, 1)
            else:
                probabilities = self.pipeline.predict_proba(batch, **options)
                out[rows, self.pipeline.classes_.astype(np.int64)] = np.log(np.maximum(probabilities, MIN_PROBABILITY))
        return out

    def token_counts(self, text_a: Sequence[str], text_b: Sequence[str] | None) -> np.ndarray:
        """Tokens per row as the static model's tokenizer splits the joined text, untruncated."""
        encoded = self.pipeline.model.tokenizer.encode_batch(joined_texts(text_a, text_b), add_special_tokens=False)
        return np.array([len(encoding.ids) for encoding in encoded], dtype=np.int64)


def fit_model2vec(
    task: Task, static: StaticModel, train: pa.Table, dev: pa.Table, params: Model2VecParams, seed: int, device: str
) -> Model2VecModel:
    """The library's classifier (regressor) on ``static``, fitted on the prepared ``train`` rows, early-stopped on
    ``dev`` (its rows of a class train lacks left out: the library refuses them), seeded by ``seed``."""
    from model2vec.train import StaticModelForClassification, StaticModelForRegression

    model_class = StaticModelForRegression if task.is_regression else StaticModelForClassification
    model = model_class.from_static_model(model=static, n_layers=params.n_layers, hidden_dim=params.hidden_dim)
    texts, labels = joined_texts(*table_texts(task, train)), train.column("label").to_numpy()
    dev_texts, dev_labels = joined_texts(*table_texts(task, dev)), dev.column("label").to_numpy()
    if task.is_regression:
        targets, dev_targets = labels.astype(np.float32)[:, None], dev_labels.astype(np.float32)[:, None]
    else:
        known = np.isin(dev_labels, labels)
        dev_texts = [text for text, keep in zip(dev_texts, known, strict=True) if keep]
        targets, dev_targets = labels.tolist(), dev_labels[known].tolist()
    model.fit(
        texts, targets, X_val=dev_texts, y_val=dev_targets, learning_rate=params.learning_rate,
        batch_size=params.batch_size, max_epochs=params.max_epochs, early_stopping_patience=params.patience,
        device=device, random_seed=seed,
    )  # fmt: skip
    return Model2VecModel(task, model.to_pipeline())

"""Dev metrics recomputed outside the pipeline's evaluation code, to check what ``evaluate`` and ``compare`` report.

The texts and gold labels come straight from the GLUE TSV files (parsed here by header name, not by
``pipeline.data.glue``), the teachers run through plain ``transformers`` (AutoTokenizer +
AutoModelForSequenceClassification), the students through ``load_student`` + ``predict``, the model2vec reference
model through the ``model2vec`` library's own pipeline, the TF-IDF reference model refitted here with scikit-learn on
the GLUE train file (the settings documented for ``tfidf``, not ``pipeline.serving.tfidf``), and the metrics through
sklearn/scipy. A report whose
numbers match these to 1e-4 scored the right models on the right rows against their own labels: a label shifted by
one row, another split, or another model's outputs would not match.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from scipy import sparse
from scipy.stats import pearsonr, spearmanr
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, f1_score
from transformers import AutoModelForSequenceClassification, AutoTokenizer

# task -> (GLUE folder, dev file stem, first text column, second text column, label column), as in GLUE's files
GLUE_COLUMNS = {
    "sst2": ("SST-2", "dev", "sentence", None, "label"),
    "qqp": ("QQP", "dev", "question1", "question2", "is_duplicate"),
    "stsb": ("STS-B", "dev", "sentence1", "sentence2", "score"),
}
# Padding differs between the two paths (float noise of ~1e-7 in the logits), and an untrained tiny regressor's
# near-constant outputs magnify that in a correlation (2.7e-5 seen); one row of 16 moves a metric by far more.
TOLERANCE = 1e-4
MKD_ARCHITECTURES = ("biattentive", "transformer", "bilstm")


class Dev:
    """One headed GLUE TSV file of a task: texts as written (surrounding spaces removed) and gold labels."""

    def __init__(self, task: str, path: Path) -> None:
        _, _, column_a, column_b, column_label = GLUE_COLUMNS[task]
        lines = [line for line in Path(path).read_text(encoding="utf-8").split("\n") if line]
        header = lines[0].split("\t")
        rows = [line.split("\t") for line in lines[1:]]
        assert all(len(row) == len(header) for row in rows), path
        self.task = task
        self.text_a = [row[header.index(column_a)].strip() for row in rows]
        self.text_b = None if column_b is None else [row[header.index(column_b)].strip() for row in rows]
        raw = [row[header.index(column_label)].strip() for row in rows]
        self.labels = np.array([float(v) for v in raw]) if task == "stsb" else np.array([int(v) for v in raw])

    @classmethod
    def of_project(cls, project: Path, task: str, stem: str | None = None) -> Dev:
        """The dev file (or the ``stem`` file, e.g. ``train``) of ``task`` in the GLUE folder params.yaml names."""
        folder, dev_stem, *_ = GLUE_COLUMNS[task]
        return cls(task, Path(project_params(project)["data"]["glue_dir"]) / folder / f"{stem or dev_stem}.tsv")

    def columns(self) -> list[list[str]]:
        return [self.text_a] if self.text_b is None else [self.text_a, self.text_b]

    def __len__(self) -> int:
        return len(self.text_a)


def project_params(project: Path) -> dict:
    return yaml.safe_load((project / "params.yaml").read_text())


@torch.inference_mode()
def teacher_outputs(model_dir: Path, data: Dev, max_length: int) -> np.ndarray:
    """Logits of a saved Hugging Face teacher folder, one padded batch, fp32 on CPU."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    encoded = tokenizer(data.text_a, data.text_b, truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt")  # fmt: skip
    return model(**encoded).logits.float().numpy()


def student_outputs(model_dir: Path, data: Dev) -> np.ndarray:
    """Logits of a saved student folder (any architecture) for ``data.task``'s head."""
    from pipeline.students.architectures import load_student
    from pipeline.students.inference import predict

    model, encoder = load_student(model_dir, torch.device("cpu"))
    return predict(model, encoder, data.task, data.text_a, data.text_b, batch_size=len(data))


def model2vec_outputs(folder: Path, data: Dev) -> np.ndarray:
    """The model2vec pipeline folder's predictions (the library's ``predict``; pairs joined as ``a [SEP] b``): one-hot
    rows of the predicted classes, or the predicted scores (STS-B)."""
    from model2vec.inference import StaticModelPipeline

    pipeline = StaticModelPipeline.from_pretrained(folder)
    texts = data.text_a if data.text_b is None else [f"{a} [SEP] {b}" for a, b in zip(data.text_a, data.text_b)]
    predicted = pipeline.predict(texts, use_multiprocessing=False)
    if data.task == "stsb":
        return np.asarray(predicted, dtype=np.float64).reshape(len(texts), 1)
    return np.eye(2)[predicted.astype(int)]


def tfidf_outputs(project: Path, data: Dev) -> np.ndarray:
    """The TF-IDF reference model as documented (per text column: word 1-2-gram and char_wb 2-5-gram TF-IDF,
    sublinear tf, side by side; logistic regression, Ridge for STS-B), fitted on the project's GLUE train file:
    one-hot rows of the predicted classes, or the predicted scores."""
    params = project_params(project)
    settings, train = params["tfidf"], Dev.of_project(project, data.task, "train")
    fitted, scored = [], []
    for train_column, column in zip(train.columns(), data.columns(), strict=True):
        options = {"sublinear_tf": True, "max_features": settings["max_features"]}
        for vectorizer in (TfidfVectorizer(analyzer="word", ngram_range=(1, 2), **options),
                           TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), **options)):  # fmt: skip
            fitted.append(vectorizer.fit_transform(train_column))
            scored.append(vectorizer.transform(column))
    features, rows = sparse.hstack(fitted, format="csr"), sparse.hstack(scored, format="csr")
    if data.task == "stsb":
        return Ridge(alpha=settings["alpha"]).fit(features, train.labels).predict(rows).reshape(len(data), 1)
    model = LogisticRegression(C=settings["C"], max_iter=2000, random_state=params["seed"])
    return np.eye(2)[model.fit(features, train.labels).predict(rows)]


def task_metrics(task: str, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The GLUE metrics of ``task``: accuracy (SST-2), F1 and accuracy (QQP), Pearson and Spearman (STS-B)."""
    if task == "stsb":
        scores = outputs[:, 0].astype(np.float64)
        return {"pearson": float(pearsonr(scores, labels)[0]), "spearman": float(spearmanr(scores, labels)[0])}
    predicted = outputs.argmax(axis=1)
    metrics = {"accuracy": float(accuracy_score(labels, predicted))}
    if task == "qqp":
        metrics["f1"] = float(f1_score(labels, predicted))
    return metrics


def model_dirs(project: Path, task: str, multi_task: bool = False) -> dict[str, tuple[str, Path]]:
    """Model name -> (kind, folder) of the models a report names: teacher, KD student, no-KD baseline, and with
    ``multi_task`` the multi-task teacher and every MKD student (joint, and fine-tuned for ``task`` if kept)."""
    models = {
        "teacher": ("teacher", project / "models" / "teacher" / task),
        "student": ("student", project / "models" / "student" / task),
        "baseline": ("student", project / "models" / "baseline" / task),
        "model2vec": ("model2vec", project / "models" / "model2vec" / task),
        "tfidf": ("tfidf", project / "data" / "prepared" / task),  # refitted on the GLUE train file, no folder read
        "static": ("student", project / "models" / "static" / task),
    }
    if multi_task:
        models["mt_teacher"] = ("teacher", project / "models" / "mt_teacher" / task)
        for architecture in MKD_ARCHITECTURES:
            root = project / "models" / "mkd" / architecture
            models[f"mkd_{architecture}_joint"] = ("student", root / "multitask")
            tuned = root / task
            models[f"mkd_{architecture}"] = ("student", tuned if tuned.is_dir() else root / "multitask")
    return models


# Models that must tell rows apart for a check against them to mean anything (a model predicting one class for every
# row scores the same against any order of the labels).
DISCERNING = ("teacher", "student", "baseline")


def recompute(project: Path, data: Dev, multi_task: bool = False) -> dict[str, dict[str, float]]:
    """Model name -> metrics on ``data``, recomputed from the saved models of ``project``. For the ``DISCERNING``
    models, also check that the metrics change when the labels are shifted by one row, i.e. that comparing a report
    with these numbers would catch labels misaligned with the rows."""
    max_length = project_params(project)["teacher"]["max_length"]
    shifted = np.roll(data.labels, 1)
    out = {}
    for name, (kind, folder) in model_dirs(project, data.task, multi_task).items():
        if kind == "teacher":
            outputs = teacher_outputs(folder, data, max_length)
        elif kind == "model2vec":
            outputs = model2vec_outputs(folder, data)
        elif kind == "tfidf":
            outputs = tfidf_outputs(project, data)
        else:
            outputs = student_outputs(folder, data)
        assert outputs.shape[0] == len(data), (name, outputs.shape)
        out[name] = task_metrics(data.task, outputs, data.labels)
        if name in DISCERNING:
            assert task_metrics(data.task, outputs, shifted) != out[name], (
                f"{name} scores {out[name]} on {data.task} whether or not the labels are shifted by a row: "
                "it cannot check a report's alignment (trained to predict one class?)"
            )
    return out


def assert_same_metrics(reported: dict[str, dict[str, float]], expected: dict[str, dict[str, float]], what: str):
    """Every model of ``expected`` reported with exactly its metrics, each within ``TOLERANCE``."""
    for model, metrics in expected.items():
        assert set(reported[model]) == set(metrics), (what, model, reported[model])
        for name, value in metrics.items():
            assert abs(reported[model][name] - value) <= TOLERANCE, (
                f"{what}: {model} {name} reported {reported[model][name]!r}, recomputed independently {value!r}"
            )

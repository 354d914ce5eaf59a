"""Dev metrics recomputed outside the pipeline's evaluation code, to check what ``evaluate`` and ``compare`` report.

The texts and gold labels come straight from the GLUE TSV files (parsed here by header name, not by
``pipeline.data.glue``), the teachers run through plain ``transformers`` (AutoTokenizer +
AutoModelForSequenceClassification), the students through ``load_student`` + ``predict``, the model2vec reference
model through the ``model2vec`` library's own pipeline, the TF-IDF reference model refitted here with scikit-learn on
the GLUE train file (the settings documented for ``tfidf``, not ``pipeline.serving.tfidf``), the exported students
(``models/export/...``) from their folder's ``config.json`` and ``tokenizer.json`` with the ``tokenizers`` library and
onnxruntime (not ``pipeline.serving.deploy``), and the metrics through sklearn/scipy. A task of your own reads its rows
from its prepared Parquet splits (the TF-IDF model is refitted on its prepared train split). A report whose
numbers match these to 1e-4 scored the right models on the right rows against their own labels: a label shifted by
one row, another split, or another model's outputs would not match.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import torch
import yaml
from scipy import sparse
from scipy.stats import pearsonr, spearmanr
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from tokenizers import Tokenizer
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
# GLUE's metrics per task (Wang et al. 2019), written out here rather than read from pipeline.data.tasks
GLUE_METRICS = {
    "sst2": ("accuracy",), "cola": ("mcc", "accuracy"), "mrpc": ("f1", "accuracy"), "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearman"), "mnli": ("accuracy",), "qnli": ("accuracy",), "rte": ("accuracy",),
    "wnli": ("accuracy",),
}  # fmt: skip
REGRESSION_METRICS = ("pearson", "spearman")


class Rows:
    """Texts and gold labels (class indices, or scores) of one split of a task, and the names of the task's metrics."""

    def __init__(self, task: str, text_a: list[str], text_b: list[str] | None, labels: np.ndarray,
                 metrics: Sequence[str]) -> None:  # fmt: skip
        self.task, self.text_a, self.text_b, self.labels, self.metrics = task, text_a, text_b, labels, tuple(metrics)

    @classmethod
    def prepared(cls, project: Path, task: str, split: str, metrics: Sequence[str]) -> Rows:
        """A prepared split of a task of your own (``data/prepared/<task>/<split>.parquet``)."""
        table = pq.read_table(project / "data" / "prepared" / task / f"{split}.parquet").to_pydict()
        text_b = None if all(text is None for text in table["text_b"]) else table["text_b"]
        return cls(task, table["text_a"], text_b, np.array(table["label"]), metrics)

    @property
    def is_regression(self) -> bool:
        return set(self.metrics) <= set(REGRESSION_METRICS)

    def columns(self) -> list[list[str]]:
        return [self.text_a] if self.text_b is None else [self.text_a, self.text_b]

    def __len__(self) -> int:
        return len(self.text_a)


class Dev(Rows):
    """One headed GLUE TSV file of a task: texts as written (surrounding spaces removed) and gold labels."""

    def __init__(self, task: str, path: Path) -> None:
        _, _, column_a, column_b, column_label = GLUE_COLUMNS[task]
        lines = [line for line in Path(path).read_text(encoding="utf-8").split("\n") if line]
        header = lines[0].split("\t")
        rows = [line.split("\t") for line in lines[1:]]
        assert all(len(row) == len(header) for row in rows), path
        text_a = [row[header.index(column_a)].strip() for row in rows]
        text_b = None if column_b is None else [row[header.index(column_b)].strip() for row in rows]
        raw = [row[header.index(column_label)].strip() for row in rows]
        labels = np.array([float(v) for v in raw]) if task == "stsb" else np.array([int(v) for v in raw])
        super().__init__(task, text_a, text_b, labels, GLUE_METRICS[task])

    @classmethod
    def of_project(cls, project: Path, task: str, stem: str | None = None) -> Dev:
        """The dev file (or the ``stem`` file, e.g. ``train``) of ``task`` in the GLUE folder params.yaml names."""
        folder, dev_stem, *_ = GLUE_COLUMNS[task]
        return cls(task, Path(project_params(project)["data"]["glue_dir"]) / folder / f"{stem or dev_stem}.tsv")


def project_params(project: Path) -> dict:
    return yaml.safe_load((project / "params.yaml").read_text())


@torch.inference_mode()
def teacher_outputs(model_dir: Path, data: Rows, max_length: int) -> np.ndarray:
    """Logits of a saved Hugging Face teacher folder, one padded batch, fp32 on CPU."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    encoded = tokenizer(data.text_a, data.text_b, truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt")  # fmt: skip
    return model(**encoded).logits.float().numpy()


def student_outputs(model_dir: Path, data: Rows) -> np.ndarray:
    """Logits of a saved student folder (any architecture) for ``data.task``'s head."""
    from pipeline.students.architectures import load_student
    from pipeline.students.inference import predict

    model, encoder = load_student(model_dir, torch.device("cpu"))
    return predict(model, encoder, data.task, data.text_a, data.text_b, batch_size=len(data))


def one_hot(classes: np.ndarray) -> np.ndarray:
    """Rows with a 1 at each predicted class index (what ``task_metrics`` reads of a classifier's outputs)."""
    classes = np.asarray(classes).astype(int)
    return np.eye(int(classes.max()) + 1)[classes]


def model2vec_outputs(folder: Path, data: Rows) -> np.ndarray:
    """The model2vec pipeline folder's predictions (the library's ``predict``; pairs joined as ``a [SEP] b``): one-hot
    rows of the predicted classes, or the predicted scores (regression)."""
    from model2vec.inference import StaticModelPipeline

    pipeline = StaticModelPipeline.from_pretrained(folder)
    texts = data.text_a if data.text_b is None else [f"{a} [SEP] {b}" for a, b in zip(data.text_a, data.text_b)]
    predicted = pipeline.predict(texts, use_multiprocessing=False)
    if data.is_regression:
        return np.asarray(predicted, dtype=np.float64).reshape(len(texts), 1)
    return one_hot(predicted)


def tfidf_outputs(project: Path, data: Rows) -> np.ndarray:
    """The TF-IDF reference model as documented (per text column: word 1-2-gram and char_wb 2-5-gram TF-IDF,
    sublinear tf, side by side; logistic regression, Ridge for regression), fitted on the project's GLUE train file
    (a task of your own: its prepared train split): one-hot rows of the predicted classes, or the predicted scores."""
    params = project_params(project)
    if data.task in GLUE_COLUMNS:
        train = Dev.of_project(project, data.task, "train")
    else:
        train = Rows.prepared(project, data.task, "train", data.metrics)
    settings = params["tfidf"]
    fitted, scored = [], []
    for train_column, column in zip(train.columns(), data.columns(), strict=True):
        options = {"sublinear_tf": True, "max_features": settings["max_features"]}
        for vectorizer in (TfidfVectorizer(analyzer="word", ngram_range=(1, 2), **options),
                           TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), **options)):  # fmt: skip
            fitted.append(vectorizer.fit_transform(train_column))
            scored.append(vectorizer.transform(column))
    features, rows = sparse.hstack(fitted, format="csr"), sparse.hstack(scored, format="csr")
    if data.is_regression:
        return Ridge(alpha=settings["alpha"]).fit(features, train.labels).predict(rows).reshape(len(data), 1)
    model = LogisticRegression(C=settings["C"], max_iter=2000, random_state=params["seed"])
    return one_hot(model.fit(features, train.labels).predict(rows))


def exported_tokens(config: dict[str, Any], tokenizer: Tokenizer, data: Rows) -> list[list[list[int]]]:
    """Token ids per model input of an exported folder (``ids[k][row]``), as its ``config.json`` describes them: each
    text with the ``replace`` substitutions made and tokenized by ``tokenizer`` without special tokens, then

    - ``"encoding": "separate"`` (LSTM and static students): one list per text column (``inputs``, e.g. ``a`` and
      ``b``), an empty one the unknown token ``unk_id``, cut to ``max_length``;
    - ``"encoding": "joint"`` (Transformer students): inputs ``ids``, ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]``
      cut to ``max_length`` tokens longest-first (``joint_sequence``), and ``type_ids``, its segment ids."""

    def pieces(text: str) -> list[int]:
        for old, new in config["replace"].items():
            text = text.replace(old, new)
        return tokenizer.encode(text, add_special_tokens=False).ids

    columns = [[pieces(text) for text in column] for column in data.columns()]
    if config["encoding"] == "separate":
        assert len(columns) == len(config["inputs"]), (config["inputs"], len(columns))
        return [[(ids or [config["unk_id"]])[: config["max_length"]] for ids in column] for column in columns]
    assert config["encoding"] == "joint" and config["inputs"] == ["ids", "type_ids"], config
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    assert cls is not None and sep is not None, "a joint encoding's tokenizer has [CLS] and [SEP]"
    rows = [joint_sequence(texts, config["max_length"], cls, sep) for texts in zip(*columns, strict=True)]
    return [[ids for ids, _ in rows], [type_ids for _, type_ids in rows]]


def joint_sequence(texts: Sequence[list[int]], max_length: int, cls: int, sep: int) -> tuple[list[int], list[int]]:
    """``[CLS] a [SEP]`` (one text) or ``[CLS] a [SEP] b [SEP]`` (two) and its segment ids (0 up to the first
    ``[SEP]``, then 1), at most ``max_length`` tokens, cut as the ``tokenizers`` library's ``longest_first`` truncation
    cuts (the PyTorch Transformer student's Hugging Face tokenizer): a text loses tokens from its end; of a pair over
    the room the special tokens leave, the shorter text (the first on a tie) keeps at most half of it (rounded down)
    and the longer text the rest."""
    room = max_length - 1 - len(texts)
    lengths = [len(text) for text in texts]
    if sum(lengths) > room:
        if len(texts) == 1:
            lengths = [room]
        else:
            short = min(*lengths, room // 2)
            lengths = [room - short, short] if lengths[0] > lengths[1] else [short, room - short]
    ids, type_ids = [cls], [0]
    for segment, (text, length) in enumerate(zip(texts, lengths, strict=True)):
        ids += [*text[:length], sep]
        type_ids += [segment] * (length + 1)
    return ids, type_ids


def exported_outputs(folder: Path, variant: str, data: Rows, batch_size: int) -> np.ndarray:
    """Logits of one variant of an exported student folder, run as its ``config.json`` describes it, with the
    ``tokenizers`` library and onnxruntime alone: the token ids of ``exported_tokens``, fed per input with their
    lengths (``<input>_lengths``, where the graph reads them).

    Rows are batched as onnxruntime runs them in evaluate, compare and export, ``batch_size`` at a time in order of
    length, longest first, right-padded with ``pad_ids``: an int8 graph quantises its activations per batch (one
    range for the whole tensor, padding included), so another batching may move an int8 logit (fp32 only by float
    noise)."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_file(str(folder / config["tokenizer"]))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    session = ort.InferenceSession(str(folder / config["models"][variant]), providers=["CPUExecutionProvider"])
    graph_inputs = {node.name for node in session.get_inputs()}
    tokens = exported_tokens(config, tokenizer, data)
    longest = np.max([[len(row) for row in column] for column in tokens], axis=0)
    order = sorted(range(len(data)), key=lambda row: -longest[row])  # stable: ties keep their order
    out = np.zeros((len(data), 1 if config["labels"] is None else len(config["labels"])), dtype=np.float32)
    for start in range(0, len(data), batch_size):
        batch = order[start : start + batch_size]
        feed = {}
        for name, column in zip(config["inputs"], tokens, strict=True):
            lengths = np.array([len(column[row]) for row in batch], dtype=np.int64)
            padded = np.full((len(batch), lengths.max()), config["pad_ids"][name], dtype=np.int64)
            for i, row in enumerate(batch):
                padded[i, : lengths[i]] = column[row]
            feed[name], feed[f"{name}_lengths"] = padded, lengths
        out[batch] = session.run(["logits"], {key: value for key, value in feed.items() if key in graph_inputs})[0]
    return out


class Export(NamedTuple):
    """An exported student, as paths under the project with ``{task}`` to fill in: its folder, the export stage's
    check report (``by_task``: a report of several tasks, keyed by task) and the PyTorch model exported (its name in
    ``model_dirs``)."""

    folder: str
    report: str
    model: str
    by_task: bool = False


# The exported students of every project (model-name prefix -> Export) ...
EXPORTS = {
    "student-": Export("models/export/{task}", "metrics/export/{task}.json", "student"),
    "static-": Export("models/export/static/{task}", "metrics/export/static/{task}.json", "static"),
}
# ... and of a multi-task project, each MKD student's: export_mkd exports the model each task uses (fine-tuned, else
# the joint one; ``model_dirs``'s ``mkd_<architecture>``) and writes one report per architecture.
MKD_EXPORTS = {
    f"mkd_{architecture}-": Export(
        f"models/export/mkd/{architecture}/{{task}}", f"metrics/export/mkd/{architecture}.json", f"mkd_{architecture}",
        by_task=True,
    )
    for architecture in MKD_ARCHITECTURES
}  # fmt: skip
# A static student's folder may run row by row: pipeline.serving.deploy's numpy runtime for it quantises each row's
# activations alone, as onnxruntime does a batch of one row (its onnxruntime path: padded batches as the others).
ROW_BY_ROW = ("static-",)
LOGIT_TOLERANCE = 1e-5  # float noise between two fp32 runs of the same batches (seen: 2.4e-7)


def exports(multi_task: bool = False) -> dict[str, Export]:
    """The exported students (``EXPORTS``), with ``multi_task`` also the MKD students' (``MKD_EXPORTS``)."""
    return EXPORTS | MKD_EXPORTS if multi_task else EXPORTS


def exported_variants(project: Path, task: str, multi_task: bool = False) -> dict[str, tuple[Path, str]]:
    """Model name (``student-onnx``, ``static-int8``, ``mkd_transformer-int8``, ...) -> (folder, variant) of every
    exported variant on disk (``exports``)."""
    out = {}
    for prefix, export in exports(multi_task).items():
        path = project / export.folder.format(task=task)
        for variant in json.loads((path / "config.json").read_text(encoding="utf-8"))["models"]:
            out[prefix + variant] = (path, variant)
    return out


def exported_runs(project: Path, data: Rows, batch_size: int, multi_task: bool = False) -> dict[str, list[np.ndarray]]:
    """Model name -> the outputs on ``data`` of every exported variant, each way the pipeline may run it: in padded
    batches of ``batch_size``, and for a static student's folder also row by row (``ROW_BY_ROW``). An int8 logit can
    differ between the two (per-batch activation ranges), so a reported number is compared with the same batching,
    not with a tolerance wide enough to hide a row."""
    out = {}
    for name, (folder, variant) in exported_variants(project, data.task, multi_task).items():
        batchings = [batch_size, 1] if name.startswith(ROW_BY_ROW) and batch_size > 1 else [batch_size]
        out[name] = [exported_outputs(folder, variant, data, size) for size in batchings]
    return out


def recompute_exported(
    project: Path, data: Rows, batch_size: int, discerning: bool = True, multi_task: bool = False
) -> dict[str, list[dict[str, float]]]:
    """Model name -> the metrics on ``data`` of each run of ``exported_runs``; with ``discerning`` the KD student's
    variants must also tell rows apart (see ``recompute``)."""
    out = {}
    for name, runs in exported_runs(project, data, batch_size, multi_task).items():
        out[name] = [task_metrics(data.task, outputs, data.labels, data.metrics) for outputs in runs]
        if discerning and name.startswith("student-"):
            assert_discerning(name, data, runs[0], out[name][0])
    return out


def recompute_logit_diffs(
    project: Path, data: Rows, batch_size: int, multi_task: bool = False
) -> dict[str, list[float]]:
    """Model name -> the largest absolute difference on ``data`` between each run of ``exported_runs`` and the logits
    of the PyTorch model it was exported from (``student_outputs``): what export reports as ``max_abs_logit_diff``,
    which on tiny data tells an int8 variant's outputs apart where its metrics cannot."""
    models = model_dirs(project, data.task, multi_task=True)
    references = {
        prefix: student_outputs(models[export.model][1], data) for prefix, export in exports(multi_task).items()
    }
    out = {}
    for name, runs in exported_runs(project, data, batch_size, multi_task).items():
        reference = next(outputs for prefix, outputs in references.items() if name.startswith(prefix))
        out[name] = [float(np.abs(outputs - reference).max()) for outputs in runs]
    return out


def export_reported(project: Path, task: str, split: str, key: str = "dev", multi_task: bool = False) -> dict[str, Any]:
    """Model name -> what the export stages wrote for each exported variant (``exports``): ``key`` ``dev``: its
    metrics on ``split``; else that entry (``max_abs_logit_diff``, over the dev splits)."""
    out = {}
    for prefix, export in exports(multi_task).items():
        report = json.loads((project / export.report.format(task=task)).read_text(encoding="utf-8"))
        variants = (report[task] if export.by_task else report)["variants"]
        out |= {
            prefix + variant: entry["dev"][split] if key == "dev" else entry[key] for variant, entry in variants.items()
        }
    return out


def assert_exports_match(
    project: Path, data: Rows, split: str, quality: dict[str, Any], what: str, discerning: bool = True,
    multi_task: bool = False,
) -> None:  # fmt: skip
    """The exported variants run from their folders (``exported_runs``; with ``multi_task`` the MKD students' too)
    give the metrics ``quality`` reports on ``data``, the task's ``split`` (metrics/report/<task>.json's entry, or
    compare's), batched as evaluate and compare batch them (teacher.eval_batch_size); on dev, also the metrics and
    largest logit difference from the PyTorch model that the export stages reported, batched as they batch them
    (export.check_batch_size)."""
    params = project_params(project)
    variants = recompute_exported(project, data, params["teacher"]["eval_batch_size"], discerning, multi_task)
    students = ["student", "static", *(f"mkd_{architecture}" for architecture in MKD_ARCHITECTURES if multi_task)]
    assert {f"{student}-{variant}" for student in students for variant in ("onnx", "int8")} <= set(variants), variants
    assert_one_of(quality, variants, f"{what}, exported variants")
    if split != "dev":  # the export stages check the variants on dev only
        return
    size, reports = params["export"]["check_batch_size"], f"metrics/export/**/*.json ({data.task})"
    exported = recompute_exported(project, data, size, discerning, multi_task)
    assert_one_of(export_reported(project, data.task, split, multi_task=multi_task), exported, reports)
    assert_one_of(
        export_reported(project, data.task, split, "max_abs_logit_diff", multi_task),
        recompute_logit_diffs(project, data, size, multi_task),
        f"{reports} max_abs_logit_diff",
        LOGIT_TOLERANCE,
    )


def assert_one_of(reported: dict[str, Any], expected: dict[str, list[Any]], what: str, tolerance: float = TOLERANCE):
    """Every model of ``expected`` reported with one of its candidate values (metrics, each within ``tolerance``; or
    a number within it)."""

    def same(value: Any, candidate: Any) -> bool:
        if isinstance(candidate, dict):
            return set(value) == set(candidate) and all(abs(value[k] - candidate[k]) <= tolerance for k in candidate)
        return abs(value - candidate) <= tolerance

    for model, candidates in expected.items():
        assert any(same(reported[model], candidate) for candidate in candidates), (
            f"{what}: {model} reported {reported[model]!r}, recomputed independently {candidates!r}"
        )


def task_metrics(task: str, outputs: np.ndarray, labels: np.ndarray, names: Sequence[str] | None = None
                 ) -> dict[str, float]:  # fmt: skip
    """The metrics ``names`` (default: GLUE's metrics of ``task``, ``GLUE_METRICS``): accuracy, binary F1 of class
    1, macro-F1 and MCC of the argmax of the outputs, or Pearson and Spearman of the first output column."""
    names = GLUE_METRICS[task] if names is None else names
    if set(names) <= set(REGRESSION_METRICS):
        scores = outputs[:, 0].astype(np.float64)
        correlations = {"pearson": pearsonr(scores, labels)[0], "spearman": spearmanr(scores, labels)[0]}
        return {name: float(correlations[name]) for name in names}
    predicted = outputs.argmax(axis=1)
    scorers = {
        "accuracy": lambda: accuracy_score(labels, predicted),
        "f1": lambda: f1_score(labels, predicted, zero_division=0.0),
        "macro_f1": lambda: f1_score(labels, predicted, average="macro", zero_division=0.0),
        "mcc": lambda: matthews_corrcoef(labels, predicted),
    }
    return {name: float(scorers[name]()) for name in names}


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


def assert_discerning(name: str, data: Rows, outputs: np.ndarray, metrics: dict[str, float]) -> None:
    """The metrics change when the labels are shifted by one row: comparing a report with them would catch labels
    misaligned with the rows."""
    assert task_metrics(data.task, outputs, np.roll(data.labels, 1), data.metrics) != metrics, (
        f"{name} scores {metrics} on {data.task} whether or not the labels are shifted by a row: "
        "it cannot check a report's alignment (trained to predict one class?)"
    )


def recompute(
    project: Path, data: Rows, multi_task: bool = False, discerning: bool = True
) -> dict[str, dict[str, float]]:
    """Model name -> metrics on ``data``, recomputed from the saved models of ``project``. With ``discerning``, for
    the ``DISCERNING`` models also check that the metrics change when the labels are shifted by one row
    (``assert_discerning``); a task whose tiny models predict one class cannot pass that check."""
    max_length = project_params(project)["teacher"]["max_length"]
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
        out[name] = task_metrics(data.task, outputs, data.labels, data.metrics)
        if discerning and name in DISCERNING:
            assert_discerning(name, data, outputs, out[name])
    return out


def assert_same_metrics(reported: dict[str, dict[str, float]], expected: dict[str, dict[str, float]], what: str):
    """Every model of ``expected`` reported with exactly its metrics, each within ``TOLERANCE``."""
    for model, metrics in expected.items():
        assert set(reported[model]) == set(metrics), (what, model, reported[model])
        for name, value in metrics.items():
            assert abs(reported[model][name] - value) <= TOLERANCE, (
                f"{what}: {model} {name} reported {reported[model][name]!r}, recomputed independently {value!r}"
            )

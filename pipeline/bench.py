"""Score throughput benchmark: how close the score stage gets to the teacher's raw forward speed.

Three measurements in one run, on the same sentences, device and thread count, each after a one-batch warm-up:

* ceiling: the model forward alone, on pre-tokenized, pre-padded, length-sorted batches, at each requested batch
  size and at ours; the best is the ceiling;
* ours: ``score.score_table`` (tokenize, length-sort, batch, forward) plus writing the Parquet shard;
* naive: a ``transformers`` text-classification pipeline returning every class score (``top_k=None``), as a user
  would call it (the pipeline's default batching: one sentence at a time), under the same autocast.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    pipeline,
)

from pipeline import paths
from pipeline.batching import length_sorted_batches
from pipeline.device import autocast, autocast_dtype, pick_device, seed_everything
from pipeline.io import write_parquet
from pipeline.params import Params
from pipeline.prepare import read_glue_tsv
from pipeline.schema import transfer_schema
from pipeline.score import score_table
from pipeline.shards import shard_name
from pipeline.tasks import Task
from pipeline.teacher import (
    Encoded,
    batch_tensors,
    load_teacher,
    resolve_checkpoint,
    table_texts,
    token_lengths,
    tokenize,
)

T = TypeVar("T")


def bench_teacher(
    task: Task, params: Params, teacher_dir: Path | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """The teacher to time and where it came from: ``teacher_dir``, else the fine-tuned teacher if present,
    else ``teacher.checkpoint`` with a freshly initialised (seeded) classification head."""
    teacher_dir = teacher_dir or (paths.teacher_dir(task.name) if paths.teacher_dir(task.name).is_dir() else None)
    if teacher_dir is not None:
        return *load_teacher(teacher_dir), str(teacher_dir)
    checkpoint = resolve_checkpoint(params.teacher.checkpoint)
    seed_everything(params.seed)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=task.num_outputs).to(pick_device())
    return model.eval(), AutoTokenizer.from_pretrained(checkpoint), f"{params.teacher.checkpoint} (fresh head)"


def bench_sentences(task: Task, params: Params, count: int) -> tuple[pa.Table, str]:
    """The first ``count`` rows (transfer-set schema) of the transfer set, else the prepared train split,
    else the GLUE train TSV; and the file they came from."""
    for path in (paths.transfer_set(task.name), paths.prepared_split(task.name, "train")):
        if path.is_file():
            return _as_transfer_rows(task, pq.read_table(path).slice(0, count)), str(path)
    path = params.data.resolved_glue_dir() / task.glue_dir_name / "train.tsv"
    return _as_transfer_rows(task, read_glue_tsv(task, path).slice(0, count)), str(path)


def _as_transfer_rows(task: Task, table: pa.Table) -> pa.Table:
    """Prepared-split rows as transfer-set originals (transfer-set rows pass through unchanged)."""
    if "is_original" in table.column_names:
        return table
    columns = {
        "id": table.column("id"),
        "source_id": table.column("id"),
        "is_original": pa.array([True] * table.num_rows),
        "text_a": table.column("text_a"),
        "text_b": table.column("text_b"),
        "label": table.column("label"),
        "ops": pa.array([[]] * table.num_rows, pa.list_(pa.string())),
    }
    return pa.table(columns, schema=transfer_schema(task))


def _timed_rate(run: Callable[[T], object], warm_up: T, full: T, rows: int, device: torch.device) -> float:
    """Rows per second of ``run(full)``, timed after ``run(warm_up)`` (waiting for the GPU to finish)."""
    run(warm_up)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run(full)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return rows / (time.perf_counter() - start)


@torch.inference_mode()
def forward_ceiling(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, encoded: Encoded, batch_size: int,
                    dtype: torch.dtype | None) -> float:
    """Sentences/s of the model forward alone over pre-padded, length-sorted batches already on the device."""
    device = model.device
    batches = [
        batch_tensors(tokenizer, encoded, rows, device)
        for rows in length_sorted_batches(token_lengths(encoded), batch_size)
    ]

    def forward(batches: list[dict[str, torch.Tensor]]) -> None:
        with autocast(device, dtype):
            for batch in batches:
                model(**batch)

    return _timed_rate(forward, batches[:1], batches, len(encoded["input_ids"]), device)  # warm-up: the longest batch


def run_bench(task: Task, params: Params, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, table: pa.Table,
              batch_sizes: Sequence[int], threads: int) -> dict[str, Any]:
    """Time ceiling, ours and naive on ``table`` (transfer-set rows); sentences/s, ratios and settings."""
    device = model.device
    dtype = autocast_dtype(device, params.teacher.mixed_precision)
    batch_size, max_length = params.score.batch_size, params.score.max_length
    text_a, text_b = table_texts(task, table)
    classifier = pipeline("text-classification", model=model, tokenizer=tokenizer, device=device)

    def naive(texts: list) -> None:
        with autocast(device, dtype):
            classifier(texts, top_k=None, truncation=True, max_length=max_length)  # the pipeline's default batching

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        encoded = tokenize(tokenizer, text_a, text_b, max_length)
        sizes = sorted({*batch_sizes, batch_size})  # our batch size too: separates batching overhead from batch size
        ceiling = {size: forward_ceiling(model, tokenizer, encoded, size, dtype) for size in sizes}
        with tempfile.TemporaryDirectory() as tmp:
            def ours(rows: pa.Table) -> None:
                write_parquet(score_table(task, rows, model, tokenizer, params), Path(tmp) / shard_name(0))

            ours_rate = _timed_rate(ours, table.slice(0, batch_size), table, table.num_rows, device)
        inputs = text_a if text_b is None else [{"text": a, "text_pair": b} for a, b in zip(text_a, text_b)]
        naive_rate = _timed_rate(naive, inputs[:batch_size], inputs, table.num_rows, device)
    finally:
        torch.set_num_threads(previous_threads)

    best_size = max(ceiling, key=ceiling.get)
    return {
        "task": task.name,
        "sentences": table.num_rows,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": threads,
        "autocast": str(dtype).removeprefix("torch.") if dtype else "off (fp32)",
        "batch_size": batch_size,
        "max_length": max_length,
        "sentences_per_second": {"ceiling": ceiling[best_size], "ours": ours_rate, "naive": naive_rate},
        "ceiling_batch_size": best_size,
        "ceiling_by_batch_size": {str(size): rate for size, rate in ceiling.items()},
        "ratios": {
            "ours_over_ceiling": ours_rate / ceiling[best_size],
            "ours_over_ceiling_at_our_batch_size": ours_rate / ceiling[batch_size],
            "ours_over_naive": ours_rate / naive_rate,
        },
    }


def format_report(report: dict[str, Any]) -> str:
    """The benchmark as readable text."""
    rates, ratios = report["sentences_per_second"], report["ratios"]
    by_size = ", ".join(f"{size}: {rate:,.1f}" for size, rate in report["ceiling_by_batch_size"].items())
    lines = [
        f"command: {report.get('command', '-')}",
        f"task {report['task']}: {report['sentences']} sentences from {report.get('sentences_source', '-')}",
        f"teacher: {report.get('teacher', '-')}",
        f"device: {report['device']}  threads: {report['threads']}  autocast: {report['autocast']}  "
        f"max_length: {report['max_length']}",
        f"ceiling (forward only, batch {report['ceiling_batch_size']}): {rates['ceiling']:,.1f} sentences/s  "
        f"[by batch size: {by_size}]",
        f"ours (score_table + Parquet, batch {report['batch_size']}): {rates['ours']:,.1f} sentences/s",
        f"naive (transformers pipeline, default batching, top_k=None): {rates['naive']:,.1f} sentences/s",
        f"ours/ceiling: {ratios['ours_over_ceiling']:.2f} (at batch {report['batch_size']}: "
        f"{ratios['ours_over_ceiling_at_our_batch_size']:.2f})  ours/naive: {ratios['ours_over_naive']:.2f}",
    ]
    return "\n".join(lines)

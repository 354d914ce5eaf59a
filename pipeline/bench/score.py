"""Score throughput benchmarks.

``bench score``: how close the score stage gets to the teacher's raw forward speed. Three measurements on the
same sentences, device, thread count and precision (``score.precision``):

* ceiling: the model forward alone, on pre-tokenized, pre-padded, length-sorted batches, at each requested batch
  size and at ours; the batch size with the best median is the ceiling;
* ours: ``pipeline.stages.score.score_table`` (tokenize, length-sort, batch, forward) plus writing the Parquet shard;
* naive: a ``transformers`` text-classification pipeline returning every class score (``top_k=None``), as a user
  would call it (the pipeline's default batching: one sentence at a time), under the same autocast.

``bench precision``: ``score_table`` at several precisions, timed the same way, and each one's logits against fp32.

Every measurement is warmed up once, then timed in ``repeats`` interleaved rounds (A B C, A B C, ...), so load
that changes during the run hits every measurement alike; each is reported as median and min-max over rounds.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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
from pipeline.data.batching import length_sorted_batches
from pipeline.data.glue import read_glue_tsv
from pipeline.data.io import write_parquet
from pipeline.data.schema import table_texts, transfer_schema
from pipeline.data.shards import logits_matrix, shard_name
from pipeline.data.tasks import Task
from pipeline.params import Params
from pipeline.serving.teacher import Encoded, batch_tensors, load_teacher, resolve_checkpoint, token_lengths, tokenize
from pipeline.stages.score import score_table
from pipeline.training.device import autocast, autocast_dtype, pick_device, seed_everything, torch_threads


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
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=task.num_outputs)
    model = model.to(pick_device())
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
        "is_unlabelled": pa.array([False] * table.num_rows),
        "text_a": table.column("text_a"),
        "text_b": table.column("text_b"),
        "label": table.column("label"),
        "ops": pa.array([[]] * table.num_rows, pa.list_(pa.string())),
    }
    return pa.table(columns, schema=transfer_schema(task))


@dataclass(frozen=True)
class Measurement:
    """One timed workload: ``warm_up`` once, then ``run`` (over all benchmark rows) once per round."""

    warm_up: Callable[[], object]
    run: Callable[[], object]


def interleaved_rates(
    measurements: dict[str, Measurement], rows: int, repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Rows per second of each measurement in each of ``repeats`` rounds; every round runs all of them in order.

    Each measurement's warm-up runs once before the first round; the GPU is waited for around every timing.
    """
    for measurement in measurements.values():
        measurement.warm_up()
    rates: dict[str, list[float]] = {name: [] for name in measurements}
    for _ in range(repeats):
        for name, measurement in measurements.items():
            _synchronize(device)
            start = time.perf_counter()
            measurement.run()
            _synchronize(device)
            rates[name].append(rows / (time.perf_counter() - start))
    return rates


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(rates: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and every value of one measurement's per-round rates."""
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "runs": list(rates)}


def ratio(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, float]:
    """A speed ratio as the ratio of medians, and as the median of the per-round ratios."""
    return {
        "of_medians": statistics.median(numerator) / statistics.median(denominator),
        "median_per_round": statistics.median(n / d for n, d in zip(numerator, denominator)),
    }


def forward_ceiling(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    encoded: Encoded,
    batch_size: int,
    dtype: torch.dtype | None,
) -> Measurement:
    """The model forward alone over pre-padded, length-sorted batches already on the device."""
    device = model.device
    batches = [
        batch_tensors(tokenizer, encoded, rows, device)
        for rows in length_sorted_batches(token_lengths(encoded), batch_size)
    ]

    @torch.inference_mode()
    def forward(batches: list[dict[str, torch.Tensor]]) -> None:
        with autocast(device, dtype):
            for batch in batches:
                model(**batch)

    return Measurement(lambda: forward(batches[:1]), lambda: forward(batches))  # warm-up: the longest batch


def with_precision(params: Params, precision: str) -> Params:
    """``params`` with ``score.precision`` replaced."""
    return params.model_copy(update={"score": params.score.model_copy(update={"precision": precision})})


def _settings(
    task: Task, params: Params, device: torch.device, table: pa.Table, threads: int, repeats: int
) -> dict[str, Any]:
    return {
        "task": task.name,
        "sentences": table.num_rows,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": threads,
        "repeats": repeats,
        "batch_size": params.score.batch_size,
        "max_length": params.score.max_length,
    }


def _dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype).removeprefix("torch.") if dtype else "off (fp32)"


def run_bench(
    task: Task,
    params: Params,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    table: pa.Table,
    batch_sizes: Sequence[int],
    threads: int,
    repeats: int,
) -> dict[str, Any]:
    """Time ceiling, ours and naive on ``table`` (transfer-set rows), interleaved; rates, ratios and settings."""
    device = model.device
    dtype = autocast_dtype(device, params.score.precision)
    batch_size, max_length = params.score.batch_size, params.score.max_length
    text_a, text_b = table_texts(task, table)
    classifier = pipeline("text-classification", model=model, tokenizer=tokenizer, device=device)
    inputs = text_a if text_b is None else [{"text": a, "text_pair": b} for a, b in zip(text_a, text_b)]

    def naive(texts: list) -> None:
        with autocast(device, dtype):
            classifier(texts, top_k=None, truncation=True, max_length=max_length)  # the pipeline's default batching

    with torch_threads(threads), tempfile.TemporaryDirectory() as tmp:

        def ours(rows: pa.Table) -> None:
            write_parquet(score_table(task, rows, model, tokenizer, params), Path(tmp) / shard_name(0))

        encoded = tokenize(tokenizer, text_a, text_b, max_length)
        sizes = sorted({*batch_sizes, batch_size})  # our batch size too: separates batching overhead from batch size
        measurements = {f"ceiling_{size}": forward_ceiling(model, tokenizer, encoded, size, dtype) for size in sizes}
        measurements["ours"] = Measurement(lambda: ours(table.slice(0, batch_size)), lambda: ours(table))
        measurements["naive"] = Measurement(lambda: naive(inputs[:batch_size]), lambda: naive(inputs))
        rates = interleaved_rates(measurements, table.num_rows, repeats, device)

    ceiling = {size: rates[f"ceiling_{size}"] for size in sizes}
    best_size = max(ceiling, key=lambda size: statistics.median(ceiling[size]))
    return {
        **_settings(task, params, device, table, threads, repeats),
        "precision": params.score.precision,
        "autocast": _dtype_name(dtype),
        "sentences_per_second": {
            "ceiling": summarize(ceiling[best_size]),
            "ours": summarize(rates["ours"]),
            "naive": summarize(rates["naive"]),
        },
        "ceiling_batch_size": best_size,
        "ceiling_by_batch_size": {str(size): summarize(size_rates) for size, size_rates in ceiling.items()},
        "ratios": {
            "ours_over_ceiling": ratio(rates["ours"], ceiling[best_size]),
            "ours_over_ceiling_at_our_batch_size": ratio(rates["ours"], ceiling[batch_size]),
            "ours_over_naive": ratio(rates["ours"], rates["naive"]),
        },
    }


def logit_deviation(logits: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """How far ``logits`` are from ``reference``: max and mean absolute difference (and, for scale, the mean
    absolute reference logit), and argmax agreement."""
    difference = np.abs(logits.astype(np.float64) - reference.astype(np.float64))
    deviation = {
        "max_abs_diff": float(difference.max()),
        "mean_abs_diff": float(difference.mean()),
        "mean_abs_reference": float(np.abs(reference).mean()),
    }
    if logits.shape[1] > 1:  # classification; a regression score has no argmax
        deviation["argmax_agreement"] = float((logits.argmax(axis=1) == reference.argmax(axis=1)).mean())
    return deviation


def run_precision_bench(
    task: Task,
    params: Params,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    table: pa.Table,
    precisions: Sequence[str],
    threads: int,
    repeats: int,
) -> dict[str, Any]:
    """Time ``score_table`` at each precision (interleaved) and compare each one's logits with fp32's."""
    device = model.device
    batch_size = params.score.batch_size
    logits: dict[str, np.ndarray] = {}

    def scorer(precision: str, rows: pa.Table) -> Callable[[], None]:
        def run() -> None:
            scored = score_table(task, rows, model, tokenizer, with_precision(params, precision))
            logits[precision] = logits_matrix(scored)

        return run

    reference = "fp32"
    order = [reference, *(precision for precision in precisions if precision != reference)]
    measurements = {
        precision: Measurement(scorer(precision, table.slice(0, batch_size)), scorer(precision, table))
        for precision in order
    }
    with torch_threads(threads):
        rates = interleaved_rates(measurements, table.num_rows, repeats, device)
    return {
        **_settings(task, params, device, table, threads, repeats),
        "precisions": {
            precision: {
                "autocast": _dtype_name(autocast_dtype(device, precision)),
                "sentences_per_second": summarize(rates[precision]),
                "speed_over_fp32": ratio(rates[precision], rates[reference]),
                "logits_vs_fp32": logit_deviation(logits[precision], logits[reference]),
            }
            for precision in order
        },
    }


def _rate_text(summary: dict[str, Any]) -> str:
    return f"{summary['median']:,.1f} sentences/s (min-max {summary['min']:,.1f}-{summary['max']:,.1f})"


def _ratio_text(value: dict[str, float]) -> str:
    return f"{value['of_medians']:.2f} (per round: {value['median_per_round']:.2f})"


def format_report(report: dict[str, Any]) -> str:
    """``bench score`` as readable text."""
    rates, ratios = report["sentences_per_second"], report["ratios"]
    by_size = ", ".join(f"{size}: {rate['median']:,.1f}" for size, rate in report["ceiling_by_batch_size"].items())
    lines = [
        *_header_lines(report),
        f"precision: {report['precision']}  autocast: {report['autocast']}",
        (
            f"ceiling (forward only, batch {report['ceiling_batch_size']}): {_rate_text(rates['ceiling'])}  "
            f"[medians by batch size: {by_size}]"
        ),
        f"ours (score_table + Parquet, batch {report['batch_size']}): {_rate_text(rates['ours'])}",
        f"naive (transformers pipeline, default batching, top_k=None): {_rate_text(rates['naive'])}",
        (
            f"ours/ceiling: {_ratio_text(ratios['ours_over_ceiling'])}  at batch {report['batch_size']}: "
            f"{_ratio_text(ratios['ours_over_ceiling_at_our_batch_size'])}"
        ),
        f"ours/naive: {_ratio_text(ratios['ours_over_naive'])}",
        "ratios: of the medians (per round: median of the per-round ratios)",
    ]
    return "\n".join(lines)


def format_precision_report(report: dict[str, Any]) -> str:
    """``bench precision`` as readable text."""
    lines = [*_header_lines(report), f"score_table, batch {report['batch_size']}:"]
    for precision, result in report["precisions"].items():
        deviation = result["logits_vs_fp32"]
        agreement = deviation.get("argmax_agreement")
        lines.append(
            f"  {precision} (autocast {result['autocast']}): {_rate_text(result['sentences_per_second'])}  "
            f"speed/fp32: {_ratio_text(result['speed_over_fp32'])}  "
            f"logits vs fp32: max |diff| {deviation['max_abs_diff']:.3g}, mean |diff| {deviation['mean_abs_diff']:.3g} "
            f"(mean |fp32 logit| {deviation['mean_abs_reference']:.3g})"
            + ("" if agreement is None else f", argmax agreement {100 * agreement:.2f}%")
        )
    return "\n".join(lines)


def _header_lines(report: dict[str, Any]) -> list[str]:
    return [
        f"command: {report.get('command', '-')}",
        f"task {report['task']}: {report['sentences']} sentences from {report.get('sentences_source', '-')}",
        f"teacher: {report.get('teacher', '-')}",
        (
            f"device: {report['device']}  threads: {report['threads']}  max_length: {report['max_length']}  "
            f"rounds: {report['repeats']} (interleaved; rates are medians, min-max over rounds)"
        ),
    ]

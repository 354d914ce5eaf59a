"""Teacher logit shards on disk: naming, manifest, loading with verification, and inspection."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.io import sha256_file
from pipeline.data.tasks import Task
from pipeline.errors import ShardError

MANIFEST_NAME = "_manifest.json"  # leading "_": pyarrow/pandas skip it when reading the folder
SHARD_GLOB = "part-*.parquet"


def shard_name(index: int) -> str:
    """File name of shard ``index``: part-00000.parquet, part-00001.parquet, ..."""
    return f"part-{index:05d}.parquet"


def read_manifest(shard_dir: Path) -> dict[str, Any]:
    """The manifest written by the score stage."""
    path = shard_dir / MANIFEST_NAME
    if not path.is_file():
        raise ShardError(f"{path}: manifest not found; run the score stage first")
    return json.loads(path.read_text(encoding="utf-8"))


def task_manifest(task: Task, shard_dir: Path) -> dict[str, Any]:
    """The manifest of ``shard_dir``, checked to belong to ``task``."""
    manifest = read_manifest(shard_dir)
    if manifest["task"] != task.name:
        raise ShardError(f"{shard_dir / MANIFEST_NAME}: shards of task {manifest['task']!r}, not {task.name!r}")
    return manifest


def verify_shards(shard_dir: Path, files: Sequence[str] | None = None) -> list[str]:
    """Problems found comparing shard files (all, or the named ``files``) with the manifest (empty list = all good)."""
    manifest = read_manifest(shard_dir)
    problems = []
    listed = {entry["file"] for entry in manifest["shards"]}
    for path in sorted(shard_dir.glob(SHARD_GLOB)):
        if path.name not in listed:
            problems.append(f"{path}: not listed in the manifest")
    for entry in manifest["shards"]:
        if files is not None and entry["file"] not in files:
            continue
        path = shard_dir / entry["file"]
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{path}: checksum mismatch (corrupted or modified since scoring)")
    return problems


def load_shards(
    shard_dir: Path, columns: list[str] | None = None, verify: bool = True, files: Sequence[str] | None = None
) -> pa.Table:
    """All shards of a task (or only the named ``files``) as one table, in row order; by default checked against
    the manifest first."""
    if verify:
        problems = verify_shards(shard_dir, files)
        if problems:
            raise ShardError("; ".join(problems))
    manifest = read_manifest(shard_dir)
    tables = []
    for entry in manifest["shards"]:
        if files is not None and entry["file"] not in files:
            continue
        path = shard_dir / entry["file"]
        try:
            tables.append(pq.read_table(path, columns=columns))
        except (pa.ArrowInvalid, OSError) as exc:
            raise ShardError(f"{path}: unreadable shard: {exc}") from None
    return pa.concat_tables(tables)


def logits_matrix(table: pa.Table) -> np.ndarray:
    """The ``logits`` column as a float32 array of shape [rows, num_outputs]."""
    column = table.column("logits").combine_chunks()
    width = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width).astype(np.float32, copy=False)


# ---- inspection: ``python -m pipeline shards show|stats`` ----------------------------------------------------------


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities of a [rows, classes] logit matrix (numerically stable)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def head_rows(task: Task, shard_dir: Path, rows: int) -> list[dict[str, Any]]:
    """The first ``rows`` shard rows, decoded: label names, teacher probabilities (or score) and prediction."""
    manifest = task_manifest(task, shard_dir)
    tables: list[pa.Table] = []
    for entry in manifest["shards"]:
        remaining = rows - sum(table.num_rows for table in tables)
        if remaining <= 0:
            break
        tables.append(pq.read_table(shard_dir / entry["file"]).slice(0, remaining))
    table = pa.concat_tables(tables)
    logits = logits_matrix(table)
    decoded = []
    for row, row_logits in zip(table.drop(["logits"]).to_pylist(), logits):
        if task.is_regression:
            row["teacher_score"] = float(row_logits[0])
        else:
            if row["label"] is not None:
                row["label"] = task.labels[row["label"]]
            probs = np.exp(log_softmax(row_logits[None, :]))[0]
            row["teacher_probs"] = dict(zip(task.labels, probs.tolist()))
            row["teacher_label"] = task.labels[int(row_logits.argmax())]
        decoded.append(row)
    return decoded


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Decoded shard rows as readable text blocks, one per row."""
    blocks = []
    for row in rows:
        kind = "original" if row["is_original"] else f"synthetic ({', '.join(row['ops']) or 'no ops'})"
        lines = [f"id {row['id']}  source_id {row['source_id']}  {kind}", f"  text_a: {row['text_a']}"]
        if row["text_b"] is not None:
            lines.append(f"  text_b: {row['text_b']}")
        gold = "-" if row["label"] is None else row["label"]
        if "teacher_score" in row:
            lines.append(f"  label: {gold}  teacher score: {row['teacher_score']:.4f}")
        else:
            probs = "  ".join(f"{name}={p:.4f}" for name, p in row["teacher_probs"].items())
            lines.append(f"  label: {gold}  teacher: {row['teacher_label']}  probs: {probs}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _summary(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _counts(task: Task, classes: np.ndarray) -> dict[str, int]:
    return {name: int(count) for name, count in zip(task.labels, np.bincount(classes, minlength=task.num_outputs))}


def shard_stats(task: Task, shard_dir: Path) -> dict[str, Any]:
    """Summary of a verified shard folder: sizes, teacher identity, gold vs teacher label statistics.

    Classification: class counts (gold on originals, teacher argmax on all rows), mean entropy of the teacher's
    probabilities (nats) and argmax/gold agreement on originals. Regression: score summaries and the Pearson
    correlation of teacher score and gold score on originals.
    """
    manifest = task_manifest(task, shard_dir)
    table = load_shards(shard_dir, columns=["is_original", "label", "logits"])
    originals = table.column("is_original").to_numpy(zero_copy_only=False)
    gold = table.column("label").filter(table.column("is_original")).to_numpy()
    logits = logits_matrix(table)
    stats: dict[str, Any] = {
        "task": task.name,
        "shards": len(manifest["shards"]),
        "rows": table.num_rows,
        "originals": int(originals.sum()),
        "synthetic": int((~originals).sum()),
        "teacher_checkpoint": manifest["teacher_checkpoint"],
        "teacher_fingerprint": manifest["teacher_fingerprint"],
    }
    if task.is_regression:
        scores = logits[:, 0]
        stats["gold_scores"] = _summary(gold)
        stats["teacher_scores"] = _summary(scores)
        stats["teacher_gold_pearson"] = float(np.corrcoef(scores[originals], gold)[0, 1])
    else:
        log_probs = log_softmax(logits)
        predicted = logits.argmax(axis=1)
        stats["gold_labels"] = _counts(task, gold)
        stats["teacher_predictions"] = _counts(task, predicted)
        stats["mean_teacher_entropy"] = float(-(np.exp(log_probs) * log_probs).sum(axis=1).mean())
        stats["teacher_gold_agreement"] = float((predicted[originals] == gold).mean())
    return stats


def format_stats(stats: dict[str, Any]) -> str:
    """``shard_stats`` as aligned readable text."""

    def counts(values: dict[str, int]) -> str:
        total = sum(values.values())
        return "  ".join(f"{name}: {count:,} ({100 * count / total:.1f}%)" for name, count in values.items())

    def summary(values: dict[str, float]) -> str:
        return "  ".join(f"{name} {value:.4f}" for name, value in values.items())

    lines = [
        ("task", stats["task"]),
        ("shards", f"{stats['shards']:,}"),
        ("rows", f"{stats['rows']:,} ({stats['originals']:,} originals, {stats['synthetic']:,} synthetic)"),
        ("teacher checkpoint", stats["teacher_checkpoint"]),
        ("teacher fingerprint", stats["teacher_fingerprint"]),
    ]
    if "teacher_gold_pearson" in stats:
        lines += [
            ("gold scores (originals)", summary(stats["gold_scores"])),
            ("teacher scores (all rows)", summary(stats["teacher_scores"])),
            ("teacher/gold Pearson (originals)", f"{stats['teacher_gold_pearson']:.4f}"),
        ]
    else:
        lines += [
            ("gold labels (originals)", counts(stats["gold_labels"])),
            ("teacher argmax (all rows)", counts(stats["teacher_predictions"])),
            ("mean teacher entropy", f"{stats['mean_teacher_entropy']:.4f} nats"),
            ("teacher/gold agreement (originals)", f"{100 * stats['teacher_gold_agreement']:.2f}%"),
        ]
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in lines)

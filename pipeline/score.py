"""Score stage: batch-score the transfer set with the fine-tuned teacher into Parquet logit shards.

Shards are written one at a time, each atomically, in transfer-set order. A rerun with the same inputs
keeps the complete shards already on disk and scores only the rest, so an interrupted run resumes;
each shard is scored on its own (length-sorted inside the shard) so resumed output is identical.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipeline.io import sha256_file, write_json, write_parquet
from pipeline.params import Params
from pipeline.schema import shard_schema
from pipeline.shards import MANIFEST_NAME, SHARD_GLOB, shard_name
from pipeline.tasks import Task
from pipeline.teacher import load_teacher, predict_logits, table_texts, teacher_fingerprint

log = logging.getLogger(__name__)

RUN_STATE_NAME = "_score_inputs.json"  # fingerprint of what the shards on disk were scored from


def _run_inputs(transfer_path: Path, teacher_dir: Path, params: Params) -> dict[str, Any]:
    return {
        "transfer_set_sha256": sha256_file(transfer_path),
        "teacher_fingerprint": teacher_fingerprint(teacher_dir),
        "shard_rows": params.score.shard_rows,
        "max_length": params.score.max_length,
        "mixed_precision": params.teacher.mixed_precision,
    }


def _prepare_out_dir(out_dir: Path, inputs: dict[str, Any]) -> None:
    """Keep shards from an interrupted run of the same inputs; otherwise start from an empty folder."""
    state = out_dir / RUN_STATE_NAME
    if state.is_file() and json.loads(state.read_text(encoding="utf-8")) == inputs:
        return
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    write_json(inputs, state)


def _shard_is_complete(path: Path, expected_rows: int) -> bool:
    try:
        return pq.read_metadata(path).num_rows == expected_rows
    except (OSError, pa.ArrowInvalid):
        return False


def score_table(task: Task, table: pa.Table, model, tokenizer, params: Params) -> pa.Table:
    """One shard: the transfer-set rows of ``table`` with the teacher's ``logits`` appended."""
    text_a, text_b = table_texts(task, table)
    logits = predict_logits(
        model, tokenizer, text_a, text_b, params.score.batch_size, params.score.max_length, params.teacher.mixed_precision
    )
    logits_column = pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1), pa.float32()), task.num_outputs)
    return table.append_column(shard_schema(task).field("logits"), logits_column).cast(shard_schema(task))


def run_score(task: Task, params: Params, transfer_path: Path, teacher_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Score every transfer-set row into ``out_dir/part-NNNNN.parquet`` plus ``manifest.json``."""
    inputs = _run_inputs(transfer_path, teacher_dir, params)
    _prepare_out_dir(out_dir, inputs)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    transfer = pq.read_table(transfer_path)
    rows = params.score.shard_rows
    starts = range(0, transfer.num_rows, rows)
    pending = [
        (index, start) for index, start in enumerate(starts)
        if not _shard_is_complete(out_dir / shard_name(index), min(rows, transfer.num_rows - start))
    ]
    if len(pending) < len(starts):
        log.info("resuming: %d of %d shards already complete", len(starts) - len(pending), len(starts))
    if pending:
        model, tokenizer = load_teacher(teacher_dir)
        for index, start in tqdm(pending, desc=f"score {task.name} shards"):
            write_parquet(score_table(task, transfer.slice(start, rows), model, tokenizer, params), out_dir / shard_name(index))
    return write_manifest(task, out_dir, inputs, params)


def write_manifest(task: Task, out_dir: Path, inputs: dict[str, Any], params: Params) -> dict[str, Any]:
    """Record teacher fingerprint, row counts and checksums of every shard."""
    shards = [
        {"file": path.name, "rows": pq.read_metadata(path).num_rows, "sha256": sha256_file(path)}
        for path in sorted(out_dir.glob(SHARD_GLOB))
    ]
    manifest = {
        "task": task.name,
        "num_outputs": task.num_outputs,
        "teacher_checkpoint": params.teacher.checkpoint,
        "num_rows": sum(shard["rows"] for shard in shards),
        "shards": shards,
        **inputs,
    }
    write_json(manifest, out_dir / MANIFEST_NAME)
    return manifest

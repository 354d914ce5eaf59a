"""Score stage: batch-score the transfer set with the fine-tuned teacher into Parquet logit shards.

Shards are written one at a time, each atomically, in transfer-set order. A rerun with the same inputs
keeps the complete shards already on disk and scores only the rest, so an interrupted run resumes;
each shard is scored on its own (length-sorted inside the shard) so resumed output is identical.

Two engines score the pending shards: ``local`` (this process, GPU if present) and ``ray`` (a Ray Data
pool of teacher actors, one per GPU or else one per CPU slot). Both score a shard with the same
``score_table`` call, so they write the same files and share the resume logic.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipeline.data.io import sha256_file, write_json, write_parquet
from pipeline.data.schema import shard_schema, table_texts
from pipeline.data.shards import MANIFEST_NAME, SHARD_GLOB, shard_name
from pipeline.data.subsets import subset_originals
from pipeline.data.tasks import Task
from pipeline.params import Params
from pipeline.serving.teacher import load_teacher, predict_logits, teacher_fingerprint

log = logging.getLogger(__name__)

RUN_STATE_NAME = "_score_inputs.json"  # fingerprint of what the shards on disk were scored from
STALE_TMP_GLOB = ".*.tmp"  # temporaries of atomic writes (pipeline.data.io.atomic_path) cut short by a kill
RAY_ADDRESS_ENV = "RAY_ADDRESS"  # set: connect to that Ray cluster; unset: start a local instance for the run

ShardJob = tuple[int, pa.Table]  # (shard index, its transfer-set rows)


def _run_inputs(transfer_path: Path, teacher_dir: Path, params: Params, max_originals: int | None) -> dict[str, Any]:
    """What a shard's bytes depend on: shards on disk are kept only when all of this is unchanged.

    The batch size is part of it because a row's logits change in the last bits with the rows batched (and
    padded) with it; the thread count is not (bit-identical on CPU, see ``benchmarks/bit_identity.py``).
    """
    return {
        "max_originals": max_originals,
        "subset_seed": params.seed,
        "transfer_set_sha256": sha256_file(transfer_path),
        "teacher_fingerprint": teacher_fingerprint(teacher_dir),
        "shard_rows": params.score.shard_rows,
        "batch_size": params.score.batch_size,
        "max_length": params.score.max_length,
        "precision": params.score.precision,
    }


def _prepare_out_dir(out_dir: Path, inputs: dict[str, Any]) -> None:
    """Keep shards from an interrupted run of the same inputs; otherwise start from an empty folder."""
    state = out_dir / RUN_STATE_NAME
    if state.is_file() and json.loads(state.read_text(encoding="utf-8")) == inputs:
        for stale in out_dir.glob(STALE_TMP_GLOB):
            stale.unlink()
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


def score_table(task: Task, table: pa.Table, model, tokenizer, params: Params, progress: bool = False) -> pa.Table:
    """One shard: the transfer-set rows of ``table`` with the teacher's ``logits`` appended."""
    text_a, text_b = table_texts(task, table)
    logits = predict_logits(
        model, tokenizer, text_a, text_b, params.score.batch_size, params.score.max_length,
        params.score.precision, progress=progress,
    )  # fmt: skip
    logits_column = pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1), pa.float32()), task.num_outputs)
    return table.append_column(shard_schema(task).field("logits"), logits_column).cast(shard_schema(task))


def run_score(
    task: Task, params: Params, transfer_path: Path, teacher_dir: Path, out_dir: Path, max_originals: int | None = None
) -> dict[str, Any]:
    """Score every transfer-set row (or, with ``max_originals``, the rows of a seeded subset of that many originals:
    ``pipeline.data.subsets.subset_originals``) into ``out_dir/part-NNNNN.parquet`` plus ``manifest.json``."""
    inputs = _run_inputs(transfer_path, teacher_dir, params, max_originals)
    _prepare_out_dir(out_dir, inputs)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    transfer = subset_originals(pq.read_table(transfer_path), max_originals, params.seed)
    rows = params.score.shard_rows
    starts = range(0, transfer.num_rows, rows)
    pending = [
        (index, transfer.slice(start, rows))
        for index, start in enumerate(starts)
        if not _shard_is_complete(out_dir / shard_name(index), min(rows, transfer.num_rows - start))
    ]
    if len(pending) < len(starts):
        log.info("resuming: %d of %d shards already complete", len(starts) - len(pending), len(starts))
    if pending:
        engine = _score_with_ray if params.score.engine == "ray" else _score_locally
        engine(task, params, pending, teacher_dir, out_dir)
    return write_manifest(task, out_dir, inputs, params)


def _score_locally(task: Task, params: Params, pending: list[ShardJob], teacher_dir: Path, out_dir: Path) -> None:
    """Score the pending shards one after the other in this process."""
    model, tokenizer = load_teacher(teacher_dir)
    for index, shard in tqdm(pending, desc=f"score {task.name} shards"):
        scored = score_table(task, shard, model, tokenizer, params, progress=True)
        write_parquet(scored, out_dir / shard_name(index))


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


# ---- ray engine ---------------------------------------------------------------------------------------------------


class TeacherActor:
    """Ray Data UDF: loads the teacher once per actor, then scores whole shards (one pyarrow block per call)."""

    def __init__(self, task: Task, params: Params, teacher_dir: str) -> None:
        self.task, self.params = task, params
        self.model, self.tokenizer = load_teacher(teacher_dir)

    def __call__(self, shard: pa.Table) -> pa.Table:
        return score_table(self.task, shard, self.model, self.tokenizer, self.params)


@contextlib.contextmanager
def _ray_session() -> Iterator[ModuleType]:
    """Ray, connected to ``$RAY_ADDRESS`` or to a local instance started (and shut down) here; reuse a live one."""
    import ray

    started = not ray.is_initialized()
    if started:
        address = os.environ.get(RAY_ADDRESS_ENV)
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _score_with_ray(task: Task, params: Params, pending: list[ShardJob], teacher_dir: Path, out_dir: Path) -> None:
    """Score the pending shards on a pool of teacher actors; write each shard as soon as all its rows are back."""
    with _ray_session() as ray:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        slots, per_actor = (gpus, {"num_gpus": 1}) if gpus else (int(resources["CPU"]), {"num_cpus": 1})
        actors = min(slots, len(pending))
        log.info("ray: %d teacher actors, each with %s", actors, per_actor)
        ray.data.DataContext.get_current().enable_progress_bars = False  # the per-shard bar below says it all
        scored = ray.data.from_arrow([shard for _, shard in pending]).map_batches(
            TeacherActor,
            fn_constructor_args=(task, params, str(Path(teacher_dir).resolve())),
            batch_size=None,  # a whole block, i.e. one shard, per call: batched exactly as the local engine
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            **per_actor,
        )
        # Ray may return a shard's rows in several blocks, out of shard order: collect them per shard.
        first_ids = [shard.column("id")[0].as_py() for _, shard in pending]
        received: defaultdict[int, list[pa.Table]] = defaultdict(list)
        with tqdm(total=len(pending), desc=f"score {task.name} shards (ray)") as progress:
            for block in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
                if block.num_rows == 0:
                    continue
                slot = bisect.bisect_right(first_ids, block.column("id")[0].as_py()) - 1
                received[slot].append(block)
                index, shard = pending[slot]
                if sum(part.num_rows for part in received[slot]) == shard.num_rows:
                    rows = pa.concat_tables(received.pop(slot)).sort_by("id").cast(shard_schema(task))
                    write_parquet(rows, out_dir / shard_name(index))
                    progress.update()

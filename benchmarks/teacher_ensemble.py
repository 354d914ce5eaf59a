"""Distil from an ensemble of teachers: their dev scores alone and averaged, and their shards averaged row by row.

Run in a workspace after training and scoring one teacher per seed (docs/results.md, *MRPC*), e.g.:

    python benchmarks/teacher_ensemble.py dev --task mrpc --out dev_s42.npy        # the workspace teacher's dev logits
    python benchmarks/teacher_ensemble.py ensemble-dev --task mrpc dev_s42.npy dev_s43.npy dev_s44.npy
    python benchmarks/teacher_ensemble.py average-shards --out data/logits/single/mrpc s42/shards s43/shards s44/shards

``average-shards`` writes the mean of the shard folders' logits (same transfer set, same row ids: checked) with the
first folder's rows and a manifest whose checksums match the new files; the student stage then reads it as usual.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.io import atomic_dir, sha256_file, write_json
from pipeline.data.metrics import compute_metrics
from pipeline.data.prepared import dev_splits
from pipeline.data.shards import MANIFEST_NAME, logits_matrix, read_manifest
from pipeline.data.tasks import resolve_task
from pipeline.params import load_params

PARAMS = Path("params.yaml")


def dev_split(task_name: str):
    """The task and its (first) prepared dev split, as evaluate reads it."""
    task = resolve_task(task_name, load_params(PARAMS))
    return task, next(iter(dev_splits(task).values()))


def teacher_dev(task_name: str, out: Path) -> None:
    from pipeline.data.schema import table_texts
    from pipeline.serving.catalogue import load_model

    task, dev = dev_split(task_name)
    text_a, text_b = table_texts(task, dev)
    batch_size = load_params(PARAMS).teacher.eval_batch_size
    logits = load_model("teacher", task, PARAMS).logits(text_a, text_b, batch_size)
    np.save(out, logits)
    print(out, json.dumps(compute_metrics(task, logits, dev.column("label").to_numpy())))


def ensemble_dev(task_name: str, files: list[Path]) -> None:
    task, dev = dev_split(task_name)
    logits = np.mean([np.load(file) for file in files], axis=0)
    metrics = compute_metrics(task, logits, dev.column("label").to_numpy())
    print(f"ensemble of {len(files)}", json.dumps(metrics), f"mean|logit| {np.abs(logits).mean():.3f}")


def average_shards(out: Path, folders: list[Path]) -> None:
    manifest = read_manifest(folders[0])
    with atomic_dir(out) as scratch:
        for entry in manifest["shards"]:
            tables = [pq.read_table(folder / entry["file"]) for folder in folders]
            for folder, table in zip(folders[1:], tables[1:]):
                if not table.column("id").equals(tables[0].column("id")):
                    raise SystemExit(f"{folder / entry['file']}: other rows than {folders[0] / entry['file']}")
            logits = np.mean([logits_matrix(table) for table in tables], axis=0).astype(np.float32)
            field = tables[0].schema.field("logits")
            column = pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), logits.shape[1])
            averaged = tables[0].set_column(tables[0].schema.get_field_index("logits"), field, column)
            pq.write_table(averaged, scratch / entry["file"])
            entry["sha256"] = sha256_file(scratch / entry["file"])
            print(entry["file"], len(logits), f"mean|logit| {np.abs(logits).mean():.3f}")
        for extra in folders[0].glob("_*.json"):
            if extra.name != MANIFEST_NAME:
                shutil.copy2(extra, scratch / extra.name)
        write_json(manifest, scratch / MANIFEST_NAME)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    dev = commands.add_parser("dev", help="the workspace teacher's dev logits (.npy) and metrics")
    dev.add_argument("--task", required=True)
    dev.add_argument("--out", type=Path, required=True)
    ensemble = commands.add_parser("ensemble-dev", help="dev metrics of the mean of saved dev logits")
    ensemble.add_argument("--task", required=True)
    ensemble.add_argument("files", type=Path, nargs="+")
    average = commands.add_parser("average-shards", help="a shard folder with the mean logits of several")
    average.add_argument("--out", type=Path, required=True)
    average.add_argument("folders", type=Path, nargs="+")
    args = parser.parse_args()
    if args.command == "dev":
        teacher_dev(args.task, args.out)
    elif args.command == "ensemble-dev":
        ensemble_dev(args.task, args.files)
    else:
        average_shards(args.out, args.folders)


if __name__ == "__main__":
    main()

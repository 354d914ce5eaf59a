"""Check a regression task's students against their teacher: scale and agreement of each model's dev predictions
with the teacher's and the gold scores, and the teacher's scores on the transfer set (originals vs synthetic rows).

Run in a workspace with the task's models and shards (printed numbers; docs/results.md, *Sentence pairs*):

    python benchmarks/regression_check.py --task stsb --models student baseline
"""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow.parquet as pq
from scipy.stats import pearsonr

from pipeline import paths
from pipeline.data.shards import load_shards, logits_matrix
from pipeline.data.tasks import get_task
from pipeline.serving.catalogue import load_model


def describe(values: np.ndarray) -> str:
    return f"mean {values.mean():.3f} std {values.std():.3f} min {values.min():.2f} max {values.max():.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="stsb")
    parser.add_argument("--models", nargs="+", default=["student", "baseline"])
    args = parser.parse_args()
    task = get_task(args.task)
    if not task.is_regression:
        parser.error(f"{task.name} is not a regression task")
    dev = pq.read_table(paths.prepared_split(task.name, task.dev_splits[0], paths.PREPARED_DIR))
    text_a = dev.column("text_a").to_pylist()
    text_b = dev.column("text_b").to_pylist() if task.is_pair else None
    gold = dev.column("label").to_numpy()
    teacher = load_model("teacher", task).logits(text_a, text_b, 256)[:, 0]
    print(f"{'gold':10s} {describe(gold)}")
    for name in ["teacher", *args.models]:
        scores = teacher if name == "teacher" else load_model(name, task).logits(text_a, text_b, 256)[:, 0]
        print(
            f"{name:10s} {describe(scores)} | r(gold) {pearsonr(scores, gold)[0]:.4f} "
            f"r(teacher) {pearsonr(scores, teacher)[0]:.4f} | squared distance to teacher "
            f"{np.mean((scores - teacher) ** 2):.4f}, to gold {np.mean((scores - gold) ** 2):.4f}"
        )
    shards = load_shards(paths.shard_dir(task.name), columns=["is_original", "logits"])
    transfer = logits_matrix(shards)[:, 0]
    original = shards.column("is_original").to_numpy(zero_copy_only=False)
    print(f"teacher on the transfer set: originals {describe(transfer[original])} | "
          f"synthetic {describe(transfer[~original])} | {len(transfer):,} rows")  # fmt: skip


if __name__ == "__main__":
    main()

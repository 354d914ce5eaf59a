"""CPU training speed of the bi-attentive student: forward + backward rows/s on real GLUE sentences.

Builds the student from params.yaml (``biattentive`` section) for the default five tasks with the packaged teacher's
WordPiece tokenizer and embeddings, buckets a seeded random sample of a task's training sentences into batches of
similar length (as training does), and times forward + backward of full batches after one warm-up batch. Pair
tasks are timed on the task's own sentence pairs. Rows per CPU second (process time) are printed too: on a
machine shared with other jobs they are steadier than wall-clock rows/s.

    python benchmarks/biattentive_speed.py --task sst2 --rows 2048 --batch-size 64 --threads 2
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.data.batching import bucket_batches
from pipeline.data.glue import read_glue_tsv
from pipeline.data.tasks import get_task
from pipeline.params import load_params
from pipeline.serving.teacher import resolve_checkpoint
from pipeline.students.base import count_parameters
from pipeline.students.biattentive import BiattentiveStudent

MKD_TASKS = ("sst2", "cola", "mrpc", "rte", "stsb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    params = load_params(args.params)
    task = get_task(args.task)
    tasks = [get_task(name) for name in dict.fromkeys((*MKD_TASKS, task.name))]
    path = params.data.resolved_glue_dir() / task.glue_dir_name / "train.tsv"
    table = read_glue_tsv(task, path, params.data.skip_bad_rows)
    sampled = np.random.default_rng(params.seed).permutation(table.num_rows)[: args.rows]
    texts = [table.column(name).to_pylist() for name in ("text_a", "text_b")[: 1 + task.is_pair]]
    sample = [[column[i] for i in sampled] for column in texts]

    model, encoder = BiattentiveStudent.build(
        params, tasks, Path(resolve_checkpoint(params.teacher.checkpoint)), itertools.chain(*sample), params.seed
    )
    inputs = encoder.encode_inputs(sample[0], sample[1] if task.is_pair else None)
    batches = [
        inputs.batch(batch)
        for batch in bucket_batches(inputs.lengths, args.batch_size, np.random.default_rng(params.seed))
        if len(batch) == args.batch_size
    ]

    def step(batch: dict[str, torch.Tensor]) -> None:
        model.zero_grad()
        model(task.name, batch).sum().backward()

    step(batches[0])
    start, start_cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        step(batch)
    rows = len(batches) * args.batch_size
    rate, cpu_rate = rows / (time.perf_counter() - start), rows / (time.process_time() - start_cpu)
    mean_tokens = float(np.mean([inputs.arrays[name].lengths.mean() for name in inputs.arrays]))
    print(
        f"{task.name}: {rate:.0f} rows/s forward+backward ({cpu_rate:.0f} per CPU second), "
        f"batch {args.batch_size}, {args.threads} threads, "
        f"{len(batches)} batches, {mean_tokens:.1f} tokens per sentence; "
        f"{count_parameters(model, include_embeddings=False) / 1e6:.2f}M parameters without embeddings "
        f"({len(tasks)} task heads)"
    )


if __name__ == "__main__":
    main()

"""``reference`` stage: a task's model2vec reference model (``pipeline.serving.model2vec_classifier``), built once
here and loaded by evaluate, compare and predict (distilling the checkpoint's ~30k vocabulary tokens and fitting
take about 30 s on 2 cores, too long to repeat in every stage that reports it).

The static embeddings come from ``teacher.checkpoint``, the base model the teacher is fine-tuned from (the
fine-tuned teacher is not a dependency: the reference model is what a user builds without this pipeline)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline import paths
from pipeline.data.io import atomic_dir, write_json
from pipeline.data.tasks import Task
from pipeline.params import Params
from pipeline.serving.model2vec_classifier import fit_model2vec
from pipeline.serving.teacher import resolve_checkpoint
from pipeline.training.device import pick_device, use_threads

SUMMARY = "reference.json"  # what was fitted, on which rows, and how long it took (beside the library's files)


def build_reference(task: Task, params: Params, prepared_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Distil ``teacher.checkpoint`` into static embeddings (``model2vec.pca_dims``), fit the classifier on the
    prepared train split with the first dev split for early stopping, and write both to ``out_dir`` atomically."""
    from model2vec.distill import distill

    use_threads(params.threads)
    device = str(pick_device())
    train = pq.read_table(paths.prepared_split(task.name, "train", prepared_dir))
    dev_split = task.dev_splits[0]
    dev = pq.read_table(paths.prepared_split(task.name, dev_split, prepared_dir))
    start = time.perf_counter()
    static = distill(resolve_checkpoint(params.teacher.checkpoint), pca_dims=params.model2vec.pca_dims, device=device)
    distilled = time.perf_counter()
    model = fit_model2vec(task, static, train, dev, params.model2vec, params.seed, device)
    summary = {
        "task": task.name,
        "checkpoint": params.teacher.checkpoint,
        "embedding_shape": list(static.embedding.shape),
        "train_rows": train.num_rows,
        "early_stopping_split": dev_split,
        "distill_seconds": round(distilled - start, 2),
        "fit_seconds": round(time.perf_counter() - distilled, 2),
        "parameters": model.parameters,
    }
    with atomic_dir(out_dir) as tmp:
        model.save(tmp)
        write_json(summary, tmp / SUMMARY)
    return summary

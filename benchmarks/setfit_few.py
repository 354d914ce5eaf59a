"""SetFit, the reference model of the few-label setting: the teacher's base checkpoint (``teacher.checkpoint``)
fine-tuned contrastively on pairs of a task's labelled train texts, then a logistic-regression head (the ``setfit``
library, its defaults but the pair count); prints dev metrics and wall times. CPU-heavy, so not a stage of the default
run. Needs the ``bench`` extra and the task's prepared splits, e.g.:

    pip install -e '.[bench]'
    python -m pipeline prepare --task banking77_few
    python benchmarks/setfit_few.py --task banking77_few

Single-text classification tasks only (SetFit's pairs are drawn from single texts with labels).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline import paths
from pipeline.data.metrics import compute_metrics
from pipeline.data.prepared import dev_splits
from pipeline.data.schema import table_texts
from pipeline.data.tasks import resolve_task
from pipeline.params import load_params
from pipeline.serving.model2vec_classifier import ABSENT_CLASS_LOGIT, MIN_PROBABILITY
from pipeline.serving.teacher import resolve_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, help="a single-text classification task, e.g. banking77_few")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--num-iterations", type=int, default=20, help="pairs drawn per train text (SetFit paper: 20)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of contrastive fine-tuning")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    params = load_params(args.params)
    task = resolve_task(args.task, params)
    if task.is_pair or task.is_regression:
        raise SystemExit(f"{task.name}: SetFit here classifies single texts (not pairs, not scores)")
    train = pq.read_table(paths.prepared_split(task.name, "train"))
    texts, _ = table_texts(task, train)
    labels = train.column("label").to_pylist()
    model = SetFitModel.from_pretrained(resolve_checkpoint(params.teacher.checkpoint))
    with tempfile.TemporaryDirectory() as scratch:
        training = TrainingArguments(
            output_dir=scratch, batch_size=args.batch_size, num_epochs=args.epochs,
            num_iterations=args.num_iterations, seed=params.seed, report_to="none", save_strategy="no",
        )  # fmt: skip
        trainer = Trainer(model=model, args=training, train_dataset=Dataset.from_dict({"text": texts, "label": labels}))
        start = time.perf_counter()
        trainer.train()
        fit_seconds = time.perf_counter() - start

    results = {}
    for split, table in dev_splits(task).items():
        dev_texts, _ = table_texts(task, table)
        start = time.perf_counter()
        probabilities = model.predict_proba(dev_texts, batch_size=params.teacher.eval_batch_size, as_numpy=True)
        seconds = time.perf_counter() - start
        logits = np.full((len(dev_texts), task.num_outputs), ABSENT_CLASS_LOGIT, dtype=np.float32)
        classes = np.asarray(model.model_head.classes_, dtype=np.int64)  # the head's classes: the labels train has
        logits[:, classes] = np.log(np.maximum(probabilities, MIN_PROBABILITY))
        metrics = compute_metrics(task, logits, table.column("label").to_numpy())
        results[split] = {"metrics": metrics, "rows": len(dev_texts), "sentences_per_second": len(dev_texts) / seconds}
    print(json.dumps({
        "task": task.name, "checkpoint": params.teacher.checkpoint, "train_rows": train.num_rows,
        "num_iterations": args.num_iterations, "epochs": args.epochs, "fit_seconds": round(fit_seconds, 1),
        "dev": results,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()

"""Fine-tune a jointly distilled MKD student on one task with the Tang student's recipe (issue 18's ablation).

Starts from a saved MKD model (e.g. ``models/mkd/bilstm/multitask``), keeps the task's head, and trains it on all
of the task's single-teacher transfer rows with the ``student:`` params (steps budget, patience): does joint
distillation give a better start than the Tang student's? Prints the dev curve and the best dev score (GLUE
convention); ``--out`` also writes them as JSON, DVCLive its curves to ``dvclive/bench/mkd_finetune/<task>``. Run
from a workspace with the task's shards and prepared dev split.

    python benchmarks/mkd_finetune.py models/mkd/bilstm/multitask cola --out mkd_finetune_cola.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipeline import paths
from pipeline.data.metrics import task_score
from pipeline.data.tasks import resolve_task
from pipeline.params import DEFAULT_PARAMS_PATH, load_params
from pipeline.students.architectures import load_student
from pipeline.training.accelerator import accelerated
from pipeline.training.device import seed_everything, use_threads
from pipeline.training.fit import fit
from pipeline.training.losses import distillation_loss_fn
from pipeline.training.student_data import build_task_data, distillation_targets, read_shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="a saved MKD student with a head for the task")
    parser.add_argument("task")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_PATH)
    parser.add_argument("--out", type=Path, help="JSON of the curve and best dev metrics")
    args = parser.parse_args()

    params = load_params(args.params)
    task = resolve_task(args.task, params)
    start = time.perf_counter()
    with accelerated(params.student.mixed_precision, several_tasks=False) as accelerator:
        seed_everything(params.seed)
        use_threads(params.threads)
        model, encoder = load_student(args.model_dir, accelerator.device)
        model.train()
        model.keep_tasks([task.name])
        table = read_shards(task, paths.shard_dir(task.name, "single"))
        loss_fn = distillation_loss_fn(task, params.student.alpha)
        targets = distillation_targets(task, table, params.student.logit_temperature)
        data = {task.name: build_task_data(task, encoder, table, targets, loss_fn, paths.PREPARED_DIR)}
        log_dir = Path("dvclive/bench/mkd_finetune") / task.name
        result = fit(model, data, params.student, params.seed, accelerator, log_dir, desc=f"mkd fine-tune {task.name}")
    best = result.best_metrics[task.name]
    summary = {
        "task": task.name, "model_dir": str(args.model_dir), "transfer_rows": table.num_rows,
        "curve": result.curve, "best_epoch": result.best_epoch, "best": best, "score": task_score(task, best),
        "minutes": round((time.perf_counter() - start) / 60, 1),
    }  # fmt: skip
    for record in result.curve:
        print(json.dumps(record))
    print(json.dumps({k: summary[k] for k in ("task", "transfer_rows", "best_epoch", "best", "score", "minutes")}))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

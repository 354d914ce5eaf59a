"""Teacher fine-tuning on CPU: fp32 vs bf16 autocast training, same data, seed and code; time and dev accuracy.

Prepares a seeded subset of the task's training split, then fine-tunes the configured teacher once per precision
(alternating, ``--repeats`` rounds) with the stage code (``pipeline.stages.teacher.fine_tune``). The training time
is the training loop without the dev evaluations, which run in fp32 on CPU for both precisions.

    python benchmarks/teacher_precision.py --train 2000 --epochs 1 --threads 2 --glue-dir ../shared/data/glue
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch

from pipeline.data.tasks import get_task
from pipeline.params import load_params
from pipeline.stages.prepare import run_prepare
from pipeline.stages.teacher import fine_tune
from pipeline.training import finetune

PRECISIONS = ("fp32", "bf16")


def timed(function: Callable, seconds: defaultdict[str, float], name: str) -> Callable:
    """``function``, adding its run time to ``seconds[name]``."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[name] += time.perf_counter() - start

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--train", type=int, default=2000, help="training examples (seeded subset)")
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of (fp32, bf16)")
    parser.add_argument("--glue-dir", type=Path, default=None, help="default: params.yaml data.glue_dir")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    params = load_params(args.params)
    data = {"max_train_examples": args.train, **({"glue_dir": args.glue_dir} if args.glue_dir else {})}
    params = params.model_copy(update={"data": params.data.model_copy(update=data)})

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared"
        run_prepare(task, params, prepared)
        for _ in range(args.repeats):
            for precision in PRECISIONS:
                hp = params.teacher.model_copy(update={"mixed_precision": precision, "epochs": args.epochs})
                seconds: defaultdict[str, float] = defaultdict(float)
                with (
                    mock.patch.object(finetune.FineTuning, "train", timed(finetune.FineTuning.train, seconds, "loop")),
                    mock.patch.object(finetune, "evaluate_dev", timed(finetune.evaluate_dev, seconds, "dev")),
                ):
                    dev = fine_tune(
                        [task], params.model_copy(update={"teacher": hp}), prepared,
                        {task.name: Path(tmp) / precision}, Path(tmp) / f"log-{precision}",
                    )[task.name]  # fmt: skip
                results.append({
                    "precision": precision, "train_seconds": round(seconds["loop"] - seconds["dev"], 1),
                    **{f"dev_{name}": round(value, 4) for name, value in dev.items()},
                })  # fmt: skip
                print(json.dumps(results[-1]), flush=True)
    best = {p: min(r["train_seconds"] for r in results if r["precision"] == p) for p in PRECISIONS}
    print(
        f"{task.name}: {args.train} training examples, {args.epochs:g} epoch(s), {args.threads} threads, "
        f"{params.teacher.checkpoint}: bf16 training is {best['fp32'] / best['bf16']:.2f}x as fast as fp32"
    )


if __name__ == "__main__":
    main()

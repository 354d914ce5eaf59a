"""Run single-task pipeline stages directly (no DVC) and time each one: for machines without DVC installed.

Runs ``python -m pipeline <stage> --task <task>`` (the commands ``dvc.yaml`` runs) stage by stage, task by task,
and rewrites the JSON report after every stage, so a run cut short still reports what finished.

    python benchmarks/run_stages.py --tasks sst2 cola --stages teacher score student baseline --out times.json

Used for the GPU run recorded in README ("GPU"), where the lent machine had no DVC.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch


def machine() -> str:
    """The accelerator (or CPU) this run measures."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {torch.get_num_threads()} CPU threads"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--stages", nargs="+", required=True, help="e.g. teacher score student baseline")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    report: dict = {"machine": machine(), "params": args.params, "stages": []}
    for task in args.tasks:
        for stage in args.stages:
            cmd = [sys.executable, "-m", "pipeline", stage, "--task", task, "--params", args.params]
            print(f"== {task} {stage}: {' '.join(cmd)}", flush=True)
            start = time.perf_counter()
            returncode = subprocess.call(cmd)
            seconds = time.perf_counter() - start
            report["stages"].append({"task": task, "stage": stage, "seconds": round(seconds, 1), "rc": returncode})
            args.out.write_text(json.dumps(report, indent=2))
            print(f"== {task} {stage}: {seconds:.1f} s (rc {returncode})", flush=True)
            if returncode != 0:
                sys.exit(returncode)
    total = sum(row["seconds"] for row in report["stages"])
    print(f"total {total:.1f} s on {report['machine']}")


if __name__ == "__main__":
    main()

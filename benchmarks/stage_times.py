"""Run ``dvc repro`` and measure the wall time of every stage it runs.

DVC prints ``Running stage 'NAME':`` when a stage starts; a stage's time runs from that line to the next stage's
(or the end of the run), so it includes DVC's own work for the stage (hashing and caching its outputs). The output of
``dvc repro`` is passed through (and kept in ``--log``); the times are printed as a table per task and saved as JSON.
With ``--merge`` the times of an earlier, interrupted run are kept for the stages this run does not run again, so a
resumed ``dvc repro`` still yields the time of every stage.

    python benchmarks/stage_times.py --json metrics/stage_times.json --log repro.log [-- extra dvc repro args]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

STAGE_START = re.compile(r"Running stage '([^']+)'")
NO_TASK = "(all tasks)"


def run_repro(extra_args: list[str], log_path: Path) -> tuple[dict[str, float], int]:
    """Run ``dvc repro``, echoing and logging its output; return seconds per stage that ran, and the exit code."""
    started: list[tuple[str, float]] = []
    with open(log_path, "a", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro", *extra_args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # DVC's lines must arrive as stages start, not in blocks
        )  # fmt: skip
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
            match = STAGE_START.search(line)
            if match:
                started.append((match.group(1), time.monotonic()))
        code = process.wait()
    end = time.monotonic()
    ends = [start for _, start in started[1:]] + [end]
    return {name: finish - start for (name, start), finish in zip(started, ends, strict=True)}, code


def by_task(times: dict[str, float]) -> dict[str, dict[str, float]]:
    """``{stage: {item: seconds}}`` from DVC stage names like ``teacher@sst2`` or ``mkd@bilstm``."""
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for name, seconds in times.items():
        stage, _, item = name.partition("@")
        table[stage][item or NO_TASK] = seconds
    return dict(table)


def format_table(times: dict[str, float]) -> str:
    """Minutes per stage and item, with each stage's total and the grand total."""
    table = by_task(times)
    lines = []
    for stage, items in table.items():
        cells = ", ".join(f"{item} {seconds / 60:.1f}" for item, seconds in items.items())
        lines.append(f"{stage:12s} {sum(items.values()) / 60:7.1f} min   ({cells})")
    lines.append(f"{'total':12s} {sum(times.values()) / 60:7.1f} min")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("stage_times.json"), help="where to save seconds per stage")
    parser.add_argument("--log", type=Path, default=Path("repro.log"), help="dvc repro output is appended here")
    parser.add_argument("--merge", action="store_true", help="keep times already in --json for stages not rerun")
    parser.add_argument("repro_args", nargs="*", help="passed to dvc repro (after --)")
    args = parser.parse_args()
    times, code = run_repro(args.repro_args, args.log)
    if args.merge and args.json.is_file():
        times = {**json.loads(args.json.read_text(encoding="utf-8"))["seconds"], **times}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"seconds": times, "exit_code": code}, indent=2) + "\n", encoding="utf-8")
    print(format_table(times))
    sys.exit(code)


if __name__ == "__main__":
    main()

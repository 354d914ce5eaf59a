"""Which run conditions change outputs bit for bit: thread count, CPU kernel ISA, MKL reproducibility mode, batch size.

Each configuration runs the same seeded workload in a fresh process (environment variables such as
``ONEDNN_MAX_CPU_ISA`` are read when a library starts) and saves the result as float32; the table compares
every configuration with the first one (same bytes? largest absolute difference?). Equal hash prefixes mean
bit-identical outputs.

Workloads:

* ``score``: teacher logits of the first ``--rows`` SST-2 training sentences (``pipeline.stages.score.score_table``,
  the packaged teacher with a seeded fresh 2-label head, ``score.precision`` fp32);
* ``train``: the BiLSTM baseline trained for one epoch on the first ``--rows`` SST-2 training sentences with the
  default params (``pipeline.stages.baseline.train_baseline``; a few hundred batches of 50), its final weights;
* ``lstm``: 100 AdaDelta steps of ``PaddedBiLSTM`` (the plain oneDNN LSTM kernel) on seeded random inputs,
  its final weights.

    python benchmarks/bit_identity.py --workload score --rows 1000
    python benchmarks/bit_identity.py --workload train --rows 10000
    python benchmarks/bit_identity.py --workload lstm
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]  # children import this checkout's pipeline package
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
# (name, torch threads, environment overrides, extra workload arguments); the first is the reference.
CONFIGURATIONS: list[tuple[str, int, dict[str, str], list[str]]] = [
    ("2 threads (reference)", 2, {}, []),
    ("2 threads, again", 2, {}, []),
    ("1 thread", 1, {}, []),
    ("1 thread, again", 1, {}, []),
    ("4 threads (more than this machine's cores)", 4, {}, []),
    ("2 threads, ONEDNN_MAX_CPU_ISA=AVX2", 2, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, []),
    ("2 threads, MKL_ENABLE_INSTRUCTIONS=AVX2", 2, {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, []),
    ("2 threads, ATEN_CPU_CAPABILITY=avx2", 2, {"ATEN_CPU_CAPABILITY": "avx2"}, []),
    ("2 threads, all three AVX2", 2, AVX2_ONLY, []),
    ("1 thread, all three AVX2", 1, AVX2_ONLY, []),
    ("2 threads, MKL_CBWR=COMPATIBLE", 2, {"MKL_CBWR": "COMPATIBLE"}, []),
    ("1 thread, MKL_CBWR=COMPATIBLE", 1, {"MKL_CBWR": "COMPATIBLE"}, []),
    ("2 threads, MKL_CBWR=AVX2,STRICT", 2, {"MKL_CBWR": "AVX2,STRICT"}, []),
    ("1 thread, MKL_CBWR=AVX2,STRICT", 1, {"MKL_CBWR": "AVX2,STRICT"}, []),
]
BATCH_SIZE_CONFIGURATION = ("2 threads, score batch size 64", 2, {}, ["--batch-size", "64"])
DEV_ROWS = 200  # dev sentences for the train workload's (single) early-stopping evaluation
LSTM_STEPS, LSTM_BATCH, LSTM_MAX_TOKENS, LSTM_INPUT, LSTM_HIDDEN = 100, 50, 40, 768, 150


def score_workload(rows: int, batch_size: int) -> np.ndarray:
    """Teacher logits of the first ``rows`` SST-2 training sentences."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pipeline.bench.score import bench_sentences
    from pipeline.data.shards import logits_matrix
    from pipeline.data.tasks import get_task
    from pipeline.params import load_params
    from pipeline.serving.teacher import resolve_checkpoint
    from pipeline.stages.score import score_table
    from pipeline.training.device import seed_everything

    task, params = get_task("sst2"), load_params()
    score = params.score.model_copy(update={"batch_size": batch_size, "precision": "fp32"})
    params = params.model_copy(update={"score": score})
    checkpoint = resolve_checkpoint(params.teacher.checkpoint)
    seed_everything(params.seed)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=task.num_outputs).eval()
    table, _ = bench_sentences(task, params, rows)
    return logits_matrix(score_table(task, table, model, AutoTokenizer.from_pretrained(checkpoint), params))


def train_workload(rows: int) -> np.ndarray:
    """Final weights of the baseline BiLSTM after one epoch on the first ``rows`` SST-2 training sentences."""
    import torch

    from pipeline.data.glue import read_glue_tsv
    from pipeline.data.io import write_parquet
    from pipeline.data.tasks import get_task
    from pipeline.params import load_params
    from pipeline.serving.teacher import resolve_checkpoint
    from pipeline.stages.baseline import train_baseline
    from pipeline.students.architectures import MODEL_FILE

    task, params = get_task("sst2"), load_params()
    params = params.model_copy(update={"baseline": params.baseline.model_copy(update={"epochs": 1})})
    glue = params.data.resolved_glue_dir() / task.glue_dir_name
    with tempfile.TemporaryDirectory() as tmp:
        prepared, out = Path(tmp) / "prepared", Path(tmp) / "baseline"
        write_parquet(read_glue_tsv(task, glue / "train.tsv").slice(0, rows), prepared / task.name / "train.parquet")
        write_parquet(read_glue_tsv(task, glue / "dev.tsv").slice(0, DEV_ROWS), prepared / task.name / "dev.parquet")
        teacher = Path(resolve_checkpoint(params.teacher.checkpoint))
        train_baseline(task, params, prepared, teacher, out, Path(tmp) / "dvclive")
        state = torch.load(out / MODEL_FILE, weights_only=True)
    return np.concatenate([value.float().numpy().ravel() for value in state.values()])


def lstm_workload() -> np.ndarray:
    """Final weights of a PaddedBiLSTM + linear head after AdaDelta steps on seeded random padded batches."""
    import torch

    from pipeline.students.layers import PaddedBiLSTM

    torch.manual_seed(0)
    lstm, head = PaddedBiLSTM(LSTM_INPUT, LSTM_HIDDEN), torch.nn.Linear(2 * LSTM_HIDDEN, 2)
    parameters = [*lstm.parameters(), *head.parameters()]
    optimizer = torch.optim.Adadelta(parameters, lr=1.0, rho=0.95)
    for _ in range(LSTM_STEPS):
        lengths = torch.randint(1, LSTM_MAX_TOKENS + 1, (LSTM_BATCH,))
        inputs = torch.randn(LSTM_BATCH, int(lengths.max()), LSTM_INPUT)
        _, final = lstm(inputs, lengths)
        loss = torch.nn.functional.cross_entropy(head(final), torch.randint(0, 2, (LSTM_BATCH,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.cat([parameter.detach().ravel() for parameter in parameters]).numpy()


def run_child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.workload == "score":
        result = score_workload(args.rows, args.batch_size)
    elif args.workload == "train":
        result = train_workload(args.rows)
    else:
        result = lstm_workload()
    np.save(args.out, result.astype(np.float32))
    print(torch.backends.cpu.get_cpu_capability())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["score", "train", "lstm"], required=True)
    parser.add_argument("--rows", type=int, default=1000, help="SST-2 training sentences (score, train)")
    parser.add_argument("--batch-size", type=int, default=32, help="score batch size")
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)  # set: run one configuration here
    args = parser.parse_args()
    if args.out is not None:
        run_child(args)
        return

    configurations = CONFIGURATIONS + ([BATCH_SIZE_CONFIGURATION] if args.workload == "score" else [])
    print(f"workload {args.workload}, rows {args.rows}; each configuration in a fresh process")
    print(f"{'configuration':<44} {'ATen ISA':<8} {'sha256':<12} {'identical':<9} max |diff| vs reference")
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, threads, env, extra) in enumerate(configurations):
            out = Path(tmp) / f"{index}.npy"
            command = [
                sys.executable,
                __file__,
                "--workload",
                args.workload,
                "--rows",
                str(args.rows),
                "--threads",
                str(threads),
                "--out",
                str(out),
                *extra,
            ]
            environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO_ROOT), **env}
            done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{name}: failed\n{done.stderr}")
            result = np.load(out)
            reference = result if reference is None else reference
            digest = hashlib.sha256(result.tobytes()).hexdigest()[:12]
            identical = result.shape == reference.shape and result.tobytes() == reference.tobytes()
            difference = float(np.abs(result.astype(np.float64) - reference).max())
            capability = done.stdout.strip().splitlines()[-1]
            same = "yes" if identical else "no"
            print(f"{name:<44} {capability:<8} {digest:<12} {same:<9} {difference:.3g}", flush=True)


if __name__ == "__main__":
    main()

"""Time Tang et al.'s BiLSTM student's training step in fp32 and under bf16 autocast, interleaved.

One step is what ``pipeline.training.fit.fit`` does per batch: forward, loss, backward, the dense and the sparse
AdaDelta steps. Inputs are random WordPiece ids of a fixed width (``--width``) with random lengths, the default
BiLSTM of params.yaml on a random 30,522 x 384 embedding matrix (the teacher's shape). Rounds alternate between the
precisions (A B, A B, ...) so that load changing during the run biases neither; the median step counts.

    python benchmarks/student_precision.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from pipeline.data.tasks import get_task
from pipeline.params import load_params
from pipeline.students.bilstm import BiLSTMStudent
from pipeline.training.device import autocast, autocast_dtype, training_precision
from pipeline.training.optim import build_optimizers

VOCAB_SIZE, EMBEDDING_WIDTH = 30522, 384  # the MiniLM teacher's WordPiece embedding matrix


def make_step(task_name: str, batch_size: int, width: int, precision: str, seed: int):
    """A closure running one training step of a fresh student (same seed, so both precisions start alike)."""
    params = load_params()
    task = get_task(task_name)
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(VOCAB_SIZE, EMBEDDING_WIDTH, generator=generator) * 0.05
    model = BiLSTMStudent(params.bilstm, embeddings, [task])
    optimizers, _ = build_optimizers(params.student, model, total_steps=1)
    dtype = autocast_dtype(torch.device("cpu"), training_precision(torch.device("cpu"), precision))

    def side() -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(1, VOCAB_SIZE, (batch_size, width), generator=generator)
        return ids, torch.randint(max(1, width // 2), width + 1, (batch_size,), generator=generator)

    def step() -> None:
        batch = dict(zip(("a", "a_lengths"), side()))
        if task.is_pair:
            batch |= dict(zip(("b", "b_lengths"), side()))
        with autocast(torch.device("cpu"), dtype):
            logits = model(task_name, batch)
        loss = F.mse_loss(logits.float(), torch.zeros_like(logits, dtype=torch.float32))
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, bf16 native: "
          f"{training_precision(torch.device('cpu'), 'auto') == 'bf16'}")  # fmt: skip
    for task_name, batch_size, width in (("sst2", 50, 16), ("mrpc", 256, 32)):
        steps = {precision: make_step(task_name, batch_size, width, precision, 0) for precision in ("fp32", "bf16")}
        for step in steps.values():
            step()  # warm-up
            step()
        seconds: dict[str, list[float]] = {precision: [] for precision in steps}
        for _ in range(args.rounds):
            for precision, step in steps.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                seconds[precision].append((time.perf_counter() - start) / args.steps)
        fp32, bf16 = (statistics.median(seconds[p]) for p in ("fp32", "bf16"))
        spread = {p: f"{min(v) * 1e3:.1f}-{max(v) * 1e3:.1f}" for p, v in seconds.items()}
        print(f"{task_name} batch {batch_size} x {width} tokens: fp32 {fp32 * 1e3:.1f} ms ({spread['fp32']}), "
              f"bf16 {bf16 * 1e3:.1f} ms ({spread['bf16']}) per step; bf16 speed-up {fp32 / bf16:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()

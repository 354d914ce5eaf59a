"""CPU speed of MKD's Transformer student against the full packaged teacher, and where the batch-1 time goes.

Both models start from the packaged all-MiniLM-L6-v2 (weights do not change a forward pass's cost): the teacher as
``AutoModelForSequenceClassification`` with 2 labels (all 6 layers), the student as ``TransformerStudent`` with
``transformer.layers`` of them. Inference: SST-2 dev sentences at batch 1, tokenisation included (all sentences
tokenised in one call, then one forward per sentence, as ``pipeline.serving.teacher.predict_logits`` does), passes
interleaved teacher/student/teacher/student. Then a per-stage breakdown of a batch-1 forward, a few variants, and
training rows/s at batch 32 (AdamW, MSE on random logits).

    python benchmarks/transformer_speed.py --sentences 200 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipeline.data.glue import read_glue_tsv
from pipeline.data.tasks import get_task
from pipeline.params import Params, TransformerParams
from pipeline.serving.teacher import resolve_checkpoint
from pipeline.students.base import padding_mask
from pipeline.students.transformer import IDS, TYPE_IDS, TransformerEncoder, TransformerStudent, attention_bias

TASK = get_task("sst2")
CHECK_TEXTS = ["a", "a gorgeous , witty , seductive movie .", "it 's a charming and often affecting journey .", "no"]


def teacher_predictor(model: torch.nn.Module, tokenizer, max_length: int) -> Callable[[list[str]], None]:
    def run(texts: list[str]) -> None:
        encoded = tokenizer(texts, truncation=True, max_length=max_length)
        for ids, types in zip(encoded["input_ids"], encoded["token_type_ids"], strict=True):
            model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types])).logits.numpy()

    return run


def student_predictor(model: TransformerStudent, encoder: TransformerEncoder) -> Callable[[list[str]], None]:
    def run(texts: list[str]) -> None:
        inputs = encoder.encode_inputs(texts, None)
        for row in range(len(texts)):
            model(TASK.name, inputs.batch(np.array([row]))).numpy()

    return run


class SingleTask(torch.nn.Module):
    """``lambda batch: model("sst2", batch)`` with the batch's tensors as inputs (for ONNX export)."""

    def __init__(self, model: TransformerStudent) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, ids_lengths: torch.Tensor, type_ids: torch.Tensor) -> torch.Tensor:
        return self.model(TASK.name, {IDS: ids, f"{IDS}_lengths": ids_lengths, TYPE_IDS: type_ids})


def onnx_predictor(
    model: TransformerStudent, encoder: TransformerEncoder, path: Path, threads: int
) -> Callable[[list[str]], None]:
    """The student exported to ONNX (dynamic batch and time axes), run by onnxruntime at batch 1."""
    import onnxruntime as ort

    names = [IDS, f"{IDS}_lengths", TYPE_IDS]
    example = encoder.encode_inputs(["an example sentence", "another"], None).batch(np.arange(2))
    axes = {IDS: {0: "batch", 1: "time"}, f"{IDS}_lengths": {0: "batch"}, TYPE_IDS: {0: "batch", 1: "time"}}
    torch.onnx.export(SingleTask(model).eval(), tuple(example[n] for n in names), path, input_names=names,
                      output_names=["logits"], dynamic_axes=axes, dynamo=False)  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options)
    check = encoder.encode_inputs(CHECK_TEXTS, None).batch(np.arange(len(CHECK_TEXTS)))  # padded, other batch size
    (logits,) = session.run(None, {name: check[name].numpy() for name in names})
    with torch.inference_mode():
        expected = model(TASK.name, check).numpy()
    print(
        f"  onnxruntime vs torch, {len(model.bert.encoder.layer)} layers, padded batch: "
        f"max |diff| {np.abs(logits - expected).max():.2e}"
    )

    def run(texts: list[str]) -> None:
        inputs = encoder.encode_inputs(texts, None)
        for row in range(len(texts)):
            batch = inputs.batch(np.array([row]))
            session.run(None, {name: batch[name].numpy() for name in names})

    return run


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and CPU (process) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(
    predictors: dict[str, Callable[[list[str]], None]], texts: list[str], rounds: int
) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) sentences/s of each predictor per round, the predictors run one after the other within a round."""
    for predict in predictors.values():
        predict(texts[:8])  # warm-up
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in predictors}
    for _ in range(rounds):
        for name, predict in predictors.items():
            wall, cpu = timed(lambda predict=predict: predict(texts))
            rates[name].append((len(texts) / wall, len(texts) / cpu))
    return rates


def student_breakdown(
    model: TransformerStudent, encoder: TransformerEncoder, texts: list[str], clock: Callable[[], float]
) -> dict[str, float]:
    """Milliseconds per sentence in each stage of a batch-1 student forward."""
    totals = dict.fromkeys(["tokenise", "batch", "embeddings", "mask", "layers", "pooler+head"], 0.0)
    t0 = clock()
    inputs = encoder.encode_inputs(texts, None)
    totals["tokenise"] = clock() - t0
    for row in range(len(texts)):
        t0 = clock()
        batch = inputs.batch(np.array([row]))
        t1 = clock()
        hidden = model.bert.embeddings(input_ids=batch["ids"], token_type_ids=batch["type_ids"])
        t2 = clock()
        bias = attention_bias(padding_mask(batch["ids_lengths"], batch["ids"].shape[1]), hidden.dtype)
        t3 = clock()
        for layer in model.bert.encoder.layer:
            hidden = layer(hidden, bias)
        t4 = clock()
        model.heads[TASK.name](model.dropout(model.bert.pooler(hidden))).numpy()
        t5 = clock()
        spans = [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4]
        for key, span in zip(["batch", "embeddings", "mask", "layers", "pooler+head"], spans, strict=True):
            totals[key] += span
    return {key: 1000 * value / len(texts) for key, value in totals.items()}


def teacher_breakdown(
    model: torch.nn.Module, tokenizer, texts: list[str], max_length: int, clock: Callable[[], float]
) -> dict[str, float]:
    """Milliseconds per sentence: tokenise, the whole HF forward, and its layers alone (same inputs, no mask)."""
    t0 = clock()
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    totals = {"tokenise": clock() - t0, "hf forward (all)": 0.0, "6 layers alone": 0.0}
    for ids, types in zip(encoded["input_ids"], encoded["token_type_ids"], strict=True):
        ids, types = torch.tensor([ids]), torch.tensor([types])
        t0 = clock()
        model(input_ids=ids, token_type_ids=types).logits.numpy()
        t1 = clock()
        hidden = model.bert.embeddings(input_ids=ids, token_type_ids=types)
        t2 = clock()
        for layer in model.bert.encoder.layer:
            hidden = layer(hidden, None)
        totals["hf forward (all)"] += t1 - t0
        totals["6 layers alone"] += clock() - t2
    return {key: 1000 * value / len(texts) for key, value in totals.items()}


def training_rate(
    model: TransformerStudent, encoder: TransformerEncoder, texts: list[str], batch_size: int, steps: int
) -> dict[str, float]:
    """Rows per wall and per CPU second of forward + backward + AdamW step, and the optimiser step's share of the
    time."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    inputs = encoder.encode_inputs(texts, None)
    rng = np.random.default_rng(0)
    step_time = total = cpu = 0.0
    for step in range(steps + 2):  # the first two are warm-up
        rows = rng.choice(len(texts), batch_size, replace=False)
        start, cpu_start = time.perf_counter(), time.process_time()
        batch = inputs.batch(rows)
        loss = torch.nn.functional.mse_loss(model(TASK.name, batch), torch.randn(batch_size, TASK.num_outputs))
        optimizer.zero_grad()
        loss.backward()
        t_step = time.perf_counter()
        optimizer.step()
        end = time.perf_counter()
        if step >= 2:
            total += end - start
            step_time += end - t_step
            cpu += time.process_time() - cpu_start
    model.eval()
    return {
        "rows_per_s": round(steps * batch_size / total, 1),
        "rows_per_cpu_s": round(steps * batch_size / cpu, 1),
        "optimizer_step_share": round(step_time / total, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved teacher/student passes")
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--extra-layers", type=int, nargs="*", default=[2, 6], help="more student depths to time")
    parser.add_argument("--variants", action="store_true", help="also int8 dynamic quantisation and onnxruntime")
    parser.add_argument("--glue-dir", type=Path, default=Params().data.resolved_glue_dir())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = read_glue_tsv(TASK, args.glue_dir / TASK.glue_dir_name / "dev.tsv")
    texts = dev.column("text_a").to_pylist()[: args.sentences]
    teacher_dir = Path(resolve_checkpoint(Params().teacher.checkpoint))
    max_length = Params().teacher.max_length

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir, num_labels=2).eval()
    students = {
        f"student {layers}L{'' if pooler else ' no pooler'}": TransformerStudent.build(
            Params(transformer=TransformerParams(layers=layers, pooler=pooler)), [TASK], teacher_dir, [], 0
        )
        for layers, pooler in ((3, True), (3, False), *((n, True) for n in args.extra_layers))
    }
    for model, _ in students.values():
        model.eval()
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    print(
        f"{len(texts)} SST-2 dev sentences, tokens per sentence: mean {np.mean(lengths):.1f}, max {max(lengths)}; "
        f"{args.threads} threads; torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}"
    )

    with torch.inference_mode():
        predictors = {"teacher 6L (HF)": teacher_predictor(teacher, tokenizer, max_length)}
        predictors.update({name: student_predictor(model, encoder) for name, (model, encoder) in students.items()})
        if args.variants:
            from torch.ao.quantization import quantize_dynamic

            predictors["teacher 6L int8"] = teacher_predictor(
                quantize_dynamic(teacher, {torch.nn.Linear}, dtype=torch.qint8), tokenizer, max_length
            )
            model, encoder = students["student 3L"]
            predictors["student 3L int8"] = student_predictor(
                quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8), encoder
            )
            with tempfile.TemporaryDirectory() as tmp:
                for name in [n for n in ("student 3L", "student 6L") if n in students]:
                    model, encoder = students[name]
                    predictors[f"{name} onnxruntime"] = onnx_predictor(
                        model, encoder, Path(tmp) / "m.onnx", args.threads
                    )
        rates = interleaved(predictors, texts, args.rounds)
        base = rates["teacher 6L (HF)"]
        print(
            "\nbatch 1, tokenisation included: sentences/s per round by wall clock [by process CPU time]; "
            "ratio = median over rounds of student/teacher",
            flush=True,
        )
        for name, values in rates.items():
            wall = statistics.median(v[0] / b[0] for v, b in zip(values, base, strict=True))
            cpu = statistics.median(v[1] / b[1] for v, b in zip(values, base, strict=True))
            cells = " ".join(f"{w:6.1f} [{c:6.1f}]" for w, c in values)
            print(f"  {name:24s} {cells}   ratio {wall:.2f}x [{cpu:.2f}x]", flush=True)

        model, encoder = students["student 3L"]
        clock = time.process_time if args.threads == 1 else time.perf_counter
        print(f"\nbatch-1 breakdown, ms per sentence ({clock.__name__})")
        print("  student 3L:", {k: round(v, 3) for k, v in student_breakdown(model, encoder, texts, clock).items()})
        teacher_times = teacher_breakdown(teacher, tokenizer, texts, max_length, clock)
        print("  teacher 6L:", {k: round(v, 3) for k, v in teacher_times.items()})

    model, encoder = students["student 3L"]
    print(f"load average {os.getloadavg()[0]:.1f}")
    rate = training_rate(model, encoder, texts, 32, args.train_steps)
    print(f"\ntraining at batch 32 (3L, AdamW, all parameters): {rate}")


if __name__ == "__main__":
    main()

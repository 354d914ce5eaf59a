"""``bench student``: where a BiLSTM student's time goes at batch size 1 on CPU, tokenisation included.

Two views on the same sentences, one thread setting:

- PyTorch: tokeniser, embedding look-up, LSTM input projection (``x W_ih^T`` of both directions), recurrence (the
  same LSTMs fed a width-1 input, i.e. without the projection), pooling + head, and the framework overhead (a full
  ``predict`` call minus those parts);
- ONNX Runtime, per exported variant: the tokeniser (``tokenizers``), the session's per-op time from its profiler
  (summed by op type: ``LSTM`` = projection + recurrence, ``Scan`` = recurrence only, ``Gather`` = look-ups, ``Gemm``
  = head), onnxruntime's fixed cost per call, and the Python around it (framework overhead).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from pipeline.serving import deploy
from pipeline.students.base import StudentModel, padding_mask
from pipeline.students.bilstm import BiLSTMStudent
from pipeline.students.encoding import StudentEncoder
from pipeline.students.inference import predict

MICROSECONDS = 1e6
KERNEL_SUFFIX = "_kernel_time"  # onnxruntime profiler: the event of a node's computation


def best_mean_us(fn: Callable[[Any], object], items: Sequence[Any], repeats: int) -> float:
    """Mean microseconds per item of ``fn(item)`` over ``items``, the best of ``repeats`` passes after a warm-up."""
    for item in items[: max(1, len(items) // 10)]:
        fn(item)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return best / len(items) * MICROSECONDS


@torch.inference_mode()
def pytorch_breakdown(
    model: BiLSTMStudent, encoder: StudentEncoder, task: str, sentences: Sequence[str], repeats: int
) -> dict[str, float]:
    """Microseconds per sentence of each part of the PyTorch BiLSTM student at batch size 1."""
    ids = [torch.tensor([row]) for row in encoder.encode(sentences)]
    lengths = [torch.tensor([row.shape[1]]) for row in ids]
    embedded = [embed(model, row) for row in ids]
    lstms = (model.lstm.forward_lstm, model.lstm.backward_lstm)
    recurrent = [_recurrence_only(lstm) for lstm in lstms]
    hidden = [model.lstm(x, n)[0] for x, n in zip(embedded, lengths, strict=True)]
    parts = {
        "tokeniser": best_mean_us(lambda s: encoder.encode([s]), sentences, repeats),
        "embedding look-up": best_mean_us(lambda row: embed(model, row), ids, repeats),
        "LSTM input projection": best_mean_us(
            lambda x: [nn.functional.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0) for lstm in lstms], embedded, repeats
        ),
        "LSTM recurrence": best_mean_us(
            lambda x: [lstm(x.new_zeros(1, x.shape[1], 1)) for lstm in recurrent], embedded, repeats
        ),
        "pooling + head": best_mean_us(
            lambda pair: model.heads[task](_max_pool(*pair)), list(zip(hidden, lengths, strict=True)), repeats
        ),
    }
    total = best_mean_us(lambda s: predict(model, encoder, task, [s], None, 1), sentences, repeats)
    parts["framework overhead (rest)"] = total - sum(parts.values())
    parts["total (predict, batch 1)"] = total
    return parts


def embed(model: BiLSTMStudent, ids: torch.Tensor) -> torch.Tensor:
    """The LSTM input: frozen and trainable embeddings, concatenated."""
    embedded = model.embedding(ids)
    if model.frozen_embedding is None:
        return embedded
    return torch.cat([model.frozen_embedding(ids), embedded], dim=-1)


def _recurrence_only(lstm: nn.LSTM) -> nn.LSTM:
    """An LSTM with the same recurrent weights and a width-1 input: its cost is the recurrence."""
    copy = nn.LSTM(1, lstm.hidden_size, batch_first=True)
    copy.weight_hh_l0.data.copy_(lstm.weight_hh_l0)
    return copy.eval()


def _max_pool(outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    real = padding_mask(lengths, outputs.shape[1])
    return outputs.masked_fill(~real[..., None], float("-inf")).max(dim=1).values


def onnx_breakdown(
    folder: Path, variant: str, sentences: Sequence[str], threads: int, repeats: int
) -> dict[str, float]:
    """Microseconds per sentence at batch size 1: tokeniser, ops by type, ``session.run``'s fixed cost, Python glue.

    The profiler inflates what it times, so it only apportions: the measured ``session.run`` time minus the fixed
    cost of a call (a session over a one-node graph with the same inputs) is split in the profile's proportions.
    """
    runner = deploy.ExportedStudent(folder, variant, threads)
    feeds = []
    for ids in runner.token_ids(sentences):
        ids = ids[: runner.max_length]
        feeds.append({"a": np.array([ids], dtype=np.int64), "a_lengths": np.array([len(ids)], dtype=np.int64)})
    parts = {"tokeniser": best_mean_us(lambda s: runner.token_ids([s]), sentences, repeats)}
    run_us = best_mean_us(lambda feed: runner.session.run(None, feed), feeds, repeats)
    trivial = ort.InferenceSession(_identity_model().SerializeToString(), deploy.session_options(threads),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    fixed_us = best_mean_us(lambda feed: trivial.run(None, feed), feeds, repeats)
    by_op = profile_ops(folder / runner.config["models"][variant], feeds, threads)
    profiled = sum(by_op.values())
    by_time = sorted(by_op.items(), key=lambda kv: -kv[1])
    parts.update({f"op {op}": (run_us - fixed_us) * us / profiled for op, us in by_time})
    parts["onnxruntime call overhead"] = fixed_us
    total = best_mean_us(lambda s: runner.logits([s], None, 1), sentences, repeats)
    parts["Python glue (arrays, batching)"] = total - run_us - parts["tokeniser"]
    parts["total (logits, batch 1)"] = total
    return parts


def _identity_model() -> onnx.ModelProto:
    """A one-node graph with the student's single-sentence inputs: its run time is onnxruntime's fixed cost."""
    ids = onnx.helper.make_tensor_value_info("a", onnx.TensorProto.INT64, ["batch", "time"])
    lengths = onnx.helper.make_tensor_value_info("a_lengths", onnx.TensorProto.INT64, ["batch"])
    out = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.INT64, ["batch"])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["a_lengths"], ["logits"])], "fixed_cost",
                                   [ids, lengths], [out])  # fmt: skip
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def profile_ops(model_path: Path, feeds: Sequence[dict[str, np.ndarray]], threads: int) -> dict[str, float]:
    """Mean microseconds per run spent in each op type of the main graph (a ``Scan`` includes its body), from
    onnxruntime's profiler, over a second pass through ``feeds`` (the first one warms up)."""
    main_nodes = {node.name for node in onnx.load(str(model_path)).graph.node}
    options = deploy.session_options(threads)
    options.enable_profiling = True
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    for _ in range(2):
        for feed in feeds:
            session.run(None, feed)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text(encoding="utf-8"))
    trace.unlink()
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    timed_from = runs[len(feeds)]
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        name = event.get("name", "")
        if (event.get("cat") == "Node" and name.endswith(KERNEL_SUFFIX) and event["ts"] >= timed_from
                and name.removesuffix(KERNEL_SUFFIX) in main_nodes):  # fmt: skip
            totals[event["args"]["op_name"]] += event["dur"]
    return {op: total / len(feeds) for op, total in totals.items()}


def run_student_bench(
    model: StudentModel, encoder: StudentEncoder, task: str, export_folder: Path, sentences: Sequence[str],
    threads: int, repeats: int,
) -> dict[str, Any]:  # fmt: skip
    """Both breakdowns for the given sentences (single-sentence tasks) with ``threads`` torch/onnxruntime threads."""
    if not isinstance(model, BiLSTMStudent):
        raise TypeError(f"bench student breaks down BiLSTM students; this one is {model.architecture!r}")
    torch.set_num_threads(threads)
    mean_tokens = float(np.mean([len(ids) for ids in encoder.encode(sentences)]))
    report: dict[str, Any] = {"sentences": len(sentences), "threads": threads, "mean_tokens": mean_tokens}
    report["pytorch"] = pytorch_breakdown(model, encoder, task, sentences, repeats)
    for variant in deploy.read_config(export_folder)["models"]:
        report[f"onnx {variant}"] = onnx_breakdown(export_folder, variant, sentences, threads, repeats)
    return report


def format_breakdown(report: dict[str, Any]) -> str:
    """A Markdown table per model: part, microseconds per sentence, share of the total."""
    heading = (f"{report['sentences']} sentences (mean {report['mean_tokens']:.1f} tokens), batch size 1, "
               f"{report['threads']} threads; microseconds per sentence")  # fmt: skip
    lines = [heading]
    for name, parts in report.items():
        if not isinstance(parts, dict):
            continue
        total = next(value for key, value in parts.items() if key.startswith("total"))
        lines += ["", f"**{name}** (total {total:.0f} us = {MICROSECONDS / total:.0f} sentences/s)", "",
                  "| part | us | share |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {key} | {value:.0f} | {100 * value / total:.0f}% |" for key, value in parts.items()
                  if not key.startswith("total")]  # fmt: skip
    return "\n".join(lines) + "\n"

"""The static student's exported variants against the model2vec classifier at batch size 1, side by side in one run
(issue 35), with the BiLSTM student's int8 export as a third model, and where one static prediction's time goes.

Run in a workspace that has built the task (``models/export/static/TASK``, ``models/model2vec/TASK``,
``models/export/TASK``, ``data/prepared/TASK/dev.parquet``); every model reads the same first ``--examples`` dev
texts with the same thread count (onnxruntime intra-op threads, torch threads and the numpy BLAS pool).

- **breakdown**: microseconds per call of each part of one prediction (tokeniser, ``session.run``, onnxruntime's
  fixed cost per call measured on a one-node graph, the Python around them; model2vec's tokeniser, pooling and
  head), each the mean over texts of the fastest of ``--repeats`` calls (robust to a busy machine);
- **per request**: one call per text (what a server at batch size 1 does), the models interleaved text by text, the
  fastest of ``--repeats`` calls per text;
- **evaluate pass**: the evaluate stage's own measurement (``measure_throughput``: passes over all texts with
  ``batch_size=1``, interleaved across models, the median pass). model2vec's pipeline tokenises and pools one text
  at a time there but runs its head once for the whole pass.

    cd WORKSPACE && python /path/to/benchmarks/static_speed.py --task banking77 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from pipeline import paths
from pipeline.data.tasks import read_prepared_task
from pipeline.params import Params
from pipeline.serving import catalogue, deploy
from pipeline.serving.model2vec_classifier import Model2VecModel
from pipeline.stages.evaluate import measure_throughput
from pipeline.training.device import torch_threads

MICROSECONDS = 1e-3  # per nanosecond


def fastest_calls_us(calls: dict[str, Callable[[int], object]], items: int, repeats: int) -> dict[str, float]:
    """Mean over items ``0..items-1`` of the fastest of ``repeats`` calls ``call(item)`` in microseconds, the calls
    interleaved item by item across ``calls`` (after one warm-up round)."""
    best = {name: np.full(items, np.inf) for name in calls}
    for round_ in range(repeats + 1):
        for item in range(items):
            for name, call in calls.items():
                start = time.perf_counter_ns()
                call(item)
                if round_:
                    best[name][item] = min(best[name][item], time.perf_counter_ns() - start)
    return {name: float(times.mean()) * MICROSECONDS for name, times in best.items()}


def identity_session(threads: int) -> ort.InferenceSession:
    """A one-node graph with the static student's inputs: its run time is onnxruntime's fixed cost per call."""
    ids = onnx.helper.make_tensor_value_info("a", onnx.TensorProto.INT64, ["batch", "time"])
    lengths = onnx.helper.make_tensor_value_info("a_lengths", onnx.TensorProto.INT64, ["batch"])
    out = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.INT64, ["batch"])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["a_lengths"], ["logits"])], "fixed_cost",
                                   [ids, lengths], [out])  # fmt: skip
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), deploy.session_options(threads),
                                providers=["CPUExecutionProvider"])  # fmt: skip


def breakdown(
    folder: Path, model2vec: Model2VecModel, texts: Sequence[str], threads: int, repeats: int
) -> dict[str, float]:
    """Microseconds per call of the parts of one prediction of the static export (every variant) and of the
    model2vec pipeline."""
    runners = {
        variant: deploy.ExportedStudent(folder, variant, threads) for variant in deploy.read_config(folder)["models"]
    }
    reader = next(iter(runners.values()))
    ids = [reader.token_ids([text])[0][: reader.max_length] for text in texts]
    feeds = [{"a": np.array([row]), "a_lengths": np.array([len(row)])} for row in ids]
    fixed = identity_session(threads)
    pipeline = model2vec.pipeline  # model2vec's StaticModelPipeline
    vectors = [pipeline.model.encode([text]) for text in texts]
    calls: dict[str, Callable[[int], object]] = {
        "static: normalise + tokenise (encode)": lambda i: reader.encode([texts[i]], None),
        "onnxruntime fixed cost (one-node graph)": lambda i: fixed.run(None, feeds[i]),
        "model2vec: tokenise": lambda i: pipeline.model.tokenize([texts[i]]),
        "model2vec: tokenise + pool (encode)": lambda i: pipeline.model.encode([texts[i]]),
        "model2vec: head (predict_proba of a vector)": lambda i: pipeline.head.predict_proba(vectors[i]),
        "model2vec: total (Model2VecModel.logits)": lambda i: model2vec.logits([texts[i]], None, 1),
    }
    for name, runner in runners.items():
        calls[f"static-{name}: session.run"] = lambda i, r=runner: r.session.run(["logits"], feeds[i])
        calls[f"static-{name}: ids -> logits (logits_from_ids)"] = lambda i, r=runner: r.logits_from_ids([[ids[i]]], 1)
        calls[f"static-{name}: total (logits)"] = lambda i, r=runner: r.logits([texts[i]], None, 1)
    return fastest_calls_us(calls, len(texts), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="banking77")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime, torch and BLAS threads of every model")
    parser.add_argument("--examples", type=int, default=512, help="first dev texts (evaluate.speed_examples)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--also", type=Path, action="append", default=[],
                        help="another export folder of the static student (e.g. exported with other export params): "
                             "its variants join the side-by-side rows, named after the folder")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()

    task = read_prepared_task(args.task, paths.PREPARED_DIR)
    table = pq.read_table(paths.prepared_split(args.task, "dev"), columns=["text_a"]).slice(0, args.examples)
    texts = table.column("text_a").to_pylist()
    static_dir = paths.static_export_dir(args.task)
    params = Params()  # not read by the exported models (only by teachers and TF-IDF)
    model2vec = Model2VecModel.load(task, paths.model2vec_dir(args.task))
    predictors = {
        f"static-{variant}": deploy.ExportedStudent(static_dir, variant, args.threads).logits
        for variant in deploy.read_config(static_dir)["models"]
    }
    for folder in args.also:
        for variant in deploy.read_config(folder)["models"]:
            predictors[f"{folder.name}: static-{variant}"] = deploy.ExportedStudent(
                folder, variant, args.threads
            ).logits
    predictors["model2vec"] = model2vec.logits
    bilstm = catalogue.model_source("student-int8", task, params, args.threads)
    predictors["student-int8 (BiLSTM)"] = bilstm.load(None).logits

    with threadpool_limits(args.threads), torch_threads(args.threads):
        report = {
            "task": args.task, "threads": args.threads, "examples": len(texts), "repeats": args.repeats,
            "breakdown_us": breakdown(static_dir, model2vec, texts, args.threads, args.repeats),
            "per_request_us": fastest_calls_us({name: (lambda i, p=p: p([texts[i]], None, 1))
                                                for name, p in predictors.items()}, len(texts), args.repeats),
            "evaluate_pass_per_s": measure_throughput(predictors, texts, None, 1, args.repeats),
        }  # fmt: skip
    print(f"{args.task}: {len(texts)} dev texts, {args.threads} threads, batch size 1\n\nbreakdown (us per call):")
    for name, us in report["breakdown_us"].items():
        print(f"  {name:62s} {us:8.1f}")
    reference = report["per_request_us"]["model2vec"]
    print("\nper request (one call per text, interleaved; fastest of repeats per text):")
    for name, us in report["per_request_us"].items():
        print(f"  {name:40s} {us:7.1f} us = {1e6 / us:7.0f} sentences/s  ({reference / us:.2f}x model2vec)")
    passes = report["evaluate_pass_per_s"]
    print("\nevaluate pass (measure_throughput, batch_size=1; median pass, min-max):")
    for name, rates in passes.items():
        ratio = rates["median"] / passes["model2vec"]["median"]
        print(f"  {name:40s} {rates['median']:7.0f} sentences/s ({rates['min']:.0f}-{rates['max']:.0f})"
              f"  ({ratio:.2f}x model2vec)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

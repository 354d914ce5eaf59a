"""Export stage: any saved student as a deployable folder that runs with onnxruntime and tokenizers only.

The folder (read by ``pipeline/serving/deploy.py``) holds:

- ``model.onnx``: the student's forward pass for one task (``torch.onnx.export`` of any ``StudentModel``), inputs
  ``<name>`` ``[batch, time]`` int64 and ``<name>_lengths`` ``[batch]`` int64 per token array of the encoder (``a``,
  and ``b`` for pairs), output ``logits`` ``[batch, outputs]``; batch and time axes are dynamic;
- ``model-int8.onnx``: ONNX Runtime's dynamic int8 quantisation of it (weights int8, activations quantised per call);
- architecture-specific variants with the same inputs and output, e.g. ``model-table.onnx`` for the BiLSTM
  (precomputed LSTM input gates, ``pipeline/serving/bilstm_table.py``);
- ``tokenizer.json`` (a ``tokenizers`` file reproducing the student's encoder) and ``config.json`` (task, label
  names, max length, padding/unknown ids, text replacements, input names, variant files, source model).

Every variant is checked on the dev split(s) against the PyTorch student, from raw text: fp32 variants' logits must
match within ``export.parity_tolerance``; each variant's task metrics and the int8 drop are written as DVC metrics.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pyarrow as pa
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
from torch import nn

from pipeline.data.io import write_json
from pipeline.data.metrics import compute_metrics
from pipeline.data.schema import MASK_TOKEN, table_texts
from pipeline.data.tasks import Task
from pipeline.errors import ExportError
from pipeline.params import ExportParams
from pipeline.serving import deploy
from pipeline.serving.bilstm_table import gate_table_graph
from pipeline.students.base import StudentModel
from pipeline.students.bilstm import BiLSTMStudent
from pipeline.students.encoding import WORD_PATTERN, StudentEncoder, WordEncoder, WordPieceEncoder
from pipeline.students.inference import predict
from pipeline.students.transformer import TransformerEncoder

log = logging.getLogger(__name__)

# Architecture-specific variants: name -> builder of an ONNX model with the generic export's inputs and output.
SpecialisedExport = Callable[[StudentModel, str, int], onnx.ModelProto]
SPECIALISED_VARIANTS: dict[str, dict[str, SpecialisedExport]] = {
    BiLSTMStudent.architecture: {"table": gate_table_graph},
}
# Variants whose logits must equal PyTorch's (within export.parity_tolerance); others are judged by their metrics.
EXACT_VARIANTS = ("onnx", "table")
FP32_VARIANT = deploy.DEFAULT_VARIANT
INT8_VARIANT = "int8"
MODEL_FILES = {FP32_VARIANT: "model.onnx", INT8_VARIANT: "model-int8.onnx"}
TOKENIZER_FILE = "tokenizer.json"
# Sample texts traced by the exporter: two rows of different lengths, so padding is part of the trace.
TRACE_TEXTS = ("a short one", "a somewhat longer sentence to trace with padding")
WEIGHT_TYPES = {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}


class TaskForward(nn.Module):
    """One task of a StudentModel with positional tensor inputs: ``forward(*inputs) = model(task, {names: inputs})``."""

    def __init__(self, model: StudentModel, task: str, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.task, self.names = model, task, list(names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(self.task, dict(zip(self.names, inputs, strict=True)))


def trace_batch(encoder: StudentEncoder, task: Task) -> dict[str, torch.Tensor]:
    """An encoded two-row batch (rows and, for pairs, sides of different lengths) to trace the export with."""
    text_b = list(reversed(TRACE_TEXTS)) if task.is_pair else None
    return encoder.encode_inputs(list(TRACE_TEXTS), text_b).batch(np.arange(len(TRACE_TEXTS)))


def export_onnx(model: StudentModel, encoder: StudentEncoder, task: Task, path: Path, opset: int) -> list[str]:
    """Write ``model``'s ``task`` forward pass as ONNX with dynamic batch and time axes; return the input names.

    Uses the TorchScript exporter: with torch 2.13 the ``torch.export``-based one fixed the time axis of the BiLSTM's
    reversal to the traced length (an ``Expand`` that fails for any other length).
    """
    batch = trace_batch(encoder, task)
    names = list(batch)
    dynamic_axes = {name: {0: "batch"} if name.endswith(deploy.LENGTHS_SUFFIX) else {0: "batch", 1: f"time_{name}"}
                    for name in names}  # fmt: skip
    dynamic_axes[deploy.LOGITS_OUTPUT] = {0: "batch"}
    wrapper = TaskForward(model, task.name, names).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns about size checks inside nn.LSTM and about variable-length LSTMs at batch
        # sizes other than 1; check_variants runs the exported graph on padded dev batches of every size instead.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
        torch.onnx.export(
            wrapper, tuple(batch.values()), str(path), input_names=names, output_names=[deploy.LOGITS_OUTPUT],
            dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False, do_constant_folding=True,
        )  # fmt: skip
    return names


def quantize_int8(source: Path, target: Path, params: ExportParams) -> None:
    """ONNX Runtime dynamic quantisation: int8 weights of ``params.int8_ops``, activations quantised at run time."""
    quantize_dynamic(
        source, target, op_types_to_quantize=list(params.int8_ops), per_channel=params.int8_per_channel,
        weight_type=WEIGHT_TYPES[params.int8_weight_type],
    )  # fmt: skip


def standalone_tokenizer(encoder: StudentEncoder) -> tuple[Tokenizer, dict[str, str]]:
    """A ``tokenizers`` Tokenizer reproducing ``encoder`` (without truncation) and the text replacements before it."""
    # the teacher's tokenizer (with its [CLS]/[SEP] template)
    if isinstance(encoder, WordPieceEncoder | TransformerEncoder):
        tokenizer = Tokenizer.from_str(encoder.tokenizer.backend_tokenizer.to_str())
        replace = {MASK_TOKEN: encoder.tokenizer.unk_token}
    elif isinstance(encoder, WordEncoder):  # pipeline.students.encoding.tokenize_words, then the word vocabulary
        tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(encoder.words)}, unk_token=encoder.words[1]))
        tokenizer.normalizer = normalizers.Lowercase()
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN.pattern), behavior="removed", invert=True)
        replace = {}
    else:
        raise ExportError(f"no standalone tokenizer for student encoders of kind {encoder.kind!r}")
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer, replace


def encoded_pad_ids(encoder: StudentEncoder) -> dict[str, int]:
    """The padding id of each of the encoder's token arrays (e.g. ``a`` and ``b``, or ``ids`` and ``type_ids``)."""
    return encoder.encode_inputs(["x"], ["x"]).pad_ids


def export_config(
    task: Task, encoder: StudentEncoder, inputs: list[str], replace: dict[str, str], files: dict[str, str],
    source: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """The ``config.json`` read by ``pipeline.serving.deploy``."""
    arrays = [name for name in inputs if not name.endswith(deploy.LENGTHS_SUFFIX)]
    return {
        "format": deploy.FORMAT_NAME,
        "format_version": deploy.FORMAT_VERSION,
        "task": task.name,
        "labels": list(task.labels) if task.labels is not None else None,
        "pair": task.is_pair,  # read by the server (a joint encoding's inputs do not tell)
        "tokenizer": TOKENIZER_FILE,
        "max_length": encoder.max_length,
        "encoding": deploy.JOINT_ENCODING if isinstance(encoder, TransformerEncoder) else deploy.SEPARATE_ENCODING,
        "pad_ids": encoded_pad_ids(encoder),
        "unk_id": encoder.unk_id,
        "replace": replace,
        "inputs": arrays,
        "models": files,
        "source": source,
    }


def write_variants(
    model: StudentModel, encoder: StudentEncoder, task: Task, folder: Path, params: ExportParams
) -> tuple[list[str], dict[str, str]]:
    """Write the fp32 ONNX model and the requested variants into ``folder``; return input names and variant files."""
    files = dict.fromkeys([FP32_VARIANT], MODEL_FILES[FP32_VARIANT])
    inputs = export_onnx(model, encoder, task, folder / files[FP32_VARIANT], params.opset)
    specialised = SPECIALISED_VARIANTS.get(model.architecture, {})
    for variant in params.variants:
        if variant == INT8_VARIANT:
            files[variant] = MODEL_FILES[variant]
            quantize_int8(folder / files[FP32_VARIANT], folder / files[variant], params)
        elif variant in specialised:
            files[variant] = f"model-{variant}.onnx"
            onnx.save(specialised[variant](model, task.name, params.opset), folder / files[variant])
        else:
            log.info("export variant %r is not available for architecture %r: skipped", variant, model.architecture)
    return inputs, files


def write_export(
    model: StudentModel, encoder: StudentEncoder, task: Task, folder: Path, params: ExportParams, source: dict[str, Any]
) -> None:
    """Write the ONNX variants, ``tokenizer.json`` and ``config.json`` of ``task`` into an existing ``folder``."""
    inputs, files = write_variants(model, encoder, task, folder, params)
    tokenizer, replace = standalone_tokenizer(encoder)
    tokenizer.save(str(folder / TOKENIZER_FILE))
    write_json(export_config(task, encoder, inputs, replace, files, source), folder / deploy.CONFIG_FILE)


def check_variants(
    model: StudentModel, encoder: StudentEncoder, task: Task, folder: Path, splits: dict[str, pa.Table],
    params: ExportParams,
) -> dict[str, Any]:  # fmt: skip
    """Dev metrics of the PyTorch student and every exported variant, fp32 parity, the int8 metric drop."""
    config = deploy.read_config(folder)
    report: dict[str, Any] = {"pytorch": {}, "variants": {v: {"file_bytes": (folder / f).stat().st_size}
                                                         for v, f in config["models"].items()}}  # fmt: skip
    runners = {variant: deploy.ExportedStudent(folder, variant) for variant in config["models"]}
    for split, table in splits.items():
        text_a, text_b = table_texts(task, table)
        labels = table.column("label").to_numpy()
        reference = predict(model, encoder, task.name, text_a, text_b, params.check_batch_size)
        report["pytorch"][split] = compute_metrics(task, reference, labels)
        for variant, runner in runners.items():
            logits = runner.logits(text_a, text_b, params.check_batch_size)
            entry = report["variants"][variant]
            entry.setdefault("dev", {})[split] = compute_metrics(task, logits, labels)
            difference = float(np.abs(logits - reference).max()) if len(reference) else 0.0
            entry["max_abs_logit_diff"] = max(entry.get("max_abs_logit_diff", 0.0), difference)
    for variant, entry in report["variants"].items():
        if variant in EXACT_VARIANTS and entry["max_abs_logit_diff"] > params.parity_tolerance:
            raise ExportError(
                f"{folder / config['models'][variant]}: logits differ from the PyTorch student by up to "
                f"{entry['max_abs_logit_diff']:.3g} on dev (export.parity_tolerance: {params.parity_tolerance})"
            )
    if INT8_VARIANT in report["variants"]:
        report["int8_drop_points"] = int8_drop(task, report, params.max_int8_drop)
    return report


def int8_drop(task: Task, report: dict[str, Any], max_drop: float) -> dict[str, Any]:
    """Per dev split, fp32 minus int8 primary metric in points, and whether it is within ``max_drop``."""
    fp32, int8 = report["variants"][FP32_VARIANT]["dev"], report["variants"][INT8_VARIANT]["dev"]
    drops = {split: 100 * (fp32[split][task.primary_metric] - int8[split][task.primary_metric]) for split in fp32}
    within = all(drop <= max_drop for drop in drops.values())
    if not within:
        log.warning("int8 %s drops by %s points (export.max_int8_drop: %s)", task.primary_metric, drops, max_drop)
    return {"metric": task.primary_metric, "by_split": drops, "max_allowed": max_drop, "within": within}

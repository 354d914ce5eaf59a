"""Export stage: any saved student as a deployable folder that runs with onnxruntime and tokenizers only.

The folder (read by ``pipeline/serving/deploy.py``) holds:

- ``model.onnx``: the student's forward pass for one task (``torch.onnx.export`` of any ``StudentModel``), inputs
  ``<name>`` ``[batch, time]`` int64 and ``<name>_lengths`` ``[batch]`` int64 per token array of the encoder (``a``,
  and ``b`` for pairs), output ``logits`` ``[batch, outputs]``; batch and time axes are dynamic;
- ``model-int8.onnx`` (the default deployable when exported): the embedding tables int8 with one scale per row,
  the other weights (LSTM, MatMul, Gemm) by ONNX Runtime's dynamic int8 quantisation (activations quantised per call);
- architecture-specific variants with the same inputs and output, e.g. ``model-table.onnx`` for the BiLSTM
  (precomputed LSTM input gates, ``pipeline/serving/bilstm_table.py``);
- ``tokenizer.json`` (a ``tokenizers`` file reproducing the student's encoder) and ``config.json`` (task, label
  names, max length, padding/unknown ids, text replacements, input names, variant files, default variant, source).

Vocabulary pruning (``export.prune_vocabulary``): the embedding tables keep only the rows of the token ids the student
can meet (those of its transfer set, train and test texts, dev's too unless a fallback reads them, and the special
tokens), renumbered in their original order; ``tokenizer.json`` keeps every token string (so WordPiece splits words
exactly as before) but maps each one to its new id. The other tokens (``export.unseen_tokens``) either read as
``[UNK]`` (``unk``: they get ``[UNK]``'s id), or keep their own vector (``fallback``: they are numbered after the kept
ones, and the graph gathers their ids from one fallback table of their rows, ``add_fallback``). The rows a student
never trained are equal in all its tables (the BiLSTM's frozen and trainable channels), so one table serves every
channel, stored in ``export.fallback_bits`` in the int8 variant (fp32 in ``model.onnx``, exact); a row that differs
between tables (trained on another task's texts) is kept instead. A text whose tokens were all kept, or read through
the fp32 fallback, gets the unpruned student's logits; the runtime needs nothing but the rewritten tokenizer.

Every variant is checked on the dev split(s) against the PyTorch student, from raw text: fp32 variants' logits must
match within ``export.parity_tolerance``; each variant's file size, task metrics and drop in points are reported.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pyarrow as pa
import torch
from onnx import TensorProto, helper, numpy_helper
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
FP32_VARIANT = deploy.FP32_VARIANT
INT8_VARIANT = "int8"
# The variant predict and serve load by default: the first of these the folder has.
DEFAULT_VARIANTS = (INT8_VARIANT, FP32_VARIANT)
TABLE_OP = "Gather"  # in export.int8_ops: quantise the embedding tables (export.table_bits)
MEGABYTE = 1_000_000  # export.max_deployable_mb
CONTRIB_DOMAIN = "com.microsoft"  # ONNX Runtime's operators (GatherBlockQuantized)
WORD_SPLIT_MODELS = ("WordPiece", "WordLevel")  # tokenizer models whose ids can be collected word by word
MODEL_FILES = {FP32_VARIANT: "model.onnx", INT8_VARIANT: "model-int8.onnx"}
TOKENIZER_FILE = "tokenizer.json"
# Sample texts traced by the exporter: two rows of different lengths, so padding is part of the trace.
TRACE_TEXTS = ("a short one", "a somewhat longer sentence to trace with padding")
WEIGHT_TYPES = {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}
FALLBACK_TABLE = "unseen_token_rows"  # the fallback table's initialiser (export.unseen_tokens: fallback)
FALLBACK = "fallback"
MIN_BLOCK = 16  # GatherBlockQuantized's smallest block
# Blocked tables (GatherBlockQuantized, zero point 2 ** (bits - 1)): a block's scale is its largest |value| over this;
# 2 bits clip the largest values (2.5: the least squared error on MiniLM's embedding rows of the divisors 1 to 4).
BLOCK_STEPS = {2: 2.5, 4: 7}


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


def quantize_int8(source: Path, target: Path, params: ExportParams, tables: Sequence[str]) -> None:
    """int8 weights of ``params.int8_ops``: the embedding ``tables`` (``Gather``) in ``params.table_bits`` bits and
    the fallback table, if any, in ``params.fallback_bits`` (``quantize_tables``), the other ops by ONNX Runtime's
    dynamic quantisation (activations quantised per call)."""
    ops = [op for op in params.int8_ops if op != TABLE_OP]
    if ops:
        quantize_dynamic(
            source, target, op_types_to_quantize=ops, per_channel=params.int8_per_channel,
            weight_type=WEIGHT_TYPES[params.int8_weight_type],
        )  # fmt: skip
    model = onnx.load(target if ops else source)
    if TABLE_OP in params.int8_ops:
        quantize_tables(model, tables, params.table_bits, params.table_block_size)
        fallback = [init for init in model.graph.initializer if init.name == FALLBACK_TABLE]
        if fallback:
            bits, block = fallback_quantisation(params, fallback[0].dims[1])
            quantize_tables(model, [FALLBACK_TABLE], bits, block)
    onnx.save(model, target)


def fallback_quantisation(params: ExportParams, width: int) -> tuple[int, int]:
    """Bits and block of the int8 variant's fallback table: ``params.fallback_bits`` in blocks of the largest power of
    two up to ``params.fallback_block_size`` that divides ``width``; 8 bits a row where no block of at least 16 does."""
    block = params.fallback_block_size
    while block >= MIN_BLOCK and width % block:
        block //= 2
    return (params.fallback_bits, block) if params.fallback_bits in BLOCK_STEPS and block >= MIN_BLOCK else (8, 0)


def embedding_tables(model: onnx.ModelProto, vocab_rows: int) -> list[str]:
    """The initialisers of ``vocab_rows`` rows that ``Gather`` nodes read token ids from (``table_gathers``)."""
    rows = {init.name: init.dims[0] for init in model.graph.initializer if len(init.dims) == 2}
    return [table for table in table_gathers(model, list(rows)) if rows[table] == vocab_rows]


def table_gathers(model: onnx.ModelProto, tables: Sequence[str]) -> dict[str, list[onnx.NodeProto]]:
    """The ``Gather`` nodes reading each of ``tables`` (directly or through the ``Identity`` aliases the exporter makes
    of equal weights), by table, for the tables some Gather reads."""
    graph = model.graph
    alias = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Identity"}
    gathers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "Gather":
            source = node.input[0]
            while source in alias:
                source = alias[source]
            if source in tables:
                gathers.setdefault(source, []).append(node)
    return gathers


def prune_tables(model: onnx.ModelProto, kept: np.ndarray, tables: Sequence[str]) -> None:
    """Keep the rows ``kept`` (in that order) of each embedding table of ``tables``, in place."""
    for init in model.graph.initializer:
        if init.name in tables:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[kept], init.name))


def untrained_rows_differ(model: onnx.ModelProto, tables: Sequence[str], kept: np.ndarray) -> np.ndarray:
    """The ids outside ``kept`` whose rows differ between the embedding ``tables`` (one fallback table cannot stand
    for all of them: e.g. the trainable channel's rows of tokens of another task's texts)."""
    initializers = {init.name: init for init in model.graph.initializer}
    values = [numpy_helper.to_array(initializers[table]) for table in tables]
    if len({table.shape for table in values}) > 1:
        shapes = ", ".join(f"{table} {values[i].shape}" for i, table in enumerate(tables))
        raise ExportError(f"export.unseen_tokens: {FALLBACK}: embedding tables of different shapes ({shapes})")
    differ = np.zeros(len(values[0]), dtype=bool)
    for table in values[1:]:
        differ |= (table != values[0]).any(axis=1)
    differ[kept] = False
    return np.flatnonzero(differ)


def add_fallback(model: onnx.ModelProto, tables: Sequence[str], kept: int, rows: np.ndarray) -> None:
    """Read the token ids from ``kept`` on (past the rows of the pruned ``tables``) from a fallback table of ``rows``,
    in place: each ``Gather`` of a table becomes ``Where(ids < kept, Gather(table, min(ids, kept - 1)),
    Gather(fallback, max(ids - kept, 0)))``, the fallback look-up shared by the tables reading the same ids."""
    graph = model.graph
    gathers = {node.output[0] for nodes in table_gathers(model, tables).values() for node in nodes}
    graph.initializer.extend([
        numpy_helper.from_array(rows, FALLBACK_TABLE),
        numpy_helper.from_array(np.array(kept, dtype=np.int64), f"{FALLBACK_TABLE}_first_id"),
        numpy_helper.from_array(np.array(kept - 1, dtype=np.int64), f"{FALLBACK_TABLE}_last_kept_id"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), f"{FALLBACK_TABLE}_zero"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{FALLBACK_TABLE}_last_axis"),
    ])  # fmt: skip
    routed: set[str] = set()
    nodes = []
    for node in graph.node:
        if node.op_type != "Gather" or node.output[0] not in gathers:
            nodes.append(node)
            continue
        ids, out = node.input[1], node.output[0]
        if ids not in routed:  # once per id tensor: which ids are kept, and the fallback rows of the others
            routed.add(ids)
            nodes += [
                helper.make_node("Less", [ids, f"{FALLBACK_TABLE}_first_id"], [f"{ids}_is_kept"]),
                helper.make_node("Unsqueeze", [f"{ids}_is_kept", f"{FALLBACK_TABLE}_last_axis"], [f"{ids}_kept_rows"]),
                helper.make_node("Min", [ids, f"{FALLBACK_TABLE}_last_kept_id"], [f"{ids}_kept_ids"]),
                helper.make_node("Sub", [ids, f"{FALLBACK_TABLE}_first_id"], [f"{ids}_shifted"]),
                helper.make_node("Max", [f"{ids}_shifted", f"{FALLBACK_TABLE}_zero"], [f"{ids}_fallback_ids"]),
                helper.make_node("Gather", [FALLBACK_TABLE, f"{ids}_fallback_ids"], [f"{ids}_fallback"]),
            ]  # fmt: skip
        kept_gather = onnx.NodeProto()
        kept_gather.CopyFrom(node)
        kept_gather.input[1], kept_gather.output[0] = f"{ids}_kept_ids", f"{out}_kept"
        nodes += [kept_gather, helper.make_node("Where", [f"{ids}_kept_rows", f"{out}_kept", f"{ids}_fallback"], [out])]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)


def quantize_tables(model: onnx.ModelProto, tables: Sequence[str], bits: int = 8, block: int = 32) -> None:
    """Store the embedding ``tables`` in ``bits`` bits, symmetric, in place, so that a looked-up row is dequantised
    alone: 8 bits with one fp32 scale per row (``Gather(int8) -> Cast -> Mul(Gather(scales))``), or 4 (2) bits with one
    fp32 scale per ``block`` columns (ONNX Runtime's ``GatherBlockQuantized``, two (four) values a byte)."""
    graph = model.graph
    tables = table_gathers(model, tables)
    gathers = {node.output[0]: table for table, nodes in tables.items() for node in nodes}  # by output: unique
    initializers = {init.name: init for init in graph.initializer}
    for table in tables:
        values = numpy_helper.to_array(initializers[table]).astype(np.float32)
        graph.initializer.remove(initializers[table])
        graph.initializer.extend(quantized_table(values, table, bits, block))
    nodes = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in tables:
            continue  # an alias of a table: its Gathers read the quantised table directly
        if node.op_type != "Gather" or node.output[0] not in gathers:
            nodes.append(node)
            continue
        table, ids, out = gathers[node.output[0]], node.input[1], node.output[0]
        if bits in BLOCK_STEPS:
            nodes.append(helper.make_node(
                "GatherBlockQuantized", [f"{table}_int{bits}", ids, f"{table}_scale"], [out], domain=CONTRIB_DOMAIN,
                gather_axis=0, quantize_axis=1, block_size=block, bits=bits,
            ))  # fmt: skip
            continue
        nodes += [
            helper.make_node("Gather", [f"{table}_int8", ids], [f"{out}_int8"]),
            helper.make_node("Cast", [f"{out}_int8"], [f"{out}_float"], to=TensorProto.FLOAT),
            helper.make_node("Gather", [f"{table}_scale", ids], [f"{out}_scale"]),
            helper.make_node("Mul", [f"{out}_float", f"{out}_scale"], [out]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    if bits in BLOCK_STEPS and not any(opset.domain == CONTRIB_DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    onnx.checker.check_model(model)


def quantized_table(values: np.ndarray, name: str, bits: int, block: int) -> list[onnx.TensorProto]:
    """The initialisers of table ``name`` in ``bits`` bits (``quantize_tables``): values and scales."""
    if bits == 8:
        scale = np.abs(values).max(axis=1, keepdims=True) / 127
        scale[scale == 0] = 1
        quantized = np.clip(np.round(values / scale), -127, 127).astype(np.int8)
        return [numpy_helper.from_array(quantized, f"{name}_int8"), numpy_helper.from_array(scale, f"{name}_scale")]
    rows, width = values.shape
    if width % block:
        raise ExportError(f"export.table_block_size: {block} does not divide the embedding width {width} of {name}")
    blocks = values.reshape(rows, width // block, block)
    scale = np.abs(blocks).max(axis=2) / BLOCK_STEPS[bits]
    scale[scale == 0] = 1
    # unsigned with the op's default zero point (8 for 4 bits), 8 // bits columns a byte (the first in the low bits)
    zero, per_byte = 2 ** (bits - 1), 8 // bits
    unsigned = np.clip(np.round(blocks / scale[..., None]), -zero, zero - 1) + zero
    unsigned = unsigned.astype(np.uint8).reshape(rows, width)
    packed = np.zeros((rows, width // per_byte), dtype=np.uint8)
    for k in range(per_byte):
        packed |= unsigned[:, k::per_byte] << (bits * k)
    return [numpy_helper.from_array(packed, f"{name}_int{bits}"), numpy_helper.from_array(scale, f"{name}_scale")]


def kept_token_ids(tokenizer: Tokenizer, replace: dict[str, str], texts: Iterable[str], always: Iterable[int],
                   special_tokens: bool, by_word: bool = False, chunk: int = 8192) -> np.ndarray:  # fmt: skip
    """Sorted unique ids ``tokenizer`` gives ``texts`` (after ``replace``; with the special tokens of its template
    if ``special_tokens``), and the ids ``always``.

    ``by_word``: tokenise each distinct whitespace-separated word once instead of each text (far fewer calls on a
    large transfer set); the same ids for tokenizers that split at whitespace and normalise character by character
    (WordPiece, the word vocabulary), so other models (BPE's leading-space tokens) tokenise whole texts."""
    kept = set(always)
    if by_word and type(tokenizer.model).__name__ in WORD_SPLIT_MODELS:
        words: set[str] = set()
        for text in texts:
            words.update(text.split())
        unique = list(words)
    else:
        unique = list(dict.fromkeys(texts))
    for start in range(0, len(unique), chunk):
        batch = [_replaced(text, replace) for text in unique[start : start + chunk]]
        for encoding in tokenizer.encode_batch(batch, add_special_tokens=special_tokens):
            kept.update(encoding.ids)
    return np.array(sorted(kept), dtype=np.int64)


def _replaced(text: str, replace: dict[str, str]) -> str:
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def id_map(kept: np.ndarray, vocab_rows: int, unk_id: int, fallback: bool = False) -> np.ndarray:
    """New id of every old id: its position in ``kept``; for the ids not kept, the unknown token's, or (``fallback``)
    ``len(kept)`` on, in their original order (their rows in the fallback table)."""
    if fallback:
        new = np.empty(vocab_rows, dtype=np.int64)
        new[unseen_ids(kept, vocab_rows)] = np.arange(len(kept), vocab_rows)
    else:
        new = np.full(vocab_rows, int(np.searchsorted(kept, unk_id)), dtype=np.int64)
    new[kept] = np.arange(len(kept))
    return new


def unseen_ids(kept: np.ndarray, vocab_rows: int) -> np.ndarray:
    """The ids of ``range(vocab_rows)`` not in ``kept``, sorted."""
    return np.setdiff1d(np.arange(vocab_rows), kept, assume_unique=True)


def prune_tokenizer(tokenizer: Tokenizer, new_ids: np.ndarray) -> str:
    """The JSON of ``tokenizer`` with every id (vocabulary, added tokens, template special tokens) replaced by
    ``new_ids[id]``: the same token strings and splits, each token with its new id (``id_map``).

    Without a fallback many tokens share the unknown token's id, which ``Tokenizer.save`` cannot write (it lists the
    vocabulary by id): write this JSON as it is."""
    data = json.loads(tokenizer.to_str())
    if not isinstance(data["model"].get("vocab"), dict):
        raise ExportError(
            f"vocabulary pruning: a {data['model']['type']} tokenizer has no token-to-id vocabulary to renumber "
            "(set export.prune_vocabulary: false)"
        )
    data["model"]["vocab"] = {token: int(new_ids[i]) for token, i in data["model"]["vocab"].items()}
    for added in data.get("added_tokens") or []:
        added["id"] = int(new_ids[added["id"]])

    def remap_special(node: Any) -> None:
        if isinstance(node, dict):
            for token in (node.get("special_tokens") or {}).values():  # TemplateProcessing
                token["ids"] = [int(new_ids[i]) for i in token["ids"]]
            for key in ("cls", "sep"):  # BertProcessing, RobertaProcessing: [token, id]
                if isinstance(node.get(key), list):
                    node[key][1] = int(new_ids[node[key][1]])
            for value in node.values():
                remap_special(value)
        elif isinstance(node, list):
            for value in node:
                remap_special(value)

    remap_special(data.get("post_processor"))
    return json.dumps(data, ensure_ascii=False)


def standalone_tokenizer(encoder: StudentEncoder) -> tuple[Tokenizer, dict[str, str]]:
    """A ``tokenizers`` Tokenizer reproducing ``encoder`` (without truncation) and the text replacements before it."""
    # the teacher's tokenizer (with its [CLS]/[SEP] template)
    if isinstance(encoder, WordPieceEncoder | TransformerEncoder):
        tokenizer = Tokenizer.from_str(encoder.tokenizer.backend_tokenizer.to_str())
    elif isinstance(encoder, WordEncoder):  # pipeline.students.encoding.tokenize_words, then the word vocabulary
        tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(encoder.words)}, unk_token=encoder.words[1]))
        tokenizer.normalizer = normalizers.Lowercase()
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN.pattern), behavior="removed", invert=True)
    else:
        raise ExportError(f"no standalone tokenizer for student encoders of kind {encoder.kind!r}")
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer, text_replacements(encoder)


def text_replacements(encoder: StudentEncoder) -> dict[str, str]:
    """The text replacements before ``standalone_tokenizer``: the transfer set's mask token reads as the unknown one
    for WordPiece students (word-vocabulary students have none)."""
    if isinstance(encoder, WordPieceEncoder | TransformerEncoder):
        return {MASK_TOKEN: encoder.tokenizer.unk_token}
    return {}


def encoded_pad_ids(encoder: StudentEncoder) -> dict[str, int]:
    """The padding id of each of the encoder's token arrays (e.g. ``a`` and ``b``, or ``ids`` and ``type_ids``)."""
    return encoder.encode_inputs(["x"], ["x"]).pad_ids


def token_arrays(encoder: StudentEncoder, inputs: list[str]) -> tuple[list[str], list[str]]:
    """The model's token arrays (no lengths), and those of them holding vocabulary ids (not segment ids)."""
    arrays = [name for name in inputs if not name.endswith(deploy.LENGTHS_SUFFIX)]
    return arrays, arrays[:1] if isinstance(encoder, TransformerEncoder) else arrays


def export_config(
    task: Task, encoder: StudentEncoder, inputs: list[str], replace: dict[str, str], files: dict[str, str],
    source: dict[str, Any], new_ids: np.ndarray | None = None, vocabulary: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The ``config.json`` read by ``pipeline.serving.deploy`` (ids after pruning, if ``new_ids`` maps them;
    ``vocabulary``: the pruned tables' rows, ``pruned_vocabulary``)."""
    arrays, vocabulary_arrays = token_arrays(encoder, inputs)
    pad_ids, unk_id = encoded_pad_ids(encoder), encoder.unk_id
    if new_ids is not None:
        pad_ids = {name: int(new_ids[pad]) if name in vocabulary_arrays else pad for name, pad in pad_ids.items()}
        unk_id = int(new_ids[unk_id])
    return {
        "format": deploy.FORMAT_NAME,
        "format_version": deploy.FORMAT_VERSION,
        "task": task.name,
        "labels": list(task.labels) if task.labels is not None else None,
        "pair": task.is_pair,  # read by the server (a joint encoding's inputs do not tell)
        "tokenizer": TOKENIZER_FILE,
        "max_length": encoder.max_length,
        "encoding": deploy.JOINT_ENCODING if isinstance(encoder, TransformerEncoder) else deploy.SEPARATE_ENCODING,
        "pad_ids": pad_ids,
        "unk_id": unk_id,
        "replace": replace,
        "inputs": arrays,
        "models": files,
        "default_variant": next(variant for variant in DEFAULT_VARIANTS if variant in files),
        "vocabulary": {"rows": encoder.vocab_size, "kept": encoder.vocab_size, **(vocabulary or {})},
        "source": source,
    }


def write_variants(
    model: StudentModel, encoder: StudentEncoder, task: Task, folder: Path, params: ExportParams,
    kept: np.ndarray | None = None,
) -> tuple[list[str], dict[str, str], np.ndarray | None, np.ndarray | None, dict[str, Any]]:  # fmt: skip
    """Write the fp32 ONNX model, ``tokenizer.json`` and the requested variants into ``folder`` (embedding tables cut
    to the rows ``kept``, if given, the others read as ``params.unseen_tokens`` says; the int8 variant within
    ``export.max_deployable_mb``); return input names, variant files, the kept ids (with a fallback, also those whose
    rows differ between the tables, ``untrained_rows_differ``), the tokenizer's old -> new id map and config.json's
    ``vocabulary`` entries (the int8 tables' bits among them)."""
    files = dict.fromkeys([FP32_VARIANT], MODEL_FILES[FP32_VARIANT])
    inputs = export_onnx(model, encoder, task, folder / files[FP32_VARIANT], params.opset)
    fp32 = onnx.load(folder / files[FP32_VARIANT])
    tables = embedding_tables(fp32, encoder.vocab_size)
    vocabulary: dict[str, Any] = {}
    fallback: np.ndarray | None = None  # the rows of the fallback table (export.unseen_tokens: fallback)
    order = kept  # the rows of the tables in the tokenizer's new order (the specialised variants' tables too)
    if kept is not None:
        if not tables:
            raise ExportError(f"vocabulary pruning: no embedding table of {encoder.vocab_size} rows read by a Gather")
        if params.unseen_tokens == FALLBACK:
            kept = np.union1d(kept, untrained_rows_differ(fp32, tables, kept))
            unseen = unseen_ids(kept, encoder.vocab_size)
            fallback = numpy_helper.to_array(next(i for i in fp32.graph.initializer if i.name == tables[0]))[unseen]
            order = np.concatenate([kept, unseen])  # a specialised variant's tables keep every row
        prune_tables(fp32, kept, tables)
        if fallback is not None and len(fallback):
            add_fallback(fp32, tables, len(kept), fallback)
        onnx.save(fp32, folder / files[FP32_VARIANT])
    new_ids = write_tokenizer(encoder, folder, kept, params)
    specialised = SPECIALISED_VARIANTS.get(model.architecture, {})
    for variant in params.variants:
        if variant == INT8_VARIANT:
            files[variant] = MODEL_FILES[variant]
            has_fallback = fallback is not None and len(fallback) > 0
            params = quantize_int8_within(folder, files[FP32_VARIANT], files[variant], params, tables, has_fallback)
        elif variant in specialised:
            files[variant] = f"model-{variant}.onnx"
            graph = specialised[variant](model, task.name, params.opset)
            if order is not None:
                prune_tables(graph, order, embedding_tables(graph, encoder.vocab_size))
            onnx.save(graph, folder / files[variant])
        else:
            log.info("export variant %r is not available for architecture %r: skipped", variant, model.architecture)
    if kept is not None:
        vocabulary = pruned_vocabulary(params, len(kept), None if fallback is None else fallback.shape)
    if INT8_VARIANT in files and TABLE_OP in params.int8_ops:
        vocabulary["int8_table_bits"] = params.table_bits
    return inputs, files, kept, new_ids, vocabulary


def write_tokenizer(
    encoder: StudentEncoder, folder: Path, kept: np.ndarray | None, params: ExportParams
) -> np.ndarray | None:
    """Write ``tokenizer.json`` (ids renumbered to the ``kept`` rows, if pruned); return the old -> new id map."""
    tokenizer, _ = standalone_tokenizer(encoder)
    if kept is None:
        tokenizer.save(str(folder / TOKENIZER_FILE))
        return None
    new_ids = id_map(kept, encoder.vocab_size, encoder.unk_id, params.unseen_tokens == FALLBACK)
    (folder / TOKENIZER_FILE).write_text(prune_tokenizer(tokenizer, new_ids), encoding="utf-8")
    return new_ids


def coarser_int8(params: ExportParams, has_fallback: bool) -> list[ExportParams]:
    """``params``, then each coarser int8 setting ``export.max_deployable_mb`` may fall back to, in order: 4-bit
    kept tables, then (if the model has a fallback table) a 2-bit fallback table."""
    steps = [params]
    if params.table_bits > 4:
        steps.append(steps[-1].model_copy(update={"table_bits": 4}))
    if has_fallback and params.fallback_bits > 2:
        steps.append(steps[-1].model_copy(update={"fallback_bits": 2}))
    return steps


def quantize_int8_within(
    folder: Path, source: str, target: str, params: ExportParams, tables: Sequence[str], has_fallback: bool
) -> ExportParams:
    """Write the int8 variant (``quantize_int8``) at the finest setting of ``coarser_int8`` whose deployable
    (``target`` and ``tokenizer.json``) fits ``params.max_deployable_mb``; if none does, at ``params`` as set, with a
    warning (coarser tables that miss the budget anyway would only cost accuracy); return the setting used."""
    steps = coarser_int8(params, has_fallback) if params.max_deployable_mb is not None else [params]
    for step in steps:
        quantize_int8(folder / source, folder / target, step, tables)
        size = deployable_bytes(folder, target)
        if params.max_deployable_mb is None or size <= params.max_deployable_mb * MEGABYTE:
            if step is not params:
                log.info("%s: %d-bit tables, %d-bit fallback to fit export.max_deployable_mb: %s (%.1f MB)",
                         folder / target, step.table_bits, step.fallback_bits, params.max_deployable_mb,
                         size / MEGABYTE)  # fmt: skip
            return step
    if step is not params:
        quantize_int8(folder / source, folder / target, params, tables)
    log.warning("%s: over export.max_deployable_mb: %s even with %d-bit tables and a %d-bit fallback (%.1f MB): "
                "kept at %d-bit tables and a %d-bit fallback (%.1f MB)", folder / target, params.max_deployable_mb,
                step.table_bits, step.fallback_bits, size / MEGABYTE, params.table_bits, params.fallback_bits,
                deployable_bytes(folder, target) / MEGABYTE)  # fmt: skip
    return params


def deployable_bytes(folder: Path, model_file: str) -> int:
    """Bytes of a variant's deployable: its ONNX file and the tokenizer (config.json adds a few kilobytes)."""
    return (folder / model_file).stat().st_size + (folder / TOKENIZER_FILE).stat().st_size


def pruned_vocabulary(params: ExportParams, kept: int, fallback: tuple[int, ...] | None) -> dict[str, Any]:
    """config.json's ``vocabulary`` entries of a pruned export: rows kept, how the others read (``unseen_tokens``),
    and the ``fallback`` table's rows and, in the int8 variant, its bits and block (0: one scale a row)."""
    entry: dict[str, Any] = {"kept": kept, "unseen_tokens": params.unseen_tokens}
    if fallback is not None:
        entry["fallback_rows"] = fallback[0]
        if fallback[0] and INT8_VARIANT in params.variants and TABLE_OP in params.int8_ops:
            entry["fallback_int8_bits"], entry["fallback_int8_block"] = fallback_quantisation(params, fallback[1])
    return entry


def vocabulary_ids(encoder: StudentEncoder, texts: Iterable[str], by_word: bool = False) -> np.ndarray:
    """The sorted token ids the student meets in ``texts``, with its padding, unknown and template special tokens
    (``by_word``: tokenised word by word, ``kept_token_ids``)."""
    tokenizer, replace = standalone_tokenizer(encoder)
    joint = isinstance(encoder, TransformerEncoder)
    pads = encoded_pad_ids(encoder)
    always = [encoder.unk_id, *(pads[name] for name in (["ids"] if joint else pads))]
    return kept_token_ids(tokenizer, replace, texts, always, special_tokens=joint, by_word=by_word)


def write_export(
    model: StudentModel, encoder: StudentEncoder, task: Task, folder: Path, params: ExportParams,
    source: dict[str, Any], kept: np.ndarray | None = None,
) -> np.ndarray | None:  # fmt: skip
    """Write the ONNX variants, ``tokenizer.json`` and ``config.json`` of ``task`` into an existing ``folder``;
    with ``kept`` (sorted token ids, ``vocabulary_ids``), only those rows of the embedding tables (the others as
    ``params.unseen_tokens`` says). Return the ids kept (``write_variants``)."""
    inputs, files, kept, new_ids, vocabulary = write_variants(model, encoder, task, folder, params, kept)
    config = export_config(task, encoder, inputs, text_replacements(encoder), files, source, new_ids, vocabulary)
    write_json(config, folder / deploy.CONFIG_FILE)
    return kept


def check_variants(
    model: StudentModel, encoder: StudentEncoder, task: Task, folder: Path, splits: dict[str, pa.Table],
    params: ExportParams, seen: np.ndarray | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Dev metrics of the PyTorch student and every exported variant (file size, metrics, drop in points from the
    PyTorch student), fp32 parity (of the pruned vocabulary too), the int8 drop. ``seen``: the sorted token ids of
    the student's training texts (exported numbering), to report how dev reads with the tokens outside them mapped to
    the unknown one, and with a fallback table (``export.unseen_tokens: fallback``, the tables kept to ``seen``: dev's
    other tokens read through it), as exported (``unseen_tokens``)."""
    config = deploy.read_config(folder)
    variants = {
        variant: {"file_bytes": (folder / file).stat().st_size, "deployable_bytes": deployable_bytes(folder, file)}
        for variant, file in config["models"].items()
    }
    report: dict[str, Any] = {
        "default_variant": config["default_variant"], "vocabulary": config["vocabulary"],
        "folder_bytes": sum(path.stat().st_size for path in folder.iterdir() if path.is_file()),
        "pytorch": {}, "variants": variants,
    }  # fmt: skip
    runners = {variant: deploy.ExportedStudent(folder, variant) for variant in config["models"]}
    for split, table in splits.items():
        text_a, text_b = table_texts(task, table)
        labels = table.column("label").to_numpy()
        reference = predict(model, encoder, task.name, text_a, text_b, params.check_batch_size)
        report["pytorch"][split] = compute_metrics(task, reference, labels)
        for variant, runner in runners.items():
            logits = runner.logits(text_a, text_b, params.check_batch_size)
            entry = report["variants"][variant]
            entry.setdefault("dev", {})[split] = metrics = compute_metrics(task, logits, labels)
            primary = task.primary_metric
            entry.setdefault("drop_points", {})[split] = 100 * (report["pytorch"][split][primary] - metrics[primary])
            difference = float(np.abs(logits - reference).max()) if len(reference) else 0.0
            entry["max_abs_logit_diff"] = max(entry.get("max_abs_logit_diff", 0.0), difference)
        if seen is not None:
            report.setdefault("unseen_tokens", {})[split] = unseen = unseen_tokens(runners, task, table, seen,
                                                                                   params.check_batch_size)  # fmt: skip
            if config["vocabulary"].get("fallback_rows"):
                unseen["metrics_unseen_by_fallback"] = {variant: report["variants"][variant]["dev"][split]
                                                       for variant in runners}  # fmt: skip
    for variant, entry in report["variants"].items():
        if variant in EXACT_VARIANTS and entry["max_abs_logit_diff"] > params.parity_tolerance:
            raise ExportError(
                f"{folder / config['models'][variant]}: logits differ from the PyTorch student by up to "
                f"{entry['max_abs_logit_diff']:.3g} on dev (export.parity_tolerance: {params.parity_tolerance})"
            )
    if INT8_VARIANT in report["variants"]:
        report["int8_drop_points"] = int8_drop(task, report, params.max_int8_drop)
    return report


def unseen_tokens(
    runners: dict[str, deploy.ExportedStudent], task: Task, table: pa.Table, seen: np.ndarray, batch_size: int
) -> dict[str, Any]:
    """Tokens of ``table`` outside the ids ``seen`` (the exported ids of the training texts), and each variant's
    metrics with those read as the unknown token: what pruning to the training texts alone costs this split without
    a fallback."""
    text_a, text_b = table_texts(task, table)
    runner = next(iter(runners.values()))  # the variants share the tokenizer
    vocabulary_arrays = runner.inputs[:1] if runner.joint else runner.inputs
    allowed = set(seen.tolist())
    total = outside = 0
    mapped = []
    for name, column in zip(runner.inputs, runner.encode(text_a, text_b), strict=True):
        if name in vocabulary_arrays:
            total += sum(len(row) for row in column)
            outside += sum(token not in allowed for row in column for token in row)
            column = [[token if token in allowed else runner.unk_id for token in row] for row in column]
        mapped.append(column)
    labels = table.column("label").to_numpy()
    metrics = {variant: compute_metrics(task, each.logits_from_ids(mapped, batch_size), labels)
               for variant, each in runners.items()}  # fmt: skip
    return {"tokens": total, "outside_training": outside, "metrics_unseen_as_unknown": metrics}


def int8_drop(task: Task, report: dict[str, Any], max_drop: float) -> dict[str, Any]:
    """Per dev split, fp32 minus int8 primary metric in points, and whether it is within ``max_drop``."""
    fp32, int8 = report["variants"][FP32_VARIANT]["dev"], report["variants"][INT8_VARIANT]["dev"]
    drops = {split: 100 * (fp32[split][task.primary_metric] - int8[split][task.primary_metric]) for split in fp32}
    within = all(drop <= max_drop for drop in drops.values())
    if not within:
        log.warning("int8 %s drops by %s points (export.max_int8_drop: %s)", task.primary_metric, drops, max_drop)
    return {"metric": task.primary_metric, "by_split": drops, "max_allowed": max_drop, "within": within}

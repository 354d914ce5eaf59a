"""Run an exported student folder with onnxruntime and tokenizers only (no torch, no other module of this package).

The folder written by the export stage holds ``config.json`` (task, label names, tokenizer settings, input names,
one ONNX file per variant), ``tokenizer.json`` and the ONNX files. This module is the reference reader of that
layout; it imports nothing from the rest of the repository so that it documents what a deployment needs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

CONFIG_FILE = "config.json"
FORMAT_NAME = "distillery-student-onnx"
FORMAT_VERSION = 1
LOGITS_OUTPUT = "logits"
LENGTHS_SUFFIX = "_lengths"
FP32_VARIANT = "onnx"  # always exported: the reference the other variants are checked against
JOINT_ENCODING = "joint"  # config "encoding": one sequence with special tokens and segment ids (Transformer students)
SEPARATE_ENCODING = "separate"  # one token list per text, without special tokens (LSTM students)


def read_config(folder: Path | str) -> dict[str, Any]:
    """The ``config.json`` of an exported student folder, checked for its format."""
    path = Path(folder) / CONFIG_FILE
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("format") != FORMAT_NAME or config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a {FORMAT_NAME} v{FORMAT_VERSION} config")
    return config


def default_variant(config: dict[str, Any]) -> str:
    """The variant to load when none is named: the folder's ``default_variant`` (fp32 for folders without one)."""
    return config.get("default_variant", FP32_VARIANT)


def session_options(threads: int | None) -> ort.SessionOptions:
    """Sequential execution with ``threads`` intra-op threads (None: onnxruntime's default)."""
    options = ort.SessionOptions()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


class ExportedStudent:
    """One variant (``onnx``, ``int8``, ``table``, ...) of an exported student, with its tokenizer; ``variant=None``
    loads the folder's default variant (``default_variant`` in config.json)."""

    def __init__(self, folder: Path | str, variant: str | None = None, threads: int | None = None) -> None:
        self.folder = Path(folder)
        self.config = read_config(self.folder)
        models = self.config["models"]
        variant = default_variant(self.config) if variant is None else variant
        if variant not in models:
            raise ValueError(f"{self.folder}: no variant {variant!r}; exported: {', '.join(models)}")
        self.variant = variant
        self.tokenizer = Tokenizer.from_file(str(self.folder / self.config["tokenizer"]))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.session = ort.InferenceSession(
            str(self.folder / models[variant]), session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.inputs: list[str] = self.config["inputs"]
        self.max_length: int = self.config["max_length"]
        self.pad_ids: dict[str, int] = self.config["pad_ids"]
        self.unk_id: int = self.config["unk_id"]
        self.replacements: dict[str, str] = self.config["replace"]
        self.session_inputs = {node.name for node in self.session.get_inputs()}  # a graph may not read every length
        # "separate": one token list per text (inputs a, b); "joint": "[CLS] a [SEP] b [SEP]" (inputs ids, type_ids)
        self.joint = self.config["encoding"] == JOINT_ENCODING

    @property
    def labels(self) -> list[str] | None:
        """Class names in logit order; None for a regression task (one output, the score)."""
        return self.config["labels"]

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Untruncated token ids per text (an empty result becomes the unknown token, as in training)."""
        texts = [self._normalise(text) for text in texts]
        # encode_batch_fast: without character offsets (unused here), cheaper than encode even for one text
        encodings = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        return [encoding.ids or [self.unk_id] for encoding in encodings]

    def encode(
        self, text_a: Sequence[str], text_b: Sequence[str] | None, truncate: bool = True
    ) -> list[list[list[int]]]:
        """Token ids per model input (``ids[k][row]``): a list per text, or for a joint encoding the ids of
        ``[CLS] a [SEP] (b [SEP])`` and their segment ids (truncated longest-first to ``max_length``)."""
        if not self.joint:
            return [self.token_ids(column) for column in ([text_a] if text_b is None else [text_a, text_b])]
        texts = [self._normalise(text) for text in text_a]
        pairs = texts if text_b is None else list(zip(texts, [self._normalise(text) for text in text_b], strict=True))
        if truncate:
            self.tokenizer.enable_truncation(self.max_length, strategy="longest_first")
        try:
            encodings = self.tokenizer.encode_batch_fast(pairs, add_special_tokens=True)
        finally:
            self.tokenizer.no_truncation()
        return [[encoding.ids for encoding in encodings], [encoding.type_ids for encoding in encodings]]

    def token_counts(self, text_a: Sequence[str], text_b: Sequence[str] | None) -> np.ndarray:
        """Untruncated tokens per row: of the longer text, or of the joint sequence."""
        return np.max([[len(ids) for ids in column] for column in self.encode(text_a, text_b, truncate=False)], axis=0)

    def _normalise(self, text: str) -> str:
        for old, new in self.replacements.items():
            text = text.replace(old, new)
        return text

    def logits_from_ids(self, ids: Sequence[Sequence[Sequence[int]]], batch_size: int) -> np.ndarray:
        """Logits ``[n, outputs]`` for token ids given per input (``ids[k][row]``), truncated to ``max_length``.

        Rows are batched by length (longest first) and right-padded; the result is in input order.
        """
        if len(ids) != len(self.inputs):
            raise ValueError(
                f"expected {len(self.inputs)} token lists per row ({', '.join(self.inputs)}), got {len(ids)}"
            )
        rows = len(ids[0])
        if rows and (rows == 1 or batch_size == 1):  # a row a call: no sorting, padding or scattering (a third of
            # a static student's call at batch 1)
            return np.concatenate(
                [self._run_row([column[row][: self.max_length] for column in ids]) for row in range(rows)]
            )
        lengths = np.array([[min(len(row), self.max_length) for row in column] for column in ids], dtype=np.int64)
        order = np.argsort(-lengths.max(axis=0), kind="stable")
        out: np.ndarray | None = None
        for start in range(0, rows, batch_size):
            batch = order[start : start + batch_size]
            feed = {}
            for name, column, column_lengths in zip(self.inputs, ids, lengths, strict=True):
                batch_lengths = column_lengths[batch]
                padded = np.full((len(batch), int(batch_lengths.max())), self.pad_ids[name], dtype=np.int64)
                for i, row in enumerate(batch):
                    padded[i, : batch_lengths[i]] = column[row][: self.max_length]
                feed[name], feed[name + LENGTHS_SUFFIX] = padded, batch_lengths
            logits = self.session.run([LOGITS_OUTPUT], {k: v for k, v in feed.items() if k in self.session_inputs})[0]
            if out is None:
                out = np.empty((rows, logits.shape[1]), dtype=np.float32)
            out[batch] = logits
        return out if out is not None else np.empty((0, max(len(self.labels or []), 1)), dtype=np.float32)

    def _run_row(self, row: Sequence[Sequence[int]]) -> np.ndarray:
        """Logits ``[1, outputs]`` of one row: its token ids per input, already truncated."""
        feed = {}
        for name, ids in zip(self.inputs, row, strict=True):
            feed[name] = np.array([ids], dtype=np.int64)
            feed[name + LENGTHS_SUFFIX] = np.array([len(ids)], dtype=np.int64)
        return self.session.run([LOGITS_OUTPUT], {k: v for k, v in feed.items() if k in self.session_inputs})[0]

    def logits(self, text_a: Sequence[str], text_b: Sequence[str] | None = None, batch_size: int = 256) -> np.ndarray:
        """Logits for raw texts (a second list for sentence-pair tasks), tokenisation included."""
        return self.logits_from_ids(self.encode(text_a, text_b), batch_size)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (class probabilities)."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)

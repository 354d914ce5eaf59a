"""Student input representations: text -> token ids, plus the initial embedding matrix.

Three options (``bilstm.embeddings``):

- ``wordpiece``: the teacher's WordPiece tokenizer (no special tokens) and its word-embedding matrix;
- ``word``: a lowercased word vocabulary built from the training texts, random init;
- ``vectors``: the same word vocabulary, initialised from a word-vector text file (word2vec/GloVe format).

Masked words (the literal ``[MASK]`` written by augmentation) always map to the student's unknown-word id.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from pipeline.data.schema import MASK_TOKEN
from pipeline.params import EmbeddingParams

log = logging.getLogger(__name__)
PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
# Word tokens: the (lowercased) mask marker, runs of word characters, or single punctuation marks.
WORD_PATTERN = re.compile(r"\[mask\]|\w+|[^\w\s]")
# Standard deviation of the normal init for words without a pretrained vector.
RANDOM_INIT_STD = 0.1
# Texts tokenised per call when encoding into a TokenArray (bounds the memory of intermediate Python lists).
ENCODE_CHUNK = 100_000
# Suffix of the teacher's word-embedding tensor name in its safetensors checkpoint: BERT's and MPNet's, bare
# (``embeddings.…``) or under a classifier's base-model prefix (``bert.embeddings.…``, ``mpnet.embeddings.…``).
WORD_EMBEDDINGS_KEY = "embeddings.word_embeddings.weight"
ENCODER_CONFIG = "encoder.json"
WORD_VOCAB_FILE = "words.txt"


@dataclass(frozen=True)
class TokenArray:
    """Variable-length id sequences stored flat: compact for millions of rows, fast to batch."""

    values: np.ndarray  # int64, all sequences concatenated
    offsets: np.ndarray  # int64 [n + 1]; sequence i is values[offsets[i]:offsets[i + 1]]

    @classmethod
    def from_lists(cls, sequences: Sequence[Sequence[int]]) -> TokenArray:
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        values = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=int(offsets[-1]))
        return cls(values, offsets)

    @classmethod
    def concat(cls, parts: Sequence[TokenArray]) -> TokenArray:
        starts = np.cumsum([0] + [len(p.values) for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, starts, strict=True)])
        return cls(np.concatenate([p.values for p in parts]), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(self, rows: np.ndarray, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ids ``[len(rows), max_len]`` and lengths (int64, CPU) of the given rows."""
        lengths = self.lengths[rows]
        positions = np.arange(lengths.max())
        index = self.offsets[rows, None] + positions
        ids = np.where(positions < lengths[:, None], self.values[np.minimum(index, len(self.values) - 1)], pad_id)
        return torch.from_numpy(ids), torch.from_numpy(lengths)


@dataclass(frozen=True)
class EncodedInputs:
    """One task's encoded texts: named token arrays (e.g. ``a`` and ``b``, the two sides of a pair)."""

    arrays: dict[str, TokenArray]
    pad_ids: dict[str, int]

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    @property
    def lengths(self) -> np.ndarray:
        """Per-row length used for bucketing: the longest of the row's arrays."""
        return np.max([array.lengths for array in self.arrays.values()], axis=0)

    def batch(self, rows: np.ndarray, device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """For each array: padded ids under its name and lengths under ``<name>_lengths`` (lengths stay on CPU)."""
        out: dict[str, torch.Tensor] = {}
        for name, array in self.arrays.items():
            ids, lengths = array.batch(rows, self.pad_ids[name])
            out[name], out[f"{name}_lengths"] = ids.to(device) if device is not None else ids, lengths
        return out


class StudentEncoder(ABC):
    """Maps text to student token ids (truncated to ``max_length``, never empty).

    ``encode_inputs`` gives the model's inputs: array ``a`` (first sentence) and, for pairs, ``b``. Subclasses
    register themselves under their ``kind`` so ``StudentEncoder.load`` can rebuild any of them.
    """

    kind: ClassVar[str]
    registry: ClassVar[dict[str, type[StudentEncoder]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            StudentEncoder.registry[cls.kind] = cls

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length

    @property
    @abstractmethod
    def pad_id(self) -> int: ...

    @property
    @abstractmethod
    def unk_id(self) -> int: ...

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def _encode(self, texts: list[str]) -> list[list[int]]:
        """Truncated ids, possibly empty."""

    @abstractmethod
    def _save_files(self, directory: Path) -> dict[str, object]:
        """Write kind-specific files; return extra config entries."""

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text: ``[MASK]`` -> unk, at most ``max_length``, an empty text -> ``[unk]``."""
        return [ids or [self.unk_id] for ids in self._encode(list(texts))]

    def encode_array(self, texts: Sequence[str]) -> TokenArray:
        """``encode`` into a compact TokenArray, chunk by chunk."""
        chunks = [self.encode(texts[i : i + ENCODE_CHUNK]) for i in range(0, len(texts), ENCODE_CHUNK)]
        return TokenArray.concat([TokenArray.from_lists(chunk) for chunk in chunks or [[]]])

    def encode_inputs(self, text_a: Sequence[str], text_b: Sequence[str] | None) -> EncodedInputs:
        """The model inputs for a task's texts: ``a`` and, for pairs, ``b``."""
        arrays = {"a": self.encode_array(text_a)}
        if text_b is not None:
            arrays["b"] = self.encode_array(text_b)
        return EncodedInputs(arrays, {name: self.pad_id for name in arrays})

    def save(self, directory: Path) -> None:
        """Write the encoder (config + vocabulary/tokenizer files) into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        config = {"kind": self.kind, "max_length": self.max_length, **self._save_files(directory)}
        (directory / ENCODER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    @staticmethod
    def load(directory: Path) -> StudentEncoder:
        """Rebuild an encoder written by ``save``."""
        config = json.loads((directory / ENCODER_CONFIG).read_text(encoding="utf-8"))
        return StudentEncoder.registry[config["kind"]]._load(directory, config)

    @classmethod
    @abstractmethod
    def _load(cls, directory: Path, config: dict) -> StudentEncoder:
        """Rebuild from the files and config entries written by ``save``."""


class WordPieceEncoder(StudentEncoder):
    """The teacher's WordPiece tokenizer without special tokens."""

    kind = "wordpiece"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, max_length: int) -> None:
        super().__init__(max_length)
        if tokenizer.unk_token is None or tokenizer.pad_token is None:
            raise ValueError("the teacher's tokenizer needs an unknown and a padding token")
        if len(tokenizer) > vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer)} ids but the embedding matrix only {vocab_size} rows")
        self.tokenizer = tokenizer
        self._vocab_size = vocab_size

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def unk_id(self) -> int:
        return self.tokenizer.unk_token_id

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        unk = self.tokenizer.unk_token
        texts = [text.replace(MASK_TOKEN, unk) for text in texts]
        return self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=self.max_length)["input_ids"]

    def _save_files(self, directory: Path) -> dict[str, object]:
        self.tokenizer.save_pretrained(directory)
        return {"vocab_size": self._vocab_size}

    @classmethod
    def _load(cls, directory: Path, config: dict) -> WordPieceEncoder:
        return cls(AutoTokenizer.from_pretrained(directory), config["vocab_size"], config["max_length"])


class WordEncoder(StudentEncoder):
    """Lowercased word vocabulary; ids 0 and 1 are padding and unknown."""

    kind = "word"

    def __init__(self, words: Sequence[str], max_length: int) -> None:
        super().__init__(max_length)
        if list(words[:2]) != [PAD_TOKEN, UNK_TOKEN]:
            raise ValueError(f"a word vocabulary starts with {PAD_TOKEN}, {UNK_TOKEN}")
        self.words = list(words)
        self.index = {word: i for i, word in enumerate(self.words)}

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        index, unk, limit = self.index, self.unk_id, self.max_length
        return [[index.get(token, unk) for token in tokenize_words(text)[:limit]] for text in texts]

    def _save_files(self, directory: Path) -> dict[str, object]:
        (directory / WORD_VOCAB_FILE).write_text("".join(f"{word}\n" for word in self.words), encoding="utf-8")
        return {}

    @classmethod
    def _load(cls, directory: Path, config: dict) -> WordEncoder:
        return cls((directory / WORD_VOCAB_FILE).read_text(encoding="utf-8").split("\n")[:-1], config["max_length"])


def tokenize_words(text: str) -> list[str]:
    """Lowercased word and punctuation tokens; ``[MASK]`` stays one token (``[mask]``)."""
    return WORD_PATTERN.findall(text.lower())


def build_word_vocab(texts: Iterable[str], min_freq: int) -> list[str]:
    """``[PAD]``, ``[UNK]``, then words seen at least ``min_freq`` times, most frequent first."""
    counts = Counter(itertools.chain.from_iterable(map(tokenize_words, texts)))
    counts.pop(MASK_TOKEN.lower(), None)
    kept = sorted((word for word, n in counts.items() if n >= min_freq), key=lambda w: (-counts[w], w))
    return [PAD_TOKEN, UNK_TOKEN, *kept]


def random_embeddings(vocab_size: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Normal(0, RANDOM_INIT_STD) rows; the padding row (id 0 in word vocabularies) is zero."""
    matrix = torch.randn(vocab_size, dim, generator=generator) * RANDOM_INIT_STD
    matrix[0] = 0
    return matrix


def read_word_vectors(path: Path, words: Sequence[str], generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """Embedding matrix for ``words`` from a word2vec/GloVe text file, and how many words it covered.

    Format: an optional ``count dim`` header, then ``word v1 ... vd`` per line (a word may contain spaces,
    as in GloVe 840B: the last ``dim`` fields are the vector). File words are lowercased to match the
    vocabulary; an exact-case entry wins over other casings. Words without a vector are random-initialised.
    Field counts are checked on every line, numbers only on lines of vocabulary words.
    """
    index = {word: i for i, word in enumerate(words)}
    matrix: torch.Tensor | None = None
    seen: set[str] = set()
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if matrix is None:
                if lineno == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
                    matrix = random_embeddings(len(words), max(int(fields[1]), 1), generator)
                    continue
                matrix = random_embeddings(len(words), max(len(fields) - 1, 1), generator)
            dim = matrix.shape[1]
            if len(fields) < dim + 1:
                raise ValueError(f"{path}:{lineno}: expected a word and {dim} numbers, found {len(fields)} fields")
            word = " ".join(fields[:-dim])
            key = word.lower()
            row = index.get(key)
            if row is None or (word != key and key in seen):
                continue
            try:
                matrix[row] = torch.tensor([float(value) for value in fields[-dim:]])
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: not a number in the vector of {word!r}: {exc}") from None
            seen.add(key)
    if matrix is None:
        raise ValueError(f"{path}: no word vectors in the file")
    return matrix, len(seen)


def teacher_word_embeddings(teacher_dir: Path) -> torch.Tensor:
    """The teacher's word-embedding matrix, read from its safetensors checkpoint without loading the model."""
    for path in sorted(teacher_dir.glob("*.safetensors")):
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if key.endswith(WORD_EMBEDDINGS_KEY):
                    return handle.get_tensor(key).float()
    raise FileNotFoundError(f"{teacher_dir}: no tensor named *{WORD_EMBEDDINGS_KEY} in its *.safetensors files")


def build_encoder(
    params: EmbeddingParams, teacher_dir: Path, training_texts: Iterable[str], seed: int
) -> tuple[StudentEncoder, torch.Tensor]:
    """The encoder chosen by ``params.embeddings`` and its initial embedding matrix ``[vocab_size, width]``.

    ``teacher_dir`` is read only for ``wordpiece``; ``training_texts`` only for ``word``/``vectors``.
    """
    if params.embeddings == "wordpiece":
        matrix = teacher_word_embeddings(teacher_dir)
        tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
        return WordPieceEncoder(tokenizer, len(matrix), params.max_length), matrix
    generator = torch.Generator().manual_seed(seed)
    words = build_word_vocab(training_texts, params.min_word_freq)
    encoder = WordEncoder(words, params.max_length)
    if params.embeddings == "word":
        return encoder, random_embeddings(len(words), params.embedding_dim, generator)
    assert params.vectors_path is not None  # guaranteed by EmbeddingParams validation
    matrix, found = read_word_vectors(params.vectors_path, words, generator)
    log.info("word vectors cover %d of %d vocabulary words (%s)", found, len(words) - 2, params.vectors_path)
    return encoder, matrix

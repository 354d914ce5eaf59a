"""MKD's Transformer student: the teacher's embeddings and bottom encoder layers, one output layer per task.

The student is a BERT encoder of ``transformer.layers`` layers whose word/position/token-type embeddings,
embedding LayerNorm and layers ``0 .. layers-1`` are exact copies of the teacher's (MKD's 3-layer Transformer,
initialised from the bottom of the pretrained/fine-tuned BERT). Every task reads the first token's ([CLS])
final hidden state, through the teacher's pooler (dense + tanh, copied; ``transformer.pooler: false`` drops it),
dropout, and its own linear head. Single-sentence and pair tasks share the model: inputs are
``[CLS] a [SEP] b [SEP]`` with segment ids, encoded by ``TransformerEncoder`` with the teacher's tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase

from pipeline.data.schema import MASK_TOKEN
from pipeline.data.tasks import Task
from pipeline.params import Params
from pipeline.students.base import Batch, StudentModel, padding_mask
from pipeline.students.encoding import ENCODE_CHUNK, EncodedInputs, StudentEncoder, TokenArray

# Architecture fields of the teacher's BertConfig that the student keeps (depth and dropout are the student's own).
BERT_SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "pad_token_id",
)
# Prefix of the encoder's tensors in a checkpoint saved by AutoModelForSequenceClassification (none in a BertModel).
CLASSIFIER_PREFIX = "bert."
# Attention kernel: torch's scaled_dot_product_attention (fused on CPU and GPU, exports to ONNX).
ATTENTION_IMPLEMENTATION = "sdpa"
# Name of the segment-id array; the token-id array is "ids".
IDS, TYPE_IDS = "ids", "type_ids"
PAD_TYPE_ID = 0
REQUIRED_TOKENS = ("unk_token", "pad_token", "cls_token", "sep_token")


class TransformerEncoder(StudentEncoder):
    """The teacher's tokenizer with special tokens: ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]`` plus segment ids.

    Arrays ``ids`` (padded with the tokenizer's pad id) and ``type_ids`` (padded with 0). Sequences are truncated
    to ``max_length`` tokens (longest side first, like the teacher). The literal ``[MASK]`` written by augmentation
    becomes the tokenizer's unknown token: the teacher saw ``[MASK]``, the student sees its unknown-word token.
    """

    kind = "transformer"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        super().__init__(max_length)
        missing = [name for name in REQUIRED_TOKENS if getattr(tokenizer, name) is None]
        if missing:
            raise ValueError(f"the teacher's tokenizer has no {', '.join(missing)}")
        self.tokenizer = tokenizer

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def unk_id(self) -> int:
        return self.tokenizer.unk_token_id

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def _unmask(self, texts: Sequence[str]) -> list[str]:
        return [text.replace(MASK_TOKEN, self.tokenizer.unk_token) for text in texts]

    def _tokenize(self, text_a: Sequence[str], text_b: Sequence[str] | None) -> dict[str, list[list[int]]]:
        encoded = self.tokenizer(
            self._unmask(text_a), self._unmask(text_b) if text_b is not None else None,
            truncation=True, max_length=self.max_length, return_token_type_ids=True, return_attention_mask=False,
        )  # fmt: skip
        return {IDS: encoded["input_ids"], TYPE_IDS: encoded["token_type_ids"]}

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self._tokenize(texts, None)[IDS] if texts else []

    def encode_inputs(self, text_a: Sequence[str], text_b: Sequence[str] | None) -> EncodedInputs:
        """Arrays ``ids`` and ``type_ids`` of ``[CLS] a [SEP] (b [SEP])``, chunk by chunk."""
        if text_b is not None and len(text_b) != len(text_a):
            raise ValueError(f"text_a has {len(text_a)} rows but text_b {len(text_b)}")
        chunks = [
            self._tokenize(text_a[i : i + ENCODE_CHUNK], text_b[i : i + ENCODE_CHUNK] if text_b is not None else None)
            for i in range(0, len(text_a), ENCODE_CHUNK)
        ] or [{IDS: [], TYPE_IDS: []}]
        arrays = {
            name: TokenArray.concat([TokenArray.from_lists(chunk[name]) for chunk in chunks])
            for name in (IDS, TYPE_IDS)
        }
        return EncodedInputs(arrays, {IDS: self.pad_id, TYPE_IDS: PAD_TYPE_ID})

    def _save_files(self, directory: Path) -> dict[str, object]:
        self.tokenizer.save_pretrained(directory)
        return {}

    @classmethod
    def _load(cls, directory: Path, config: dict) -> TransformerEncoder:
        return cls(AutoTokenizer.from_pretrained(directory), config["max_length"])


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask ``[batch, 1, 1, time]``: 0 on real tokens, the dtype's minimum on padding."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return bias[:, None, None, :]


class TransformerStudent(StudentModel):
    """BERT embeddings + ``layers`` encoder layers, shared by all tasks; per task a linear head on [CLS].

    ``bert`` is a transformers ``BertModel`` (its embeddings, layers and optional pooler hold the weights; the
    forward pass below calls them directly with a plain additive padding mask, so it has no data-dependent
    control flow and exports to ONNX with dynamic batch and sequence axes).
    """

    architecture = "transformer"

    def __init__(self, tasks: Sequence[Task], bert_config: BertConfig, pooler: bool, dropout: float) -> None:
        super().__init__(tasks)
        self.bert = BertModel(bert_config, add_pooling_layer=pooler)
        self.dropout = nn.Dropout(dropout)
        width = bert_config.hidden_size
        self.heads = nn.ModuleDict({task.name: nn.Linear(width, task.num_outputs) for task in tasks})
        for head in self.heads.values():  # BERT's classifier init
            nn.init.normal_(head.weight, std=bert_config.initializer_range)
            nn.init.zeros_(head.bias)

    def encode(self, batch: Batch) -> torch.Tensor:
        """The shared sentence vector ``[batch, hidden]``: pooled (or raw) final state of the first token."""
        ids = batch[IDS]
        mask = padding_mask(batch[f"{IDS}_lengths"].to(ids.device), ids.shape[1])
        hidden = self.bert.embeddings(input_ids=ids, token_type_ids=batch[TYPE_IDS])
        bias = attention_bias(mask, hidden.dtype)
        for layer in self.bert.encoder.layer:
            hidden = layer(hidden, bias)
        return self.bert.pooler(hidden) if self.bert.pooler is not None else hidden[:, 0]

    def forward(self, task: str, batch: Batch) -> torch.Tensor:
        return self.heads[task](self.dropout(self.encode(batch)))

    @classmethod
    def build(
        cls, params: Params, tasks: Sequence[Task], teacher_dir: Path, training_texts: Iterable[str], seed: int
    ) -> tuple[TransformerStudent, TransformerEncoder]:
        """The student with the teacher's embeddings and bottom layers copied exactly; heads seeded by ``seed``.

        ``training_texts`` is not read (the vocabulary is the teacher's).
        """
        hp = params.transformer
        teacher_dir = Path(teacher_dir)
        teacher_config = AutoConfig.from_pretrained(teacher_dir)
        if not isinstance(teacher_config, BertConfig):
            raise ValueError(
                f"{teacher_dir}: the Transformer student copies a BERT teacher's layers, not an "
                f"{teacher_config.model_type} model's: remove 'transformer' from mkd.students, or set "
                "teacher.checkpoint to a BERT checkpoint"
            )
        if hp.layers > teacher_config.num_hidden_layers:
            raise ValueError(
                f"transformer.layers = {hp.layers}, but the teacher in {teacher_dir} has only "
                f"{teacher_config.num_hidden_layers} layers"
            )
        if hp.max_length > teacher_config.max_position_embeddings:
            raise ValueError(
                f"transformer.max_length = {hp.max_length} exceeds the teacher's "
                f"{teacher_config.max_position_embeddings} position embeddings ({teacher_dir})"
            )
        tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
        if len(tokenizer) > teacher_config.vocab_size:
            raise ValueError(
                f"{teacher_dir}: the tokenizer has {len(tokenizer)} ids "
                f"but the embeddings {teacher_config.vocab_size} rows"
            )
        bert_config = student_bert_config(teacher_config, hp.layers, hp.dropout)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = cls(tasks, bert_config, hp.pooler, hp.dropout)
        model.bert.load_state_dict(teacher_tensors(teacher_dir, model.bert.state_dict().keys()), strict=True)
        return model, TransformerEncoder(tokenizer, hp.max_length)

    def config(self) -> dict[str, Any]:
        return {
            "bert": {field: getattr(self.bert.config, field) for field in (*BERT_SHAPE_FIELDS, "num_hidden_layers")},
            "dropout": self.dropout.p,
            "pooler": self.bert.pooler is not None,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], tasks: Sequence[Task]) -> TransformerStudent:
        bert = dict(config["bert"])
        layers = bert.pop("num_hidden_layers")
        dropout = config["dropout"]
        return cls(tasks, student_bert_config(BertConfig(**bert), layers, dropout), config["pooler"], dropout)


def student_bert_config(teacher_config: BertConfig, layers: int, dropout: float) -> BertConfig:
    """The teacher's shape (widths, vocabulary, positions) with ``layers`` layers and the student's dropout."""
    return BertConfig(
        **{field: getattr(teacher_config, field) for field in BERT_SHAPE_FIELDS},
        num_hidden_layers=layers,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        attn_implementation=ATTENTION_IMPLEMENTATION,
    )


# LayerNorm parameters under their legacy names, as some transformers releases (5.3) save them
LEGACY_NORM_SUFFIXES = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}


def _current_name(name: str) -> str:
    """``name`` with a legacy LayerNorm suffix (``gamma``/``beta``) renamed to ``weight``/``bias``."""
    for legacy, current in LEGACY_NORM_SUFFIXES.items():
        if name.endswith(legacy):
            return name[: -len(legacy)] + current
    return name


def stored_tensors(teacher_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder's safetensors files, LayerNorm parameters under their current names
    (``weight``/``bias``, whichever names the transformers release that saved them used)."""
    files = sorted(Path(teacher_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{teacher_dir}: no *.safetensors weights")
    return {_current_name(name): tensor for path in files for name, tensor in load_file(path).items()}


def teacher_tensors(teacher_dir: Path, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The teacher's tensors for the student's ``BertModel`` parameter ``names``, from its safetensors files.

    Accepts a bare BERT checkpoint (``embeddings.…``) and a fine-tuned classifier (``bert.embeddings.…``), with
    LayerNorm parameters named ``weight``/``bias`` or, as transformers 5.3 saves them, ``gamma``/``beta``.
    """
    stored = stored_tensors(teacher_dir)
    prefix = CLASSIFIER_PREFIX if any(key.startswith(CLASSIFIER_PREFIX) for key in stored) else ""
    wanted = list(names)
    missing = [name for name in wanted if prefix + name not in stored]
    if missing:
        hint = (
            " (set transformer.pooler: false for a teacher without a pooler)"
            if any("pooler" in n for n in missing)
            else ""
        )
        raise KeyError(f"{teacher_dir}: the teacher checkpoint lacks {', '.join(prefix + n for n in missing)}{hint}")
    return {name: stored[prefix + name].float() for name in wanted}

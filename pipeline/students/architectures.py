"""Registry of student architectures, and saving/loading any student with its encoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pipeline.data.io import atomic_dir
from pipeline.data.tasks import Task, get_task
from pipeline.students.base import StudentModel
from pipeline.students.biattentive import BiattentiveStudent
from pipeline.students.bilstm import BiLSTMStudent
from pipeline.students.encoding import StudentEncoder
from pipeline.students.static import StaticStudent
from pipeline.students.transformer import TransformerStudent

ARCHITECTURES: dict[str, type[StudentModel]] = {
    cls.architecture: cls for cls in (BiLSTMStudent, BiattentiveStudent, TransformerStudent, StaticStudent)
}
MODEL_FILE = "model.pt"
STUDENT_CONFIG_FILE = "config.json"
ENCODER_DIR = "encoder"


def get_architecture(name: str) -> type[StudentModel]:
    """The StudentModel class registered as ``name``; raise naming the known ones otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown student architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None


def save_student(model: StudentModel, encoder: StudentEncoder, out_dir: Path, training: dict[str, Any]) -> None:
    """Write ``model.pt`` (weights), ``config.json`` (architecture, tasks, shape, training summary) and the encoder."""
    config = {
        "architecture": model.architecture,
        "tasks": list(model.tasks),
        "task_specs": {name: task.to_dict() for name, task in model.tasks.items()},  # labels etc.: no params needed
        "model": model.config(),
        "training": training,
    }
    with atomic_dir(out_dir) as tmp:
        torch.save(model.state_dict(), tmp / MODEL_FILE)
        (tmp / STUDENT_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        encoder.save(tmp / ENCODER_DIR)


def read_student_config(model_dir: Path) -> dict[str, Any]:
    """The ``config.json`` written by ``save_student``."""
    return json.loads((Path(model_dir) / STUDENT_CONFIG_FILE).read_text(encoding="utf-8"))


def load_student(model_dir: Path, device: torch.device | None = None) -> tuple[StudentModel, StudentEncoder]:
    """Rebuild a saved student (eval mode, on ``device``, default CPU) and its encoder."""
    model_dir = Path(model_dir)
    config = read_student_config(model_dir)
    specs = config.get("task_specs", {})
    tasks = [Task.from_dict(specs[name]) if name in specs else get_task(name) for name in config["tasks"]]
    model = get_architecture(config["architecture"]).from_config(config["model"], tasks)
    model.load_state_dict(torch.load(model_dir / MODEL_FILE, map_location="cpu", weights_only=True))
    return model.to(device or torch.device("cpu")).eval(), StudentEncoder.load(model_dir / ENCODER_DIR)

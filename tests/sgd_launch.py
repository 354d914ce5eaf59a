"""``python -m pipeline`` with plain SGD for every trainer and no gradient clipping, for the tests that compare a
data-parallel run with a one-process run: Adam(W) and Adadelta hardly change with the scale of the loss and clipping
rescales the gradients, so either would hide a wrong data-parallel loss weight; SGD's update is the gradient.

    torchrun --standalone --nproc_per_node=2 tests/sgd_launch.py student --task sst2
    python tests/sgd_launch.py student --task sst2
"""

from __future__ import annotations

import math

import torch

from pipeline.cli import app
from pipeline.stages import teacher
from pipeline.training import finetune, fit


def student_sgd(hp, model, total_steps):  # noqa: ANN001, ANN201 (fit.build_optimizers' signature)
    """SGD over every trainable student parameter (sparse embedding gradients included), constant learning rate."""
    return [torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=hp.learning_rate)], []


def teacher_sgd(model, hp):  # noqa: ANN001, ANN201 (stages.teacher.build_optimizer's signature)
    return torch.optim.SGD(model.parameters(), lr=hp.learning_rate)


def use_sgd() -> None:
    """Patch the trainers of this process (a launcher's worker, or a test in-process)."""
    fit.build_optimizers = student_sgd
    teacher.build_optimizer = teacher_sgd
    finetune.MAX_GRAD_NORM = math.inf


if __name__ == "__main__":
    use_sgd()
    app(prog_name="pipeline")

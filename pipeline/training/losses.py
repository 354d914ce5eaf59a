"""Student losses: Tang et al.'s distillation loss (logit MSE plus optional hard-label term) and the supervised loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from pipeline.data.tasks import Task

LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


def supervised_loss(logits: torch.Tensor, targets: torch.Tensor, regression: bool) -> torch.Tensor:
    """Cross-entropy to class indices, or MSE of the single output to scores (regression)."""
    if regression:
        return F.mse_loss(logits[:, 0], targets.float())
    return F.cross_entropy(logits, targets)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    label_mask: torch.Tensor,
    alpha: float,
    regression: bool,
) -> torch.Tensor:
    """``alpha * CE + (1 - alpha) * MSE(student_logits, teacher_logits)`` (Tang et al. eq. 3).

    The hard target is the gold label where ``label_mask`` is true, else the teacher's argmax (its score for
    regression, where the "CE" term is an MSE). The logit MSE is the mean over all elements (batch x logits).
    """
    if regression:
        teacher_hard = teacher_logits[:, 0]
        labels = labels.to(teacher_hard.dtype)
    else:
        teacher_hard = teacher_logits.argmax(dim=-1)
    hard = torch.where(label_mask, labels, teacher_hard)
    ce = supervised_loss(student_logits, hard, regression)
    return alpha * ce + (1 - alpha) * F.mse_loss(student_logits, teacher_logits)


def distillation_loss_fn(task: Task, alpha: float) -> LossFn:
    """The distillation loss over a batch's ``teacher``, ``label`` and ``label_mask`` targets."""

    def loss_fn(logits: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        return distillation_loss(
            logits, targets["teacher"], targets["label"], targets["label_mask"], alpha, task.is_regression
        )

    return loss_fn


def supervised_loss_fn(task: Task) -> LossFn:
    """The supervised loss over a batch's ``label`` targets (no teacher)."""

    def loss_fn(logits: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        return supervised_loss(logits, targets["label"], task.is_regression)

    return loss_fn

"""Optimisers for student training: a dense optimiser plus its sparse counterpart for the embedding tables with
sparse gradients. Under DDP the tables get dense gradients (NCCL and gloo cannot all-reduce sparse ones);
``sparsify_gradients`` turns the all-reduced gradient back into the rows the global batch touched, so that the same
sparse optimiser takes them whatever the number of processes."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import get_linear_schedule_with_warmup

from pipeline.params import TrainParams
from pipeline.students.base import StudentModel


class SparseAdadelta(torch.optim.Optimizer):
    """Adadelta for sparse row gradients (embedding tables), numerically equal to dense ``torch.optim.Adadelta``.

    With a zero gradient, dense Adadelta leaves a row unchanged and only decays its two running averages by
    ``rho``; here that decay is applied when the row is next touched (``rho ** skipped_steps``), so rows
    absent from a batch cost nothing.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float, rho: float, eps: float = 1e-6) -> None:
        super().__init__(params, {"lr": lr, "rho": rho, "eps": eps})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, rho, eps = group["lr"], group["rho"], group["eps"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad.coalesce()
                rows, values = grad.indices()[0], grad.values()
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["square_avg"] = torch.zeros_like(param)
                    state["acc_delta"] = torch.zeros_like(param)
                    state["last_step"] = torch.zeros(len(param), dtype=torch.long, device=param.device)
                state["step"] += 1
                decay = (rho ** (state["step"] - 1 - state["last_step"][rows]).to(param.dtype)).unsqueeze(1)
                square_avg = state["square_avg"][rows] * decay * rho + (1 - rho) * values * values
                acc_delta = state["acc_delta"][rows] * decay
                delta = (acc_delta + eps).sqrt() / (square_avg + eps).sqrt() * values
                state["square_avg"][rows] = square_avg
                state["acc_delta"][rows] = acc_delta * rho + (1 - rho) * delta * delta
                state["last_step"][rows] = state["step"]
                param.index_add_(0, rows, delta, alpha=-lr)


def build_optimizers(
    hp: TrainParams, model: StudentModel, total_steps: int
) -> tuple[list[torch.optim.Optimizer], list[torch.optim.lr_scheduler.LRScheduler]]:
    """The configured optimiser for dense parameters, its sparse counterpart for ``model.sparse_parameters()``,
    and (``schedule: linear``) linear warm-up/decay schedulers over ``total_steps``.

    Adadelta's sparse counterpart is exact (``SparseAdadelta``); Adam's and AdamW's is ``torch.optim.SparseAdam``
    (lazy Adam, no weight decay).
    """
    sparse = model.sparse_parameters()
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids]
    optimizers: list[torch.optim.Optimizer] = []
    if hp.optimizer == "adadelta":
        optimizers.append(torch.optim.Adadelta(dense, lr=hp.learning_rate, rho=hp.rho, weight_decay=hp.weight_decay))
        if sparse:
            optimizers.append(SparseAdadelta(sparse, lr=hp.learning_rate, rho=hp.rho))
    else:
        dense_class = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
        optimizers.append(dense_class(dense, lr=hp.learning_rate, weight_decay=hp.weight_decay))
        if sparse:
            optimizers.append(torch.optim.SparseAdam(sparse, lr=hp.learning_rate))
    schedulers = []
    if hp.schedule == "linear":
        warmup = int(hp.warmup_ratio * total_steps)
        schedulers = [get_linear_schedule_with_warmup(opt, warmup, total_steps) for opt in optimizers]
    return optimizers, schedulers


SPARSE_OPTIMIZERS = (SparseAdadelta, torch.optim.SparseAdam)


@torch.no_grad()
def sparsify_gradients(optimizers: list[torch.optim.Optimizer]) -> None:
    """Give the sparse optimisers' tables the sparse gradient of their dense one (DDP): the rows with a non-zero
    gradient, which are the rows of the global batch's tokens, as one process's sparse gradient holds them. (A batch
    row whose gradient is exactly zero would be left out; the padding row's gradient is always zero, and so is its
    moment, so the sparse optimisers leave it unchanged either way.)"""
    for optimizer in optimizers:
        if not isinstance(optimizer, SPARSE_OPTIMIZERS):
            continue
        for group in optimizer.param_groups:
            for param in group["params"]:
                grad = param.grad
                if grad is None or grad.is_sparse:
                    continue
                rows = grad.flatten(1).ne(0).any(dim=1).nonzero().squeeze(1)
                param.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), grad[rows], grad.shape).coalesce()

"""Optimizer and learning-rate schedule with EIR's names and defaults (spec section 2).

* weight decay only on parameters with >= 2 dimensions (not on biases, norms, scales);
* warm-up: linear per iteration from ``lr_lb`` to ``lr`` over ``warmup_steps``
  ("auto" = round(2 / (1 - b2)), 2000 for b2 = 0.999);
* after warm-up: ``plateau`` steps on validation perf-average (max mode, floor ``lr_lb``),
  ``cosine`` decays to ``lr_lb`` by the last iteration, ``same`` keeps ``lr``.
"""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import math
from typing import Any

import torch
from torch import nn

from eir_core.config.schema import LRScheduleConfig, OptimizationConfig
from eir_core.train.adabelief import AdaBelief

# What build_optimizer returns: torch's optimizers, and AdaBelief (not a torch.optim.Optimizer,
# see adabelief.py) with the same param_groups / step / zero_grad / state_dict interface.
Optimizer = torch.optim.Optimizer | AdaBelief


def param_groups(model: nn.Module, wd: float) -> list[dict[str, Any]]:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimizationConfig) -> Optimizer:
    groups = param_groups(model, cfg.wd)
    betas = (cfg.b1, cfg.b2)
    name = cfg.optimizer
    if name in ("adabelief", "adabeliefw"):
        # EIR uses adabelief-pytorch's defaults: eps 1e-16, rectified, decoupled decay; the
        # arithmetic is pytorch_optimizer's AdaBelief (checked bit for bit by a test).
        return AdaBelief(groups, lr=cfg.lr, betas=betas, eps=1e-16)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas)
    if name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=betas)
    if name == "sgdm":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)
    raise ValueError(f"optimizer {name!r} is not built here")


def warmup_steps(sched: LRScheduleConfig, opt: OptimizationConfig) -> int:
    if sched.warmup_steps == "auto":
        return round(2 / (1 - opt.b2)) if opt.b2 < 1 else 2000
    return int(sched.warmup_steps)


class LRSchedule:
    """Sets the learning rate of every group each iteration; state is plain numbers."""

    def __init__(
        self, optimizer: Optimizer, sched: LRScheduleConfig, opt: OptimizationConfig, total_iterations: int
    ) -> None:
        self.optimizer = optimizer
        self.kind = sched.lr_schedule
        self.lr, self.lr_lb = opt.lr, opt.lr_lb
        self.warmup = warmup_steps(sched, opt)
        self.total = max(1, total_iterations)
        self.patience, self.factor = sched.lr_plateau_patience, sched.lr_plateau_factor
        self.plateau_lr = opt.lr
        self.best: float | None = None
        self.bad_rounds = 0

    def current(self, iteration: int) -> float:
        if iteration < self.warmup:
            return self.lr_lb + (self.lr - self.lr_lb) * (iteration + 1) / self.warmup
        if self.kind == "cosine":
            span = max(1, self.total - self.warmup)
            t = min(1.0, (iteration - self.warmup) / span)
            return self.lr_lb + 0.5 * (self.lr - self.lr_lb) * (1 + math.cos(math.pi * t))
        if self.kind == "plateau":
            return self.plateau_lr
        return self.lr

    def step(self, iteration: int) -> float:
        lr = self.current(iteration)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def on_validation(self, iteration: int, perf: float) -> None:
        if self.kind != "plateau" or iteration < self.warmup:
            return
        if self.best is None or perf > self.best:
            self.best, self.bad_rounds = perf, 0
            return
        self.bad_rounds += 1
        if self.bad_rounds > self.patience:
            self.plateau_lr = max(self.lr_lb, self.plateau_lr * self.factor)
            self.bad_rounds = 0

    def state_dict(self) -> dict[str, Any]:
        return {"plateau_lr": self.plateau_lr, "best": self.best, "bad_rounds": self.bad_rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_lr = float(state["plateau_lr"])
        self.best = None if state["best"] is None else float(state["best"])
        self.bad_rounds = int(state["bad_rounds"])

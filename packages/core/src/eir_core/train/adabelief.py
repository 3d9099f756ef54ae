"""AdaBelief as EIR trains with it (rectified, decoupled weight decay, eps 1e-16), without
``torch.optim.Optimizer``.

The arithmetic is ``pytorch_optimizer.AdaBelief``'s (4.x) with ``rectify=True``,
``weight_decouple=True``, ``fixed_decay=False``, ``ams_bound=False``: the same operations in the
same order, so the weights after every step are bit for bit the same (a test checks this against
``pytorch_optimizer``). ``state_dict``/``load_state_dict`` use ``torch.optim.Optimizer``'s layout
with ``pytorch_optimizer``'s keys, so resume states written before this class existed still load.

Why not subclass ``torch.optim.Optimizer``: its ``add_param_group`` and ``zero_grad`` are wrapped
by ``torch._disable_dynamo``, which imports ``torch._dynamo`` (and sympy) on first use: ~1 s of
start-up and ~50 MB of memory that a training run without ``torch.compile`` never needs. Importing
``pytorch_optimizer`` costs the same again (it imports ``torch.distributed.tensor``).
"""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import math
from collections.abc import Iterable
from typing import Any

import torch

N_SMA_THRESHOLD = 5  # pytorch_optimizer's default: below it the update is SGD with momentum


class AdaBelief:
    def __init__(
        self,
        param_groups: Iterable[dict[str, Any]],
        lr: float,
        betas: tuple[float, float],
        eps: float = 1e-16,
    ) -> None:
        if lr < 0 or eps < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdaBelief: invalid lr {lr}, betas {betas} or eps {eps}")
        self.defaults: dict[str, Any] = {
            "lr": lr,
            "betas": betas,
            "weight_decay": 0.0,
            "weight_decouple": True,
            "fixed_decay": False,
            "rectify": True,
            "ams_bound": False,
            "foreach": None,
            "eps": eps,
        }
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        seen: set[int] = set()
        for given in param_groups:
            group = {**given, "params": list(given["params"])}
            for k, v in self.defaults.items():
                group.setdefault(k, v)
            if any(id(p) in seen for p in group["params"]):
                raise ValueError("AdaBelief: a parameter appears in more than one group")
            seen.update(id(p) for p in group["params"])
            self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_()
                    p.grad.zero_()

    def step(self) -> None:
        with torch.no_grad():
            for group in self.param_groups:
                self._step_group(group)

    def _step_group(self, group: dict[str, Any]) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        group["step"] = group.get("step", 0) + 1
        step = group["step"]
        beta1, beta2 = group["betas"]
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        # pytorch_optimizer's get_rectify_step_size (RAdam's rectification), then Adam's debias.
        n_sma_max = 2.0 / (1.0 - beta2) - 1.0
        beta2_t = beta2**step
        n_sma = n_sma_max - 2 * step * beta2_t / (1.0 - beta2_t)
        if n_sma >= N_SMA_THRESHOLD:
            rt = math.sqrt(
                (1.0 - beta2_t) * (n_sma - 4) / (n_sma_max - 4) * (n_sma - 2) / n_sma * n_sma_max / (n_sma_max - 2)
            )
        else:
            rt = 1.0  # degenerated to SGD
        step_size = lr * rt / (1.0 - math.pow(beta1, step))
        if not params:
            return
        for p in params:
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError("AdaBelief does not support sparse gradients")
            if p not in self.state:
                self.state[p] = {"exp_avg": torch.zeros_like(p), "exp_avg_var": torch.zeros_like(p)}
        grads = [p.grad for p in params if p.grad is not None]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_vars = [self.state[p]["exp_avg_var"] for p in params]
        # Element for element what pytorch_optimizer's per-parameter loop does; the foreach ops
        # run the same kernels on each tensor, with one Python call per operation.
        if wd != 0.0:
            torch._foreach_mul_(params, 1.0 - wd * lr)
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        residuals = torch._foreach_sub(grads, exp_avgs)
        torch._foreach_mul_(exp_avg_vars, beta2)
        torch._foreach_addcmul_(exp_avg_vars, residuals, residuals, value=1.0 - beta2)
        torch._foreach_add_(exp_avg_vars, eps)
        de_noms = torch._foreach_sqrt(exp_avg_vars)
        torch._foreach_add_(de_noms, eps)
        if n_sma >= N_SMA_THRESHOLD:
            torch._foreach_addcdiv_(params, exp_avgs, de_noms, value=-step_size)
        elif step_size > 0:
            torch._foreach_add_(params, exp_avgs, alpha=-step_size)

    # -------------------------------------------------------------- torch.optim.Optimizer's layout
    def state_dict(self) -> dict[str, Any]:
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                packed["params"].append(index[id(p)])
            groups.append(packed)
        state = {index[id(p)]: dict(s) for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups) or any(
            len(s["params"]) != len(g["params"]) for s, g in zip(saved, self.param_groups, strict=True)
        ):
            raise ValueError("loaded state dict does not match the optimizer's parameter groups")
        by_index = {
            i: p
            for s, g in zip(saved, self.param_groups, strict=True)
            for i, p in zip(s["params"], g["params"], strict=True)
        }
        state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        for i, entries in state_dict["state"].items():
            p = by_index[int(i)]
            state[p] = {
                k: v.to(dtype=p.dtype, device=p.device) if isinstance(v, torch.Tensor) else v
                for k, v in entries.items()
            }
        self.state = state
        self.param_groups = [
            {**{k: v for k, v in s.items() if k != "params"}, "params": g["params"]}
            for s, g in zip(saved, self.param_groups, strict=True)
        ]

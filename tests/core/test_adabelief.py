"""eir_core's AdaBelief against pytorch_optimizer's, which it replaces: the same weights bit for
bit, and resume states that move between the two."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import pytorch_optimizer  # a dev requirement: the reference
import torch
from torch import nn

from eir_core.train.adabelief import AdaBelief
from eir_core.train.optim import param_groups


def _model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(12, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 12))


def _reference(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    opt: torch.optim.Optimizer = pytorch_optimizer.AdaBelief(
        param_groups(model, 1e-2), lr=lr, betas=(0.9, 0.999), eps=1e-16, weight_decouple=True, rectify=True
    )
    return opt


def _train(model: nn.Module, opt: torch.optim.Optimizer | AdaBelief, steps: range) -> list[float]:
    losses = []
    for i in steps:
        for g in opt.param_groups:  # a changing lr, as the warm-up sets it
            g["lr"] = 1e-3 * (i + 1) / 10
        x = torch.randn(8, 12, generator=torch.Generator().manual_seed(i))
        loss = ((model(x) - x) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_same_weights_bit_for_bit_as_pytorch_optimizer() -> None:
    ours, theirs = _model(), _model()
    # 30 steps: the first ones are below the rectification threshold (SGD-like update)
    a = _train(ours, AdaBelief(param_groups(ours, 1e-2), lr=1e-3, betas=(0.9, 0.999)), range(30))
    b = _train(theirs, _reference(theirs, 1e-3), range(30))
    assert a == b
    assert _same_weights(ours, theirs)
    assert not _same_weights(ours, _model())  # it trained at all


@pytest.mark.parametrize("direction", ["theirs_to_ours", "ours_to_theirs"])
def test_state_dict_moves_between_the_two(direction: str) -> None:
    """A resume state saved by pytorch_optimizer's AdaBelief (older runs) continues in ours, and
    the layout is the same both ways."""
    first, second = _model(), _model()
    make_ours = lambda m: AdaBelief(param_groups(m, 1e-2), lr=1e-3, betas=(0.9, 0.999))  # noqa: E731
    opt1 = _reference(first, 1e-3) if direction == "theirs_to_ours" else make_ours(first)
    _train(first, opt1, range(12))
    saved = copy.deepcopy(opt1.state_dict())
    second.load_state_dict(first.state_dict())
    opt2 = make_ours(second) if direction == "theirs_to_ours" else _reference(second, 1e-3)
    assert opt2.state_dict()["param_groups"][0].keys() - {"step"} == saved["param_groups"][0].keys() - {"step"}
    opt2.load_state_dict(saved)
    assert _train(first, opt1, range(12, 20)) == _train(second, opt2, range(12, 20))
    assert _same_weights(first, second)


def test_building_the_tutorial_optimizer_imports_no_dynamo() -> None:
    """The point of not subclassing torch.optim.Optimizer (its methods import torch._dynamo)."""
    code = (
        "import sys, torch\n"
        "from eir_core.config.schema import OptimizationConfig\n"
        "from eir_core.train.optim import build_optimizer\n"
        "m = torch.nn.Linear(3, 3)\n"
        "opt = build_optimizer(m, OptimizationConfig(optimizer='adabelief'))\n"
        "m(torch.ones(1, 3)).sum().backward(); opt.step(); opt.zero_grad(); opt.state_dict()\n"
        "print(sorted(n for n in ('torch._dynamo', 'pytorch_optimizer', 'sympy') if n in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

"""Architecture 1 (models built before bundles recorded an architecture): LCL trunks.

Kept unchanged so that bundles written then still load and predict; new training builds
architecture 2 (model/lcl.py, EIR 0.25.0's rules).

The automatic depth rule follows EIR (spec section 5): a first LCL (``fc_0``), one residual
block, then more blocks with more sets and wider kernels until the width is at or below
``cutoff``. Two differences, both so that every size builds a sensible model:
* a block that would not shrink the width ends the loop (EIR can loop forever there);
* an output head's ``cutoff: auto`` is ``max(output elements, 128)``, so tiny outputs such as
  8x8 digits keep a 128-wide trunk before the projection (what EIR needs ``cutoff: 128`` for).
"""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import math

import numpy as np
import torch
from torch import nn

from eir_core.config.schema import LCLModelInitConfig
from eir_core.model.v1_layers import LCL, LCLAttentionBlock, LCLResidualBlock, exact_projection

MAX_BLOCKS = 64
MIN_AUTO_OUTPUT_TRUNK = 128


def first_kernel(cfg: LCLModelInitConfig) -> int:
    kw = int(cfg.kernel_width)
    if cfg.first_kernel_expansion > 0:
        return kw * cfg.first_kernel_expansion
    if cfg.first_kernel_expansion < 0:
        return max(1, kw // abs(cfg.first_kernel_expansion))
    return kw


class LCLTrunk(nn.Module):
    """fc_0, then residual (and optional attention) blocks chosen by the depth rule."""

    def __init__(self, in_features: int, cfg: LCLModelInitConfig, cutoff: int) -> None:
        super().__init__()
        base_sets = 2**cfg.channel_exp_base
        kw = int(cfg.kernel_width)
        self.fc_0 = LCL(in_features, base_sets * cfg.first_channel_expansion, kernel_size=first_kernel(cfg))
        blocks: list[nn.Module] = []
        size = self.fc_0.out_features
        n_res = 0
        sets, kernel = base_sets, kw
        while True:
            if n_res > 0:
                sets = 2 ** (cfg.channel_exp_base + n_res // 2)
                kernel = kw
                while sets >= kernel:  # wider kernels than sets: every block shrinks the width
                    kernel *= 2
            block = LCLResidualBlock(
                size, kernel, sets, cfg.rb_do, cfg.stochastic_depth_p, full_preactivation=n_res == 0
            )
            if n_res > 0 and block.out_features >= size:
                break
            blocks.append(block)
            n_res += 1
            size = block.out_features
            cut = cfg.attention_inclusion_cutoff
            if cut is not None and size % sets == 0 and size // sets <= cut:
                blocks.append(LCLAttentionBlock(size, sets))
            if size <= cutoff or len(blocks) >= MAX_BLOCKS:
                break
        self.blocks = nn.Sequential(*blocks)
        self.out_features = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.blocks(self.fc_0(x))
        return result


class ArrayInputExtractor(nn.Module):
    def __init__(self, shape: tuple[int, ...], cfg: LCLModelInitConfig) -> None:
        super().__init__()
        n = int(np.prod(shape))
        cutoff = n if cfg.cutoff == "auto" else int(cfg.cutoff)
        self.trunk = LCLTrunk(n, cfg, cutoff)
        self.out_features = self.trunk.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.trunk(x.flatten(1))
        return result


def _find_block(n_in: int, n_out: int) -> tuple[int, int] | None:
    """(kernel, sets) of the first LCL residual block mapping n_in to exactly n_out."""
    kernels = np.arange(1, n_in + 1)
    for sets in range(1, 1025):
        mid = np.ceil(n_in / kernels) * sets
        out = np.ceil(mid / kernels) * sets
        hit = np.nonzero(out == n_out)[0]
        if hit.size:
            return int(kernels[hit[0]]), sets
    return None


def _find_lcl(n_in: int, n_out: int) -> tuple[int, int] | None:
    kernels = np.arange(1, n_in + 1)
    for sets in range(1, 1025):
        hit = np.nonzero(np.ceil(n_in / kernels) * sets == n_out)[0]
        if hit.size:
            return int(kernels[hit[0]]), sets
    return None


def projection(n_in: int, n_out: int, cfg: LCLModelInitConfig) -> nn.Module:
    """Map the trunk's width to exactly the output's element count."""
    if n_in == n_out:
        return nn.Identity()
    found = _find_block(n_in, n_out)
    if found is not None:
        kernel, sets = found
        return LCLResidualBlock(n_in, kernel, sets, cfg.rb_do, cfg.stochastic_depth_p)
    found = _find_lcl(n_in, n_out)
    if found is not None:
        return LCL(n_in, found[1], kernel_size=found[0])
    return exact_projection(n_in, n_out)


class ArrayOutputHead(nn.Module):
    """Fused vector -> LCL trunk -> exact projection -> (C, H, W) in normalized space."""

    def __init__(self, in_features: int, shape: tuple[int, int, int], cfg: LCLModelInitConfig) -> None:
        super().__init__()
        self.shape = tuple(shape)
        n_out = math.prod(shape)
        cutoff = max(n_out, MIN_AUTO_OUTPUT_TRUNK) if cfg.cutoff == "auto" else int(cfg.cutoff)
        self.trunk = LCLTrunk(in_features, cfg, cutoff)
        self.projection = projection(self.trunk.out_features, n_out, cfg)
        self.n_out = n_out

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        out = self.projection(self.trunk(fused))[:, : self.n_out]
        result: torch.Tensor = out.reshape(out.shape[0], *self.shape)
        return result

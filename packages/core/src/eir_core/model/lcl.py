"""Architecture 2 LCL models: the array input extractor and the array output head, by EIR 0.25.0's rules.

A trunk is ``fc_0`` (kernel ``kernel_width`` after ``first_kernel_expansion``, ``2**channel_exp_base``
sets after ``first_channel_expansion``), an RMSNorm, then residual blocks:

* ``layers`` given: a first block (full pre-activation), then ``layers[i]`` blocks with
  ``2**(channel_exp_base + i)`` sets (the first block counts towards ``layers[0]``); no attention.
* otherwise (automatic): a first block with ``kernel_width`` and the base sets; then, while the width
  is above ``cutoff`` (``direction: down``; below it for ``up``), one more block whose sets are
  ``2**(channel_exp_base + n // 2)`` with ``n`` the number of blocks so far (attention blocks
  included). Each block's kernel doubles until it exceeds its sets (``up``: the sets double until
  they exceed the kernel). After any block whose token count (width / sets) is at most
  ``attention_inclusion_cutoff``, an attention block is added.

Where EIR's automatic rule never ends (e.g. the tutorial's output head on 8x8 outputs: the width
stalls at 128 above the cutoff of 64, and EIR grows blocks until memory runs out), this project
stops before the first block (after the first) that would not move the width towards the cutoff.

The output head's ``cutoff: auto`` is the output's element count, and its projection to exactly
that count is the first LCL residual block, else the first LCL, that hits it (sets 1..1024, kernels
1..16384), else a Linear.
"""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from torch import nn

from eir_core.config.schema import LCLModelInitConfig
from eir_core.errors import ConfigError
from eir_core.model.layers import LCL, LCLAttentionBlock, LCLResidualBlock

# EIR's sets double every two blocks, so a trunk that needs this many blocks cannot be allocated:
# an automatic rule that has not reached its cutoff by then never will.
MAX_AUTO_BLOCKS = 64
EIR_DEFAULT_CHUNKS = 10  # EIR's LCL falls back to 10 chunks when the first kernel works out to 0


def _expand(base: int, expansion: int) -> int:
    if expansion > 0:
        return base * expansion
    if expansion < 0:
        return max(0, base // abs(expansion))
    return base


def kernel_width(cfg: LCLModelInitConfig) -> int:
    if cfg.kernel_width == "patch":
        if cfg.patch_size is None:
            raise ConfigError("model_init_config.kernel_width is 'patch' but no patch_size is set: set patch_size")
        return math.prod(cfg.patch_size)
    return int(cfg.kernel_width)


@dataclass(frozen=True)
class BlockPlan:
    kind: Literal["residual", "attention"]
    in_features: int
    sets: int
    kernel: int = 0
    first: bool = False

    @property
    def out_features(self) -> int:
        if self.kind == "attention":
            return self.in_features
        mid = math.ceil(self.in_features / self.kernel) * self.sets
        return math.ceil(mid / self.kernel) * self.sets


def _adjust(sets: int, kernel: int, direction: str) -> tuple[int, int]:
    if direction == "down":
        while sets >= kernel:
            kernel *= 2
    else:
        while sets <= kernel:
            sets *= 2
    return sets, kernel


def _reached(size: int, cutoff: int, direction: str) -> bool:
    return size <= cutoff if direction == "down" else size >= cutoff


def _auto_plan(
    in_features: int, kw: int, base: int, cutoff: int, attn: int | None, direction: str, stop_on_stall: bool
) -> list[BlockPlan] | None:
    """EIR's automatic rule as sizes only; None if it does not reach the cutoff in MAX_AUTO_BLOCKS."""
    plan = [BlockPlan("residual", in_features, 2**base, kw, first=True)]

    def add_attention(block: BlockPlan) -> None:
        if attn is not None and block.out_features // block.sets <= attn:
            plan.append(BlockPlan("attention", block.out_features, block.sets))

    add_attention(plan[0])
    while len(plan) <= MAX_AUTO_BLOCKS:
        size = plan[-1].out_features
        if _reached(size, cutoff, direction):
            return plan
        sets, kernel = _adjust(2 ** (base + len(plan) // 2), kw, direction)
        block = BlockPlan("residual", size, sets, kernel)
        if stop_on_stall and (block.out_features >= size if direction == "down" else block.out_features <= size):
            return plan
        plan.append(block)
        add_attention(block)
    return None


def _spec_plan(in_features: int, kw: int, base: int, layers: list[int], direction: str) -> list[BlockPlan]:
    plan = [BlockPlan("residual", in_features, 2**base, kw, first=True)]
    counts = [layers[0] - 1, *layers[1:]]
    for i, n in enumerate(counts):
        for _ in range(n):
            sets, kernel = _adjust(2 ** (base + i), kw, direction)
            plan.append(BlockPlan("residual", plan[-1].out_features, sets, kernel))
    return plan


def block_plan(in_features: int, cfg: LCLModelInitConfig, cutoff: int) -> list[BlockPlan]:
    """The blocks after ``fc_0`` for a trunk whose ``fc_0`` gives ``in_features``."""
    kw, base = kernel_width(cfg), cfg.channel_exp_base
    if cfg.layers:
        return _spec_plan(in_features, kw, base, cfg.layers, cfg.direction)
    args = (in_features, kw, base, cutoff, cfg.attention_inclusion_cutoff, cfg.direction)
    plan = _auto_plan(*args, stop_on_stall=False)
    if plan is None:  # EIR never finishes here: this project's termination rule
        plan = _auto_plan(*args, stop_on_stall=True)
        assert plan is not None
    return plan


class LCLModel(nn.Module):
    """``fc_0 -> norm_0 -> lcl_blocks`` (EIR's LCLModel), on a flat input."""

    def __init__(self, in_features: int, cfg: LCLModelInitConfig, cutoff: int) -> None:
        super().__init__()
        kernel = _expand(kernel_width(cfg), cfg.first_kernel_expansion)
        sets = _expand(2**cfg.channel_exp_base, cfg.first_channel_expansion)
        if sets < 1:
            raise ConfigError(
                f"model_init_config: first_channel_expansion={cfg.first_channel_expansion} with channel_exp_base="
                f"{cfg.channel_exp_base} leaves fc_0 no weight sets; use a smaller reduction"
            )
        if kernel > 0:
            self.fc_0 = LCL(in_features, sets, kernel_size=kernel)
        else:
            self.fc_0 = LCL(in_features, sets, num_chunks=EIR_DEFAULT_CHUNKS)
        self.norm_0 = nn.RMSNorm(self.fc_0.out_features)
        blocks: list[nn.Module] = []
        for p in block_plan(self.fc_0.out_features, cfg, cutoff):
            if p.kind == "attention":
                blocks.append(LCLAttentionBlock(p.in_features, p.sets))
            else:
                sd = 0.0 if p.first else cfg.stochastic_depth_p
                blocks.append(
                    LCLResidualBlock(p.in_features, p.sets, p.kernel, cfg.rb_do, sd, full_preactivation=p.first)
                )
        self.lcl_blocks = nn.Sequential(*blocks)
        self.out_features: int = blocks[-1].out_features  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.lcl_blocks(self.norm_0(self.fc_0(x)))
        return result


def flatten_patches(x: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """(B, C, H, W) -> flat, patch by patch: patch rows, patch columns, then each patch's
    (c, C/c, h, w) elements (EIR's order)."""
    c, h, w = patch
    b, cc, hh, ww = x.shape
    x = x.reshape(b, cc // c, c, hh // h, h, ww // w, w)  # (b, C/c, c, H/h, h, W/w, w)
    return x.permute(0, 3, 5, 2, 1, 4, 6).reshape(b, -1)


class ArrayInputExtractor(nn.Module):
    """EIR's ArrayWrapperModel around an LCLModel (no pre-normalization)."""

    def __init__(self, shape: tuple[int, ...], cfg: LCLModelInitConfig) -> None:
        super().__init__()
        n = math.prod(shape)
        self.patch: tuple[int, int, int] | None = None
        if cfg.patch_size is not None:
            if len(cfg.patch_size) != 3 or any(p < 1 for p in cfg.patch_size):
                raise ConfigError(
                    f"model_init_config.patch_size must be 3 positive sizes (C, H, W), got {cfg.patch_size}"
                )
            if len(shape) != 3 or any(s % p for s, p in zip(shape, cfg.patch_size, strict=True)):
                raise ConfigError(
                    f"model_init_config.patch_size {cfg.patch_size} does not divide the input shape {shape}"
                )
            self.patch = (cfg.patch_size[0], cfg.patch_size[1], cfg.patch_size[2])
        cutoff = n if cfg.cutoff == "auto" else int(cfg.cutoff)  # EIR allows "auto" for outputs only
        self.feature_extractor = LCLModel(n, cfg, cutoff)
        self.out_features = self.feature_extractor.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1) if self.patch is None else flatten_patches(x, self.patch)
        result: torch.Tensor = self.feature_extractor(flat)
        return result


KERNEL_CANDIDATES = 16384
SET_CANDIDATES = 1024


@lru_cache(maxsize=256)
def find_projection(n_in: int, n_out: int, n_layers: int) -> tuple[int, int] | None:
    """(kernel, sets) of the first ``n_layers`` chained LCLs (same kernel and sets) mapping n_in
    to exactly n_out, searching sets 1..1024 and, for each, kernels 1..min(n_in, 16384)."""
    kernels = np.arange(1, min(n_in, KERNEL_CANDIDATES) + 1, dtype=np.int64)
    for sets in range(1, SET_CANDIDATES + 1):
        out = np.full_like(kernels, n_in)
        for _ in range(n_layers):
            out = -(-out // kernels) * sets
        hit = np.nonzero(out == n_out)[0]
        if hit.size:
            return int(kernels[hit[0]]), sets
    return None


def projection_head(n_in: int, n_out: int) -> nn.Module:
    """Map the trunk's width to exactly the output's element count (EIR's 'auto' projection)."""
    if n_in == n_out:
        return nn.Identity()
    found = find_projection(n_in, n_out, 2)
    if found is not None:
        return LCLResidualBlock(n_in, found[1], found[0])
    found = find_projection(n_in, n_out, 1)
    if found is not None:
        return LCL(n_in, found[1], kernel_size=found[0])
    return nn.Linear(n_in, n_out)


class ArrayOutputHead(nn.Module):
    """Fused vector -> LCLModel -> projection to exactly C*H*W -> (C, H, W) in normalized space."""

    def __init__(self, in_features: int, shape: tuple[int, ...], cfg: LCLModelInitConfig) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.n_out = math.prod(shape)
        cutoff = self.n_out if cfg.cutoff == "auto" else int(cfg.cutoff)
        self.feature_extractor = LCLModel(in_features, cfg, cutoff)
        self.projection_head = projection_head(self.feature_extractor.out_features, self.n_out)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        out = self.projection_head(self.feature_extractor(fused))[:, : self.n_out]
        result: torch.Tensor = out.reshape(out.shape[0], *self.shape)
        return result

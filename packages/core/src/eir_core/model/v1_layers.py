"""Architecture 1 building blocks (see v1_lcl.py): kept unchanged so that old bundles load."""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import math

import torch
from torch import nn

from eir_core.model import layers
from eir_core.model.layers import StochasticDepth  # parameter-free, the same in both architectures


class LayerScale(nn.Module):
    """Learnable per-feature scale of a residual branch (CaiT); small init = near-identity."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class LCL(layers.LCL):
    """Architecture 1's locally connected layer: the chunk count always follows from the kernel
    size (``num_chunks`` only picks the kernel), and its own weight init. The computation is
    architecture 2's (``layers.LCL.forward``).
    """

    def __init__(
        self,
        in_features: int,
        out_feature_sets: int,
        kernel_size: int | None = None,
        num_chunks: int | None = None,
        bias: bool = True,
    ) -> None:
        nn.Module.__init__(self)  # not layers.LCL.__init__: the shapes and the init differ
        if (kernel_size is None) == (num_chunks is None):
            raise ValueError("give exactly one of kernel_size and num_chunks")
        if num_chunks is not None:
            kernel_size = math.ceil(in_features / num_chunks)
        assert kernel_size is not None and kernel_size >= 1
        self.in_features = in_features
        self.kernel_size = kernel_size
        self.out_feature_sets = out_feature_sets
        self.num_chunks = math.ceil(in_features / kernel_size)
        self.padding = self.num_chunks * kernel_size - in_features
        self.out_features = out_feature_sets * self.num_chunks
        self.weight = nn.Parameter(torch.empty(out_feature_sets, self.num_chunks, kernel_size))
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None
        # Narrow layers (few sets x short kernels) are many tiny matrix products: a broadcast
        # multiply-and-sum beats batched matmul there (3-5x on CPU); wide ones use bmm.
        self._broadcast = out_feature_sets * kernel_size <= 128
        self._tiny = out_feature_sets * kernel_size <= 6  # see layers.LCL
        # Each output sees only its chunk, so the fan-in is the kernel size, not the row size.
        bound = 1.0 / math.sqrt(kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)


def exact_projection(in_features: int, out_features: int) -> nn.Module:
    """An LCL with one set mapping ``in`` to exactly ``out`` features, else a Linear."""
    lcl = LCL(in_features, 1, num_chunks=out_features)
    if lcl.out_features == out_features:
        return lcl
    return nn.Linear(in_features, out_features)


class LCLResidualBlock(nn.Module):
    """Pre-norm residual block of two LCLs: x -> proj(x) + SD(LS(fc2(drop(gelu(fc1(norm(x))))))).

    The first block of an extractor takes its shortcut from the normalized input
    (full pre-activation), later blocks from the raw input.
    """

    def __init__(
        self,
        in_features: int,
        kernel_size: int,
        out_feature_sets: int,
        dropout_p: float,
        stochastic_depth_p: float,
        full_preactivation: bool = False,
    ) -> None:
        super().__init__()
        self.full_preactivation = full_preactivation
        self.norm = nn.RMSNorm(in_features)
        self.fc_1 = LCL(in_features, out_feature_sets, kernel_size=kernel_size)
        self.act = nn.GELU()
        self.dropout = layers.Dropout(dropout_p)
        self.fc_2 = LCL(self.fc_1.out_features, out_feature_sets, kernel_size=kernel_size)
        self.out_features = self.fc_2.out_features
        self.ls = LayerScale(self.out_features, 1.0)
        self.stochastic_depth = StochasticDepth(stochastic_depth_p)
        self.downsample_identity: nn.Module = (
            nn.Identity() if in_features == self.out_features else exact_projection(in_features, self.out_features)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm(x)
        identity = self.downsample_identity(out if self.full_preactivation else x)
        out = self.fc_2(self.dropout(self.act(self.fc_1(out))))
        result: torch.Tensor = self.stochastic_depth(self.ls(out)) + identity
        return result


class LCLAttentionBlock(nn.Module):
    """Self-attention across the chunks of an LCL output: tokens = chunks, width = sets.

    Added near-silently (outer LayerScale 1e-5) so that it starts as the identity.
    """

    def __init__(self, in_features: int, sets: int) -> None:
        super().__init__()
        if in_features % sets:
            raise ValueError(f"{in_features} features are not a whole number of {sets} sets")
        self.sets = sets
        self.tokens = in_features // sets
        self.pos_embedding = nn.Parameter(torch.zeros(self.tokens, sets))
        self.norm = nn.RMSNorm(sets)
        self.attention = nn.MultiheadAttention(sets, num_heads=sets, batch_first=True)
        self.ls = LayerScale(in_features, 1e-5)
        self.out_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        t = x.view(b, self.sets, self.tokens).transpose(1, 2) + self.pos_embedding
        q = self.norm(t)
        t = t + self.attention(q, q, q, need_weights=False)[0]
        result: torch.Tensor = x + self.ls(t.transpose(1, 2).reshape(b, -1))
        return result


class MLPResidualBlock(nn.Module):
    """RMSNorm -> Linear -> GELU -> Dropout -> Linear -> LayerScale -> StochDepth, + shortcut."""

    def __init__(self, in_features: int, out_features: int, dropout_p: float, stochastic_depth_p: float) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(in_features)
        self.fc_1 = nn.Linear(in_features, out_features, bias=False)
        self.act = nn.GELU()
        self.dropout = layers.Dropout(dropout_p)
        self.fc_2 = nn.Linear(out_features, out_features, bias=False)
        same = in_features == out_features
        # A same-width block starts close to the identity; a widening one must carry signal.
        self.ls = LayerScale(out_features, 1e-5 if same else 1.0)
        self.stochastic_depth = StochasticDepth(stochastic_depth_p)
        self.downsample_identity: nn.Module = nn.Identity() if same else nn.Linear(in_features, out_features)
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc_2(self.dropout(self.act(self.fc_1(self.norm(x)))))
        result: torch.Tensor = self.stochastic_depth(self.ls(out)) + self.downsample_identity(x)
        return result

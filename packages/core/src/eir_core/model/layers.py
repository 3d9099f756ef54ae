"""Building blocks of architecture 2: the layers EIR 0.25.0 builds its LCL models and fusion from.

Module and parameter names follow EIR's (``fc_0``, ``norm_1``, ``ls.gamma``, ``pos_emb.embedding``,
``downsample_identity``...), so state-dict keys and ``layers_to_sample`` paths read the same.
"""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import math

import torch
from torch import nn
from torch.nn import functional as F


class LayerScale(nn.Module):
    """Learnable per-feature scale of a residual branch (CaiT)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.dim = dim
        self.init_values = init_value
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma

    def extra_repr(self) -> str:
        return f"dim={self.dim}, init={self.init_values}"


_LANE = 1 << 15  # Dropout's resolution: each element gets 15 random bits


class Dropout(nn.Dropout):
    """``nn.Dropout`` (a subclass: the same name and ``p`` in the printed model) with a cheaper
    mask on CPU.

    PyTorch's CPU dropout draws one Mersenne Twister number per element (``bernoulli_``, ~11 ns
    each on this machine), 10 % of a training step of the tutorial model. This one draws 64-bit
    words (one generator call per 4 elements) and gives each element the low 15 bits of one
    16-bit lane: ``p`` is rounded to a multiple of 1/32768 (0.1 -> 0.100006) and kept values are
    scaled by 1 / (1 - that p), the expectation nn.Dropout keeps. The draw comes from PyTorch's
    generator like any other, so ``torch.manual_seed`` makes it reproducible. Off the CPU
    (CUDA's dropout is fused and fast), for ``p`` = 1 and in evaluation it is ``F.dropout``.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)  # checks 0 <= p <= 1
        self._drop = round(p * _LANE)  # lanes below this are dropped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or self._drop >= _LANE or not x.is_floating_point():
            return F.dropout(x, self.p, True)
        n = x.numel()
        # random_() on int64 gives 63 random bits: masking each lane to 15 bits also drops the
        # always-zero top bit, whichever lane holds it.
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_()
        lanes = words.view(torch.int16)[:n].view(x.shape)
        keep = torch.bitwise_and(lanes, _LANE - 1) >= self._drop
        return x * keep.to(x.dtype).mul_(_LANE / (_LANE - self._drop))


class StochasticDepth(nn.Module):
    """Drops the whole residual branch for the whole batch with probability p (training only).

    A dropped branch is multiplied by zero rather than skipped, so its parameters still get
    (zero) gradients and DistributedDataParallel sees every parameter used on every rank.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        scale = 0.0 if float(torch.rand(())) >= keep else 1.0 / keep
        return x * scale


class _ContiguousGrad(torch.autograd.Function):
    """Identity forward; backward hands on its gradient made contiguous.

    The gradient reaching an LCL's ``bmm`` comes back through the ``permute`` that follows it,
    with a batch stride of 1. CPU ``bmm`` cannot treat such operands as one strided batch: it
    copies them matrix by matrix (one ``select`` + ``clone`` per chunk, ~500 small copies per
    training step of the tutorial model). One contiguous copy first halves an LCL's forward +
    backward time (0.5 vs 1.0 ms at batch 64 on 2 threads)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def _training_graph(*tensors: torch.Tensor) -> bool:
    """Autograd records this forward for a backward pass (not inference, not a trace/export)."""
    tracing: bool = torch.jit.is_tracing()  # type: ignore[attr-defined,no-untyped-call]  # ONNX export traces
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors) and not tracing


def _contiguous_grad(x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = _ContiguousGrad.apply(x)  # type: ignore[no-untyped-call]  # Function.apply is unannotated
    return out


class LCL(nn.Module):
    """Locally connected layer: the flat input is cut into ``num_chunks`` chunks of ``kernel_size``
    and each chunk has its own ``out_feature_sets`` x ``kernel_size`` weights (no sharing).

    ``out[o * num_chunks + c] = sum_j x[c, j] * W[o, c, j] + b``. Give either ``kernel_size``
    (chunks = ceil(in / kernel)) or ``num_chunks`` (kernel = ceil(in / chunks), and the chunk
    count is kept even when the last chunks are all padding, as EIR does for its identity paths).
    The input is zero-padded on the right to ``num_chunks * kernel_size``.
    """

    def __init__(
        self,
        in_features: int,
        out_feature_sets: int,
        kernel_size: int | None = None,
        num_chunks: int | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if (kernel_size is None) == (num_chunks is None):
            raise ValueError("give exactly one of kernel_size and num_chunks")
        if kernel_size is not None:
            if kernel_size < 1:
                raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
            num_chunks = math.ceil(in_features / kernel_size)
        else:
            assert num_chunks is not None
            if num_chunks < 1:
                raise ValueError(f"num_chunks must be >= 1, got {num_chunks}")
            kernel_size = math.ceil(in_features / num_chunks)
        if out_feature_sets < 1:
            raise ValueError(f"out_feature_sets must be >= 1, got {out_feature_sets}")
        self.in_features = in_features
        self.kernel_size = kernel_size
        self.num_chunks = num_chunks
        self.out_feature_sets = out_feature_sets
        self.padding = num_chunks * kernel_size - in_features
        self.out_features = out_feature_sets * num_chunks
        self.weight = nn.Parameter(torch.empty(out_feature_sets, num_chunks, kernel_size))
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None
        # Inference: narrow layers (few sets x short kernels) are many tiny matrix products, where
        # a broadcast multiply-and-sum beats batched matmul on CPU; wide ones use bmm. A kernel
        # of 1 (the identity paths) is an elementwise product.
        self._broadcast = out_feature_sets * kernel_size <= 64
        self._tiny = out_feature_sets * kernel_size <= 6  # broadcast in training too
        # EIR's init: kaiming-uniform with a=sqrt(5) over the weight tensor, whose fan-in is
        # chunks x kernel, i.e. U(-1/sqrt(chunks * kernel), +1/sqrt(chunks * kernel)).
        bound = 1.0 / math.sqrt(num_chunks * kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding:
            x = F.pad(x, (0, self.padding))
        b = x.shape[0]
        x = x.reshape(b, self.num_chunks, self.kernel_size)
        if self.kernel_size == 1:
            out = x.transpose(1, 2) * self.weight[:, :, 0]  # (b, 1, chunks) * (sets, chunks)
        elif not self._tiny and _training_graph(x, self.weight):
            # With a backward pass to come, bmm wins from about 8 weights per chunk once its
            # gradient is contiguous (see _ContiguousGrad); the broadcast product's backward is
            # slower there (1.1 vs 0.5 ms at 4 sets x kernel 4, 196 chunks, batch 64).
            out = _contiguous_grad(torch.bmm(x.transpose(0, 1), self.weight.permute(1, 2, 0)))
            out = out.permute(1, 2, 0)
        elif self._broadcast:
            out = (x.unsqueeze(1) * self.weight.unsqueeze(0)).sum(-1)  # (b, sets, chunks)
        else:  # (chunks, b, k) @ (chunks, k, sets) -> (chunks, b, sets)
            out = torch.bmm(x.transpose(0, 1), self.weight.permute(1, 2, 0)).permute(1, 2, 0)
        out = out.reshape(b, self.out_features)
        if self.bias is not None:
            out = out + self.bias
        return out

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, kernel={self.kernel_size}, chunks={self.num_chunks}, "
            f"sets={self.out_feature_sets}, out={self.out_features}"
        )


class LCLResidualBlock(nn.Module):
    """Pre-norm residual block of two LCLs with the same kernel and sets:
    ``x -> id(x') + SD(LS(fc_2(drop(gelu(fc_1(norm(x)))))))``.

    The shortcut ``x'`` is the normalized input when the block is the first of a trunk (full
    pre-activation) or changes the width, else the raw input. A width change goes through an
    LCL with one set and one chunk per output feature. The branch starts near-silent (LS 1e-5).
    """

    def __init__(
        self,
        in_features: int,
        out_feature_sets: int,
        kernel_size: int,
        dropout_p: float = 0.0,
        stochastic_depth_p: float = 0.0,
        full_preactivation: bool = False,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_feature_sets = out_feature_sets
        self.kernel_size = kernel_size
        self.norm_1 = nn.RMSNorm(in_features)
        self.fc_1 = LCL(in_features, out_feature_sets, kernel_size=kernel_size)
        self.act_1 = nn.GELU()
        self.do = Dropout(dropout_p)
        self.fc_2 = LCL(self.fc_1.out_features, out_feature_sets, kernel_size=kernel_size)
        self.out_features = self.fc_2.out_features
        self.ls = LayerScale(self.out_features, 1e-5)
        self.norm_identity = full_preactivation or in_features != self.out_features
        self.downsample_identity: nn.Module = (
            nn.Identity() if in_features == self.out_features else LCL(in_features, 1, num_chunks=self.out_features)
        )
        self.stochastic_depth = StochasticDepth(stochastic_depth_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm_1(x)
        identity = self.downsample_identity(out if self.norm_identity else x)
        out = self.fc_2(self.do(self.act_1(self.fc_1(out))))
        result: torch.Tensor = self.stochastic_depth(self.ls(out)) + identity
        return result


class PositionalEmbedding(nn.Module):
    """A learned (length, dim) table added to a token sequence, zero at init."""

    def __init__(self, length: int, dim: int, dropout_p: float = 0.0) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(1, length, dim))
        self.dropout = Dropout(dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.dropout(x + self.embedding)
        return result


class LCLAttentionBlock(nn.Module):
    """Self-attention over the tokens of an LCL output: the flat vector is read as
    (features / sets) consecutive tokens of width ``sets``, one head per set.

    ``x + LS(flatten(t + attn(t)))`` with ``t = norm(x_tokens + pos)``; LS starts at 1e-5 so
    the block starts as the identity.
    """

    def __init__(self, in_features: int, embedding_dim: int) -> None:
        super().__init__()
        if in_features % embedding_dim:
            raise ValueError(f"{in_features} features are not a whole number of {embedding_dim}-wide tokens")
        self.in_features = in_features
        self.out_features = in_features
        self.embedding_dim = embedding_dim
        self.attention = nn.MultiheadAttention(embedding_dim, num_heads=embedding_dim, batch_first=True)
        self.norm = nn.RMSNorm(embedding_dim)
        self.pos_emb = PositionalEmbedding(in_features // embedding_dim, embedding_dim)
        self.ls = LayerScale(in_features, 1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.norm(self.pos_emb(x.reshape(x.shape[0], -1, self.embedding_dim)))
        t = t + self.attention(t, t, t, need_weights=False)[0]
        result: torch.Tensor = x + self.ls(t.flatten(1))
        return result


class MLPResidualBlock(nn.Module):
    """RMSNorm -> Linear -> GELU -> Dropout -> Linear -> LayerScale -> StochDepth, + shortcut.

    A widening block takes its shortcut from the normalized input through a Linear and starts
    with LS 1.0 (it must carry signal); a same-width block is near-identity (LS 1e-5).
    """

    def __init__(self, in_features: int, out_features: int, dropout_p: float, stochastic_depth_p: float) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        same = in_features == out_features
        self.norm_1 = nn.RMSNorm(in_features)
        self.fc_1 = nn.Linear(in_features, out_features, bias=False)
        self.act_1 = nn.GELU()
        self.do = Dropout(dropout_p)
        self.fc_2 = nn.Linear(out_features, out_features, bias=False)
        self.downsample_identity: nn.Module = nn.Identity() if same else nn.Linear(in_features, out_features)
        self.ls = LayerScale(out_features, 1e-5 if same else 1.0)
        self.stochastic_depth = StochasticDepth(stochastic_depth_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm_1(x)
        identity = self.downsample_identity(x if self.in_features == self.out_features else out)
        out = self.fc_2(self.do(self.act_1(self.fc_1(out))))
        result: torch.Tensor = self.stochastic_depth(self.ls(out)) + identity
        return result

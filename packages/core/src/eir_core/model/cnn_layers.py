"""Small layers shared by the CNN input extractor (cnn.py) and the CNN output models (cnn_output.py).

Module and parameter names follow EIR 0.25.0's (``gamma``, ``beta``, ``q_proj``, ``ffn.w1``,
``to_q``, ``ls1``...), so state-dict keys and layer paths read the same. Every forward is
written in operations the ONNX exporter (opset 17, TorchScript-based) knows.
"""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import math

import torch
from torch import nn
from torch.nn import functional as F

from eir_core.model import layers


class LayerScale(layers.LayerScale):
    """Per-channel scale of a (B, C, H, W) branch: ``gamma`` has shape (1, C, 1, 1) (EIR's n_dims=4)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__(dim, init_value)
        self.gamma = nn.Parameter(self.gamma.detach().reshape(1, dim, 1, 1))


class GRN(nn.Module):
    """Global response normalization (ConvNeXt V2): ``x + gamma * x * n(x) + beta`` with n the
    per-channel spatial L2 norm over its mean across channels. Starts as the identity."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.gamma = nn.Parameter(torch.zeros(1, in_channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, in_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, 2, dim=(2, 3), keepdim=True)
        scaled = norm / (norm.mean(dim=1, keepdim=True) + 1e-6)
        result: torch.Tensor = self.gamma * (x * scaled) + self.beta + x
        return result

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}"


def eca_kernel_size(channels: int) -> int:
    """ECA-Net's adaptive kernel: |log2(C) / 2 + 1 / 2| truncated, made odd upwards."""
    t = int(abs(math.log2(channels) / 2 + 0.5))
    return t if t % 2 else t + 1


class ECABlock(nn.Module):
    """Efficient channel attention: the channels' spatial means through a 1-D convolution across
    channels and a sigmoid gate each channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = eca_kernel_size(channels)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.avg_pool(x).squeeze(-1).transpose(-1, -2)  # (B, 1, C)
        y = self.conv(y).transpose(-1, -2).unsqueeze(-1)  # (B, C, 1, 1)
        result: torch.Tensor = x * self.sigmoid(y)
        return result


class SwiGLU(nn.Module):
    """``w3(silu(w1 x) * w2 x)``; weights start at N(0, 0.02)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.w1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.w2 = nn.Linear(in_features, hidden_features, bias=bias)
        self.w3 = nn.Linear(hidden_features, out_features, bias=bias)
        for lin in (self.w1, self.w2, self.w3):
            nn.init.normal_(lin.weight, mean=0.0, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.w3(F.silu(self.w1(x)) * self.w2(x))
        return result


def fitting_heads(num_heads: int, embedding_dim: int) -> int:
    """The largest head count <= ``num_heads`` that divides ``embedding_dim``."""
    while embedding_dim % num_heads:
        num_heads -= 1
    return num_heads


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, dropout_p: float) -> torch.Tensor:
    """Multi-head scaled dot-product attention of (B, Lq, H*D) queries over (B, Lk, H*D) keys."""
    q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    return out.transpose(1, 2).flatten(2)


class ConvAttentionBlock(nn.Module):
    """Transformer block over the pixels of a (B, C, H, W) map (tokens: the H*W positions, width C):
    pre-norm self-attention and a SwiGLU feed-forward, each residual and LayerScaled (1e-5)."""

    def __init__(self, channels: int, height: int, width: int, num_heads: int = 4, dropout_p: float = 0.1) -> None:
        super().__init__()
        self.in_channels = self.out_channels = channels
        self.in_height = height
        self.in_width = width
        self.embedding_dim = channels
        self.num_heads = fitting_heads(num_heads, channels)
        self.q_proj = nn.Linear(channels, channels, bias=False)
        self.k_proj = nn.Linear(channels, channels, bias=False)
        self.v_proj = nn.Linear(channels, channels, bias=False)
        self.out_proj = nn.Linear(channels, channels, bias=False)
        self.norm1 = nn.RMSNorm(channels)
        self.norm2 = nn.RMSNorm(channels)
        self.ffn = SwiGLU(channels, channels * 4, channels, bias=False)
        self.dropout = layers.Dropout(dropout_p)
        self.ls1 = layers.LayerScale(channels, 1e-5)
        self.ls2 = layers.LayerScale(channels, 1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        t = self.norm1(tokens)
        p = self.dropout.p if self.training else 0.0
        attended = _attend(self.q_proj(t), self.k_proj(t), self.v_proj(t), self.num_heads, p)
        tokens = tokens + self.ls1(self.dropout(self.out_proj(attended)))
        tokens = tokens + self.ls2(self.dropout(self.ffn(self.norm2(tokens))))
        result: torch.Tensor = tokens.transpose(1, 2).reshape(x.shape)
        return result


class CrossAttention(nn.Module):
    """Attention of a (B, L, dim) sequence over a (B, Lc, context_dim) context; ``to_out`` has a
    bias, the projections do not. No pre-norm (EIR's default), so ``norm`` and ``context_norm``
    are identities."""

    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        inner = heads * dim_head
        self.norm = nn.Identity()
        self.context_norm = nn.Identity()
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x, context = self.norm(x), self.context_norm(context)
        out = _attend(self.to_q(x), self.to_k(context), self.to_v(context), self.heads, 0.0)
        result: torch.Tensor = self.to_out(out)
        return result


class UpSamplingResidualBlock(nn.Module):
    """Doubles height and/or width: bilinear upsampling, then ``1x1conv(up) + LS(GRN(conv(gelu(norm(up)))))``."""

    def __init__(self, in_channels: int, in_height: int, in_width: int, upsample_height: bool, upsample_width: bool):
        super().__init__()
        self.in_channels = self.out_channels = in_channels
        self.in_height = in_height
        self.in_width = in_width
        self.stride_h = 2 if upsample_height else 1
        self.stride_w = 2 if upsample_width else 1
        self.upsample = nn.Upsample(scale_factor=(self.stride_h, self.stride_w), mode="bilinear")
        self.norm_1 = nn.GroupNorm(1, in_channels)
        self.act_1 = nn.GELU()
        self.conv_1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.identity = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0, bias=False)
        self.grn = GRN(in_channels)
        self.ls = LayerScale(in_channels, 1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self.upsample(x)
        out = self.ls(self.grn(self.conv_1(self.act_1(self.norm_1(up)))))
        result: torch.Tensor = out + self.identity(up)
        return result

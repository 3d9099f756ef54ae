"""The CNN models of an array output, by EIR 0.25.0's rules (``model_type: cnn``).

* ``loss: mse`` — :class:`CNNUpscaleModel` after the MLP fusion: the fused vector goes through a
  Linear (unless its width already is) to a one-channel map with the target's aspect ratio, then
  upscaling blocks grow it to the target size, then a 1x1 convolution to the target's channels.
* ``loss: diffusion`` — :class:`CNNPassThroughUpscaleModel` after the pass-through fusion: it
  starts from the (C, H, W) map of the input with the output's name (the noised array), mixes in
  the diffusion timestep (:class:`TimeStepMixingBlock`) and each other input's features by
  cross-attention (:class:`CrossAttentionArrayOutBlock`), then upscales like the above.

Upscaling (:func:`upscale_blocks`): while the map is smaller than the target, residual blocks
whose channels halve from ``2**channel_exp_base`` group by group (``layers``: the linked input's
``layers`` for diffusion, else [2, 2, 2, 2]), with a 2x upsampling block after every
``up_every_n_blocks``-th and a self-attention block wherever the map has at most
``attention_inclusion_cutoff`` positions; then ``n_final_extra_blocks`` more residual blocks and,
if the map overshot the target, adaptive average pooling to it (``allow_pooling``).

The output module (``output_modules.<name>``) is EIR's ArrayOutputWrapperModule: the model as
``feature_extractor``, then ``projection_head`` to exactly C*H*W values (an identity when the
model already gives that many), reshaped to (C, H, W).
"""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import math
from typing import Any

import torch
from torch import nn

from eir_core.config.schema import CNNUpscaleModelInitConfig
from eir_core.errors import ConfigError
from eir_core.model import layers
from eir_core.model.cnn_layers import (
    GRN,
    ConvAttentionBlock,
    CrossAttention,
    ECABlock,
    LayerScale,
    UpSamplingResidualBlock,
)
from eir_core.model.lcl import projection_head

DEFAULT_LAYERS = (2, 2, 2, 2)
DEFAULT_UP_EVERY = 2


class CNNUpscaleResidualBlock(nn.Module):
    """``up(x) + SD(LS(ECA(conv_2(drop(GRN(gelu(tconv_1(norm(dwtconv(x))))))))))`` with transposed
    3x3 convolutions; the shortcut ``up`` is a transposed convolution when the channels or the
    size change, else the identity."""

    def __init__(
        self,
        in_channels: int,
        in_height: int,
        in_width: int,
        out_channels: int,
        stride: tuple[int, int] = (1, 1),
        rb_do: float = 0.0,
        stochastic_depth_p: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.in_height = in_height
        self.in_width = in_width
        out_pad = (max(stride[0] - 1, 0), max(stride[1] - 1, 0))
        self.conv_ds = nn.ConvTranspose2d(in_channels, in_channels, 3, 1, 1, bias=False, groups=in_channels)
        self.norm_1 = nn.GroupNorm(1, in_channels)
        self.conv_1 = nn.ConvTranspose2d(in_channels, out_channels, 3, stride, 1, output_padding=out_pad, bias=False)
        self.rb_do = nn.Dropout2d(rb_do)
        self.act_1 = nn.GELU()
        self.grn = GRN(out_channels)
        self.conv_2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.upsample_identity: nn.Module = nn.Identity()
        if in_channels != out_channels or stride != (1, 1):
            self.upsample_identity = nn.ConvTranspose2d(
                in_channels, out_channels, 3, stride, 1, output_padding=out_pad, bias=False
            )
        self.stochastic_depth = layers.StochasticDepth(stochastic_depth_p)
        self.eca_block = ECABlock(out_channels)
        self.ls = LayerScale(out_channels, 1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rb_do(self.grn(self.act_1(self.conv_1(self.norm_1(self.conv_ds(x))))))
        out = self.stochastic_depth(self.ls(self.eca_block(self.conv_2(out))))
        result: torch.Tensor = out + self.upsample_identity(x)
        return result


def _pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) rows averaging the windows adaptive pooling uses."""
    m = torch.zeros(n_out, n_in)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` to the target size; traced for ONNX as two averaging matrix
    products (the exporter refuses adaptive pooling between sizes that do not divide)."""

    def __init__(self, output_size: tuple[int, int], input_size: tuple[int, int]) -> None:
        super().__init__(output_size)
        self.input_size = input_size
        self.target_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tracing: bool = torch.jit.is_tracing()  # type: ignore[attr-defined,no-untyped-call]
        if not tracing:
            return super().forward(x)
        (h_in, w_in), (h_out, w_out) = self.input_size, self.target_size
        rows, cols = _pool_matrix(h_in, h_out).to(x.dtype), _pool_matrix(w_in, w_out).to(x.dtype)
        return rows @ x @ cols.T


class Unflatten(nn.Unflatten):
    """``nn.Unflatten`` of dimension 1, as a reshape with a free batch axis: the ONNX exporter
    writes unflatten with the traced batch size fixed."""

    def __init__(self, sizes: tuple[int, ...]) -> None:
        super().__init__(1, sizes)
        self.sizes = sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, *self.sizes)


def upscale_blocks(
    channels: int,
    height: int,
    width: int,
    target: tuple[int, int],
    cfg: CNNUpscaleModelInitConfig,
    up_every: int,
    group_sizes: tuple[int, ...] | list[int] = DEFAULT_LAYERS,
) -> tuple[nn.Sequential, int, int, int]:
    """EIR's ``setup_blocks``: the blocks and the (channels, H, W) they end with."""
    blocks = nn.Sequential()
    widths, c = [], 2**cfg.channel_exp_base
    for _ in group_sizes:
        widths.append(c)
        c = max(c // 2, 1)
    target_h, target_w = target

    def attend_if_small() -> None:
        if cfg.attention_inclusion_cutoff and height * width <= cfg.attention_inclusion_cutoff:
            blocks.add_module(f"block_{len(blocks)}", ConvAttentionBlock(channels, height, width, dropout_p=cfg.rb_do))

    attend_if_small()
    group, in_group, count = 0, 0, 0
    while height < target_h or width < target_w:
        block = CNNUpscaleResidualBlock(channels, height, width, widths[group], rb_do=cfg.rb_do)
        blocks.add_module(f"block_{len(blocks)}", block)
        channels, in_group, count = widths[group], in_group + 1, count + 1
        if in_group >= group_sizes[group] and group < len(group_sizes) - 1:
            group, in_group = group + 1, 0
        if count % up_every == 0:
            up_h, up_w = height < target_h, width < target_w
            up = UpSamplingResidualBlock(channels, height, width, upsample_height=up_h, upsample_width=up_w)
            blocks.add_module(f"block_{len(blocks)}_upsampling", up)
            height, width = height * (2 if up_h else 1), width * (2 if up_w else 1)
        attend_if_small()
    for _ in range(cfg.n_final_extra_blocks):
        blocks.add_module(
            f"block_{len(blocks)}", CNNUpscaleResidualBlock(channels, height, width, channels, rb_do=cfg.rb_do)
        )
    if cfg.allow_pooling and (height, width) != target:
        blocks.add_module("pooling", AdaptiveAvgPool2d(target, (height, width)))
        height, width = target
    return blocks, channels, height, width


class CNNUpscaleModel(nn.Module):
    """EIR's CNNUpscaleModel: fused vector -> ``initial_layer`` (Linear, GELU, one-channel map) ->
    ``blocks`` -> ``final_layer`` (1x1 convolution to the target's channels)."""

    def __init__(self, in_features: int, shape: tuple[int, int, int], cfg: CNNUpscaleModelInitConfig) -> None:
        super().__init__()
        channels, target_h, target_w = shape
        if target_h == 1:
            h, w = 1, in_features
        elif target_w == 1:
            h, w = in_features, 1
        else:
            ratio = math.sqrt((target_h * target_w) / in_features)
            h, w = int(target_h / ratio), int(target_w / ratio)
        if h < 1 or w < 1:
            raise ConfigError(
                f"the CNN output model cannot start a {target_h}x{target_w} map from {in_features} fused features"
            )
        first: nn.Module = nn.Identity() if h * w == in_features else nn.Linear(in_features, h * w)
        self.initial_layer = nn.Sequential(first, nn.GELU(), Unflatten((1, h, w)))
        up_every = cfg.up_every_n_blocks or DEFAULT_UP_EVERY
        self.blocks, c, self.final_height, self.final_width = upscale_blocks(
            1, h, w, (target_h, target_w), cfg, up_every
        )
        self.final_layer = nn.Conv2d(c, channels, kernel_size=1)
        self.out_features = channels * self.final_height * self.final_width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.final_layer(self.blocks(self.initial_layer(x)))
        return result


class TimeStepMixingBlock(nn.Module):
    """``x + LS(GRN(gelu(crossattn(norm(x), emb(t)))))``: each channel's (H*W) row attends to the
    timestep's embedding (one token of width H*W). The embedding table is ``time_embedding``."""

    def __init__(self, input_channels: int, input_height: int, input_width: int, n_time_steps: int) -> None:
        super().__init__()
        self.input_channels = input_channels
        self.input_height = input_height
        self.input_width = input_width
        dim = input_height * input_width
        self.norm_1 = nn.GroupNorm(1, input_channels)
        self.act_1 = nn.GELU()
        self.time_embedding = nn.Embedding(n_time_steps, dim)
        self.cross_attention = CrossAttention(dim, dim, heads=1, dim_head=dim)
        self.grn = GRN(input_channels)
        self.ls = LayerScale(input_channels, 1e-5)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        out = self.norm_1(x).flatten(2)  # (B, C, H*W)
        out = self.act_1(self.cross_attention(out, t_emb.unsqueeze(1)))
        out = out.reshape(x.shape)
        result: torch.Tensor = self.ls(self.grn(out)) + x
        return result


def context_shape(num_elements: int, shape: tuple[int, ...] | None) -> tuple[int, int, int]:
    """How a context input's features are read: (channels, height, width), tokens = channels."""
    if shape is None or len(shape) <= 1:
        return 1, 1, num_elements
    if len(shape) == 2:
        return shape[0], shape[1], 1
    return shape[0], shape[1], shape[2]


class CrossAttentionArrayOutBlock(nn.Module):
    """``x + LS(GRN(conv(gelu(crossattn(norm(dwconv(x)), context)))))``: each channel's (H*W) row
    attends to the context's tokens (its channels, each of width H*W of the context)."""

    def __init__(
        self,
        input_channels: int,
        input_height: int,
        input_width: int,
        context_num_elements: int,
        context_dimension: tuple[int, ...] | None,
    ) -> None:
        super().__init__()
        self.input_channels = input_channels
        self.input_height = input_height
        self.input_width = input_width
        self.context_channels, self.context_height, self.context_width = context_shape(
            context_num_elements, context_dimension
        )
        self.conv_ds = nn.Conv2d(input_channels, input_channels, 3, 1, 1, bias=False, groups=input_channels)
        self.norm_1 = nn.GroupNorm(1, input_channels)
        self.act_1 = nn.GELU()
        dim = input_height * input_width
        self.cross_attention = CrossAttention(dim, self.context_height * self.context_width, heads=1, dim_head=dim)
        self.conv_1 = nn.Conv2d(input_channels, input_channels, 3, 1, 1, bias=False)
        self.grn = GRN(input_channels)
        self.ls = LayerScale(input_channels, 1e-5)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        out = self.norm_1(self.conv_ds(x)).flatten(2)
        ctx = context.reshape(context.shape[0], self.context_channels, self.context_height * self.context_width)
        out = self.act_1(self.cross_attention(out, ctx)).reshape(x.shape)
        result: torch.Tensor = self.ls(self.grn(self.conv_1(out))) + x
        return result


class CNNPassThroughUpscaleModel(nn.Module):
    """EIR's CNNPassThroughUpscaleModel. ``linked`` is the (C, H, W) output shape of the input named
    like the output; ``contexts`` maps each other input to (feature count, output shape)."""

    def __init__(
        self,
        output_name: str,
        linked: tuple[int, int, int],
        contexts: dict[str, tuple[int, tuple[int, ...]]],
        shape: tuple[int, int, int],
        cfg: CNNUpscaleModelInitConfig,
        up_every: int,
        group_sizes: tuple[int, ...] | list[int],
        diffusion_time_steps: int | None,
    ) -> None:
        super().__init__()
        self.output_name = output_name
        c, h, w = linked
        self.initial_height, self.initial_width = h, w
        self.ca_layers = nn.ModuleDict(
            {
                name: nn.ModuleList(
                    CrossAttentionArrayOutBlock(c, h, w, n, out_shape) for _ in range(cfg.num_ca_blocks)
                )
                for name, (n, out_shape) in contexts.items()
            }
        )
        self.timestep_mixing_layer: nn.Module = nn.Identity()
        if diffusion_time_steps is not None:
            self.timestep_mixing_layer = TimeStepMixingBlock(c, h, w, diffusion_time_steps)
        target = (shape[1], shape[2])
        self.blocks, ch, self.final_height, self.final_width = upscale_blocks(
            c, h, w, target, cfg, up_every, group_sizes
        )
        self.final_layer = nn.Sequential(nn.Conv2d(ch, shape[0], kernel_size=1))
        self.out_features = shape[0] * self.final_height * self.final_width

    def timestep_embeddings(self, t: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.timestep_mixing_layer, TimeStepMixingBlock):
            raise ValueError("this output model has no diffusion timestep embedding")
        result: torch.Tensor = self.timestep_mixing_layer.time_embedding(t)
        return result

    def forward(self, features: dict[str, torch.Tensor], timesteps: torch.Tensor | None = None) -> torch.Tensor:
        out = features[self.output_name]
        if isinstance(self.timestep_mixing_layer, TimeStepMixingBlock):
            if timesteps is None:
                raise ValueError(f"the diffusion output {self.output_name!r} needs its timesteps")
            out = self.timestep_mixing_layer(out, self.timestep_embeddings(timesteps))
        for name, blocks in self.ca_layers.items():
            assert isinstance(blocks, nn.ModuleList)
            for block in blocks:
                out = block(out, features[name])
        result: torch.Tensor = self.final_layer(self.blocks(out))
        return result


class CNNOutputHead(nn.Module):
    """EIR's ArrayOutputWrapperModule around a CNN output model: ``feature_extractor``, then
    ``projection_head`` to exactly C*H*W values, reshaped to (C, H, W)."""

    def __init__(self, model: CNNUpscaleModel | CNNPassThroughUpscaleModel, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = shape
        self.n_out = math.prod(shape)
        self.feature_extractor = model
        self.projection_head = projection_head(model.out_features, self.n_out)

    def forward(self, x: Any, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(self.feature_extractor, CNNPassThroughUpscaleModel):
            out = self.feature_extractor(x, timesteps)
        else:
            out = self.feature_extractor(x)
        out = self.projection_head(out.flatten(1))[:, : self.n_out]
        result: torch.Tensor = out.reshape(out.shape[0], *self.shape)
        return result

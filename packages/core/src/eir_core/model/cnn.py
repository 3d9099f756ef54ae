"""The CNN feature extractor of an array input, by EIR 0.25.0's rules (``model_type: cnn``).

``input_modules.<name>.feature_extractor`` is ``pos_representation`` (a learned (H, W) table
added to every channel), ``conv`` (the blocks below, in order) and ``final_layer`` (identity, or
flatten + Linear to ``num_output_features``). Its output is (C, H, W) (flattened for the MLP
fusion; passed as it is to a diffusion output).

``conv`` holds:

* ``0``: a first convolution (kernel ``kernel_* x first_kernel_expansion_*``, stride
  ``down_stride_* x first_stride_expansion_*``, both rounded), ``2**channel_exp_base x
  first_channel_expansion`` channels. Unless ``allow_first_conv_size_reduction``, a stride-1
  first convolution is padded to keep the size.
* for group i of ``layers`` (or the automatic counts, see :func:`auto_layers`), that many
  residual blocks of ``2**(channel_exp_base + i)`` channels; after every
  ``down_sample_every_n_blocks``-th residual block a down-sampling block (stride 2 along each
  axis longer than 1).
* after the first convolution and after each residual block (and its down-sampling): a
  self-attention block when the map has at most ``attention_inclusion_cutoff`` positions.

Each convolution's kernel, stride, dilation and padding come from :func:`conv_params`: the
closest settings (each within +-1 of the asked ones) that give the wanted output size exactly.
"""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
from dataclasses import dataclass

import torch
from torch import nn

from eir_core.config.schema import CNNModelInitConfig
from eir_core.errors import ConfigError
from eir_core.model import layers
from eir_core.model.cnn_layers import GRN, ConvAttentionBlock, ECABlock, LayerScale

MAX_AUTO_BLOCKS = 1000  # EIR's automatic rule loops for ever where sizes stop shrinking above the cutoff


def conv_out(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True)
class ConvParams:
    kernel: int
    target: int
    stride: int
    dilation: int
    padding: int


def _exact_padding(size: int, target: int, kernel: int, stride: int, dilation: int) -> int | None:
    """The padding p >= 0 with (size + 2p - dilation(kernel - 1) - 1) / stride + 1 == target exactly."""
    twice = (target - 1) * stride - size + dilation * (kernel - 1) + 1
    return twice // 2 if twice >= 0 and twice % 2 == 0 else None


def conv_params(size: int, kernel: int, stride: int, dilation: int, allow_reduction: bool = False) -> ConvParams:
    """EIR's choice of convolution settings along one axis. The wanted output is ``size`` for a
    stride of 1 (unless ``allow_reduction``), else the unpadded output. Among kernels, targets,
    strides and dilations within +-1 of the asked ones (all >= 1) that some padding reaches
    exactly, the one closest to what was asked wins (a target off by one costs 10, padding costs
    its size), ties going to the smallest settings."""
    target = size if stride == 1 and not allow_reduction else conv_out(size, kernel, stride, 0, dilation)
    target = max(1, target)
    best: tuple[tuple[int, ...], ConvParams] | None = None
    for k in _near(kernel):
        for t in _near(target):
            for s in _near(stride):
                for d in _near(dilation):
                    p = _exact_padding(size, t, k, s, d)
                    if p is None:
                        continue
                    cost = abs(k - kernel) + abs(s - stride) + abs(d - dilation) + p + 10 * abs(t - target)
                    key = (cost, k, s, d, p, t)
                    if best is None or key < best[0]:
                        best = (key, ConvParams(k, t, s, d, p))
    if best is None:
        raise ConfigError(
            f"no convolution settings reach the wanted size for input size {size}, kernel {kernel}, "
            f"stride {stride}, dilation {dilation}: adjust the kernel or stride"
        )
    return best[1]


def _near(value: int) -> list[int]:
    return [v for v in (value, value + 1, value - 1) if v > 0]


def block_dilation(factor: int, size: int, block_number: int, kernel: int) -> int:
    """``factor ** block_number``, divided by ``factor`` until the dilated kernel fits ``size``."""
    if size == 1 or kernel == 1:
        return 1
    dilation = int(factor**block_number)
    fits = max(1, (size - 1) // (kernel - 1))
    while dilation > fits:
        dilation //= factor
    return dilation


def _first_kernel_stride(cfg: CNNModelInitConfig, axis: str) -> tuple[int, int]:
    kernel = round(getattr(cfg, f"kernel_{axis}") * getattr(cfg, f"first_kernel_expansion_{axis}"))
    stride = round(getattr(cfg, f"down_stride_{axis}") * getattr(cfg, f"first_stride_expansion_{axis}"))
    return int(kernel), int(stride)


def auto_layers(height: int, width: int, cfg: CNNModelInitConfig) -> list[int]:
    """EIR's block counts when ``layers`` is not given: simulate the map's size (halved before every
    ``down_sample_every_n_blocks``-th block, counting from the first) until one more block would
    leave fewer than ``cutoff`` positions, cannot shrink it (without down-sampling), or would need a
    kernel larger than the map. Blocks fill groups two at a time, the ninth and later go to the third."""
    down_every = cfg.down_sample_every_n_blocks
    if down_every == 0:
        raise ConfigError("model_init_config.down_sample_every_n_blocks=0 with automatic layers: EIR divides by it")
    sizes = []
    for axis, size in (("width", width), ("height", height)):
        kernel, stride = _first_kernel_stride(cfg, axis)
        dilation = getattr(cfg, f"dilation_factor_{axis}")
        first = conv_params(size, kernel, stride, dilation)
        sizes.append(conv_out(size, first.kernel, stride, first.padding, dilation))
    w, h = sizes
    counts = [0, 0, 0, 0]
    for _ in range(MAX_AUTO_BLOCKS):
        n = sum(counts)
        if down_every is not None and n % down_every == 0:
            w, h = max(1, w // 2), max(1, h // 2)
        pw = conv_params(w, cfg.kernel_width, cfg.down_stride_width, cfg.dilation_factor_width)
        ph = conv_params(h, cfg.kernel_height, cfg.down_stride_height, cfg.dilation_factor_height)
        next_w = conv_out(w, pw.kernel, pw.stride, pw.padding, pw.dilation)
        next_h = conv_out(h, ph.kernel, ph.stride, ph.padding, ph.dilation)
        stuck = next_w == w and next_h == h
        if next_w * next_h < cfg.cutoff or (stuck and down_every is None) or pw.kernel > w or ph.kernel > h:
            return [c for c in counts if c]
        counts[2 if n >= 8 else n // 2] += 1
        w, h = next_w, next_h
    raise ConfigError(
        f"model_init_config: EIR's automatic rule finds no end for a {height}x{width} input with cutoff "
        f"{cfg.cutoff} (the size stops shrinking above it): set layers or a larger cutoff"
    )


class GeneralPositionalEmbedding(nn.Module):
    """A learned (1, H, W) table, zero at the start, added to every channel of the input."""

    def __init__(self, height: int, width: int, dropout_p: float = 0.0) -> None:
        super().__init__()
        self.dropout = layers.Dropout(dropout_p)
        self.embedding = nn.Parameter(torch.zeros(1, height, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.dropout(x + self.embedding)
        return result


class FirstCNNBlock(nn.Module):
    """The first convolution alone (``conv.0.conv_1``)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv_1 = conv
        self.out_channels = conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.conv_1(x)
        return result


def _conv2(kernel: int, dilation: int) -> tuple[int, int]:
    """The second convolution of a residual block keeps the size: an odd kernel (one less than an
    even first kernel), padded by half of it times the dilation."""
    k = kernel - 1 if kernel % 2 == 0 else kernel
    return k, (k // 2) * dilation


class CNNResidualBlock(nn.Module):
    """``x' + SD(LS(ECA(conv_2(drop(GRN(gelu(conv_1(norm(dwconv(x))))))))))``, where the shortcut ``x'``
    is a convolution like ``conv_1`` (with bias) when the size or the channels change, and reads the
    normalized input in the first block of the trunk (full pre-activation)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        h: ConvParams,
        w: ConvParams,
        rb_do: float,
        stochastic_depth_p: float,
        full_preact: bool,
        conv_identity: bool,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.full_preact = full_preact
        shape = {
            "kernel_size": (h.kernel, w.kernel),
            "stride": (h.stride, w.stride),
            "padding": (h.padding, w.padding),
            "dilation": (h.dilation, w.dilation),
        }
        self.rb_do = nn.Dropout2d(rb_do)
        self.conv_ds = nn.Conv2d(in_channels, in_channels, 3, stride=1, padding=1, bias=False, groups=in_channels)
        self.act_1 = nn.GELU()
        self.norm_1 = nn.GroupNorm(1, in_channels)
        self.conv_1 = nn.Conv2d(in_channels, out_channels, bias=False, **shape)  # type: ignore[arg-type]
        self.grn = GRN(out_channels)
        (kh, ph), (kw, pw) = _conv2(h.kernel, h.dilation), _conv2(w.kernel, w.dilation)
        self.conv_2 = nn.Conv2d(
            out_channels, out_channels, (kh, kw), padding=(ph, pw), dilation=(h.dilation, w.dilation), bias=False
        )
        self.downsample_identity: nn.Module = (
            nn.Conv2d(in_channels, out_channels, bias=True, **shape)  # type: ignore[arg-type]
            if conv_identity
            else nn.Identity()
        )
        self.stochastic_depth = layers.StochasticDepth(stochastic_depth_p)
        self.eca_block = ECABlock(out_channels)
        self.ls = LayerScale(out_channels, 1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm_1(self.conv_ds(x))
        identity = self.downsample_identity(out if self.full_preact else x)
        out = self.rb_do(self.grn(self.act_1(self.conv_1(out))))
        out = self.stochastic_depth(self.ls(self.eca_block(self.conv_2(out))))
        result: torch.Tensor = out + identity
        return result


class DownSamplingResidualBlock(nn.Module):
    """Halves each axis longer than 1: ``conv(x) + LS(GRN(conv(gelu(norm(x)))))`` with 3x3 stride-2 convolutions."""

    def __init__(self, in_channels: int, in_height: int, in_width: int) -> None:
        super().__init__()
        self.in_channels = self.out_channels = in_channels
        self.in_height = in_height
        self.in_width = in_width
        stride = (1 if in_height == 1 else 2, 1 if in_width == 1 else 2)
        self.norm_1 = nn.GroupNorm(1, in_channels)
        self.act_1 = nn.GELU()
        self.conv_1 = nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, bias=False)
        self.identity = nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, bias=False)
        self.grn = GRN(in_channels)
        self.ls = LayerScale(in_channels, 1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.ls(self.grn(self.conv_1(self.act_1(self.norm_1(x)))))
        result: torch.Tensor = out + self.identity(x)
        return result


def size_after(block: nn.Module, height: int, width: int, where: str) -> tuple[int, int]:
    """(H, W) after a block's convolutions (its children named ``conv*``, in order), checked as EIR does."""
    for name, conv in block.named_children():
        if "conv" not in name:
            continue
        assert isinstance(conv, nn.Conv2d)
        k, s, p, d = conv.kernel_size, conv.stride, conv.padding, conv.dilation
        assert isinstance(p, tuple)
        if k[0] > height + 2 * p[0] or k[1] > width + 2 * p[1]:
            raise ConfigError(
                f"model_init_config: the kernel {tuple(k)} of {where}.{name} exceeds its padded {height}x{width} "
                "input: use a smaller kernel"
            )
        height, width = conv_out(height, k[0], s[0], p[0], d[0]), conv_out(width, k[1], s[1], p[1], d[1])
        if height < 1 or width < 1:
            raise ConfigError(f"model_init_config: {where}.{name} leaves no output: adjust kernel, stride or dilation")
    return height, width


def conv_blocks(shape: tuple[int, int, int], cfg: CNNModelInitConfig) -> tuple[list[nn.Module], int, int]:
    """The blocks of ``conv`` and the map's (H, W) after them."""
    channels, height, width = shape
    firsts = []
    for axis, size in (("height", height), ("width", width)):
        kernel, stride = _first_kernel_stride(cfg, axis)
        dilation = getattr(cfg, f"dilation_factor_{axis}")
        firsts.append((conv_params(size, kernel, stride, dilation, cfg.allow_first_conv_size_reduction), stride))
    (ph, sh), (pw, sw) = firsts
    first = nn.Conv2d(
        channels,
        2**cfg.channel_exp_base * cfg.first_channel_expansion,
        (ph.kernel, pw.kernel),
        stride=(sh, sw),
        padding=(ph.padding, pw.padding),
        dilation=(ph.dilation, pw.dilation),
        bias=False,
    )
    blocks: list[nn.Module] = [FirstCNNBlock(first)]
    h, w = size_after(blocks[0], height, width, "conv.0")
    ch = first.out_channels
    cutoff = cfg.attention_inclusion_cutoff

    def attend_if_small() -> None:
        if cutoff and h * w <= cutoff:
            blocks.append(ConvAttentionBlock(ch, h, w))

    attend_if_small()
    n_res = 0
    for group, count in enumerate(cfg.layers or auto_layers(height, width, cfg)):
        for _ in range(count):
            n_res += 1
            dw = block_dilation(cfg.dilation_factor_width, w, n_res, cfg.kernel_width)
            dh = block_dilation(cfg.dilation_factor_height, h, n_res, cfg.kernel_height)
            pw = conv_params(w, cfg.kernel_width, cfg.down_stride_width, dw)
            ph = conv_params(h, cfg.kernel_height, cfg.down_stride_height, dh)
            out_ch = 2 ** (cfg.channel_exp_base + group)
            same = ph.target == h and pw.target == w and ch == out_ch
            block = CNNResidualBlock(
                ch, out_ch, ph, pw, cfg.rb_do, cfg.stochastic_depth_p, len(blocks) == 1, conv_identity=not same
            )
            h, w = size_after(block, h, w, f"conv.{len(blocks)}")
            blocks.append(block)
            ch = out_ch
            if cfg.down_sample_every_n_blocks and n_res % cfg.down_sample_every_n_blocks == 0:
                down = DownSamplingResidualBlock(ch, h, w)
                h, w = size_after(down, h, w, f"conv.{len(blocks)}")
                blocks.append(down)
            attend_if_small()
    return blocks, h, w


class CNNModel(nn.Module):
    """``pos_representation -> conv -> final_layer`` (EIR's CNNModel) on a (B, C, H, W) input."""

    def __init__(self, shape: tuple[int, int, int], cfg: CNNModelInitConfig) -> None:
        super().__init__()
        _, height, width = shape
        self.pos_representation = GeneralPositionalEmbedding(height, width)
        blocks, h, w = conv_blocks(shape, cfg)
        self.conv = nn.Sequential(*blocks)
        channels: int = blocks[-1].out_channels  # type: ignore[assignment]
        self.output_shape = (channels, h, w)
        self.final_layer: nn.Module = nn.Identity()
        self.out_features = channels * h * w
        if cfg.num_output_features > 0:
            self.final_layer = nn.Sequential(nn.Flatten(1), nn.Linear(self.out_features, cfg.num_output_features))
            self.out_features = cfg.num_output_features
        for m in self.modules():  # EIR's init of every 2-D convolution
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.5, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.final_layer(self.conv(self.pos_representation(x)))
        return result


class CNNInputExtractor(nn.Module):
    """EIR's ArrayWrapperModel around a CNNModel (no pre-normalization)."""

    def __init__(self, shape: tuple[int, int, int], cfg: CNNModelInitConfig) -> None:
        super().__init__()
        self.feature_extractor = CNNModel(shape, cfg)
        self.out_features = self.feature_extractor.out_features
        self.output_shape = self.feature_extractor.output_shape
        self.flat_output = cfg.num_output_features > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.feature_extractor(x)
        return result

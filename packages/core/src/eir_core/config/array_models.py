"""The ``model_config`` sections of array inputs and outputs: which model, and its init config.

``model_type`` selects the schema ``model_init_config`` is validated with (``lcl`` or ``cnn``),
so an unknown key is an error naming it, as everywhere else. Keys and defaults are EIR 0.25.0's
(``LCLModelConfig``, ``CNNModelConfig`` for inputs; ``LCLOutputModelConfig``,
``CNNUpscaleModelConfig`` for outputs). ``schema.py`` re-exports every class here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core.core_schema import ValidatorFunctionWrapHandler


class _Strict(BaseModel):  # the same rules as schema.Strict (which imports this module)
    model_config = ConfigDict(extra="forbid", frozen=True)


class LCLModelInitConfig(_Strict):
    patch_size: list[int] | None = None
    layers: list[int] | None = None
    kernel_width: int | Literal["patch"] = 12
    first_kernel_expansion: int = -2
    channel_exp_base: int = Field(2, ge=0, le=10)
    first_channel_expansion: int = 1  # negative: divide (EIR); the model refuses 0 sets
    num_lcl_chunks: int | None = None
    rb_do: float = Field(0.10, ge=0, lt=1)
    stochastic_depth_p: float = Field(0.0, ge=0, lt=1)
    l1: float = Field(0.0, ge=0)
    cutoff: int | Literal["auto"] = 1024
    direction: Literal["down", "up"] = "down"
    attention_inclusion_cutoff: int | None = None

    @field_validator("kernel_width")
    @classmethod
    def _positive_kernel(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("kernel_width must be >= 1")
        return v


class OutputLCLModelInitConfig(LCLModelInitConfig):
    # For an output head "auto" means: the output's element count (see model/meta.py).
    cutoff: int | Literal["auto"] = "auto"


class CNNModelInitConfig(_Strict):
    """EIR's ``CNNModelConfig``: an array input's convolutional feature extractor (model/cnn.py).

    ``layers`` None: EIR's automatic rule picks the block counts from the size after the first
    convolution, ``cutoff`` and the strides. ``l1`` is accepted and refused when set
    (config/unsupported.py): the training here has no L1 penalty on the first convolution."""

    layers: list[Annotated[int, Field(ge=1)]] | None = None
    num_output_features: int = Field(0, ge=0)
    channel_exp_base: int = Field(2, ge=0, le=12)
    first_channel_expansion: int = Field(1, ge=1)
    kernel_width: int = Field(12, ge=1)
    first_kernel_expansion_width: float = Field(1.0, gt=0)
    down_stride_width: int = Field(4, ge=1)
    first_stride_expansion_width: float = Field(1.0, gt=0)
    dilation_factor_width: int = Field(1, ge=1)
    kernel_height: int = Field(4, ge=1)
    first_kernel_expansion_height: float = Field(1.0, gt=0)
    down_stride_height: int = Field(1, ge=1)
    first_stride_expansion_height: float = Field(1.0, gt=0)
    dilation_factor_height: int = Field(1, ge=1)
    allow_first_conv_size_reduction: bool = True
    down_sample_every_n_blocks: int | None = Field(2, ge=0)
    cutoff: int = Field(32, ge=1)
    rb_do: float = Field(0.0, ge=0, le=1)
    stochastic_depth_p: float = Field(0.0, ge=0, le=1)
    attention_inclusion_cutoff: int = Field(256, ge=0)  # 0: no attention blocks
    l1: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _strides_within_kernels(self) -> CNNModelInitConfig:
        for axis in ("width", "height"):
            kernel, stride = getattr(self, f"kernel_{axis}"), getattr(self, f"down_stride_{axis}")
            if stride > kernel:
                raise ValueError(f"down_stride_{axis} ({stride}) must not exceed kernel_{axis} ({kernel}) (as in EIR)")
            first_kernel = round(kernel * getattr(self, f"first_kernel_expansion_{axis}"))
            first_stride = round(stride * getattr(self, f"first_stride_expansion_{axis}"))
            if first_stride > first_kernel:
                raise ValueError(
                    f"the first convolution's {axis} stride ({first_stride} = down_stride_{axis} x "
                    f"first_stride_expansion_{axis}, rounded) must not exceed its kernel ({first_kernel} = "
                    f"kernel_{axis} x first_kernel_expansion_{axis}, rounded) (as in EIR)"
                )
            if first_kernel < 1 or first_stride < 1:
                raise ValueError(f"the first convolution's {axis} kernel and stride round to 0: use larger expansions")
        return self


class CNNUpscaleModelInitConfig(_Strict):
    """EIR's ``CNNUpscaleModelConfig``: an array output's convolutional upscaling model
    (model/cnn_output.py). ``channel_exp_base`` is required, as in EIR. ``stochastic_depth_p``
    is accepted and, as in EIR 0.25.0, not used by any block."""

    channel_exp_base: int = Field(ge=0, le=12)
    rb_do: float = Field(0.1, ge=0, le=1)
    stochastic_depth_p: float = Field(0.1, ge=0, le=1)
    attention_inclusion_cutoff: int = Field(256, ge=0)  # 0: no attention blocks
    allow_pooling: bool = True
    num_ca_blocks: int = Field(1, ge=0)
    up_every_n_blocks: int | None = Field(None, ge=0)  # None/0: the linked input's, else 2
    n_final_extra_blocks: int = Field(1, ge=0)


def _pick_init_config(v: Any, info: ValidationInfo, kinds: dict[str, type[_Strict]], default: Any) -> Any:
    """Validate ``model_init_config`` with the schema of the section's ``model_type`` (errors keep
    their key paths). The field's default (an LCL config) stands for "all defaults" of any kind."""
    kind = info.data.get("model_type", "lcl")
    target = kinds.get(kind, kinds["lcl"])
    if isinstance(v, target):
        return v
    if v is default:
        v = {}
    elif isinstance(v, BaseModel):
        raise ValueError(f"a {type(v).__name__} does not configure model_type {kind}")
    return target.model_validate(v)


def _refuse(data: Any, refused: tuple[str, ...]) -> Any:
    kind = data.get("model_type", "lcl") if isinstance(data, dict) else "lcl"
    if kind in refused:
        raise ValueError(f"supported by EIR, not implemented here: model_type={kind}")
    return data


_DEFAULT_LCL = LCLModelInitConfig()
_DEFAULT_OUTPUT_LCL = OutputLCLModelInitConfig()


class ArrayModelConfig(_Strict):
    model_type: Literal["lcl", "cnn", "transformer"] = "lcl"
    model_init_config: LCLModelInitConfig | CNNModelInitConfig = Field(_DEFAULT_LCL, validate_default=True)
    pre_normalization: Literal["instancenorm", "layernorm"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _implemented_types(cls, data: Any) -> Any:
        return _refuse(data, ("transformer",))

    @field_validator("model_init_config", mode="wrap")
    @classmethod
    def _by_model_type(cls, v: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        return _pick_init_config(v, info, {"lcl": LCLModelInitConfig, "cnn": CNNModelInitConfig}, _DEFAULT_LCL)


class ArrayOutputModelConfig(_Strict):
    model_type: Literal["lcl", "cnn"] = "lcl"
    model_init_config: OutputLCLModelInitConfig | CNNUpscaleModelInitConfig = Field(
        _DEFAULT_OUTPUT_LCL, validate_default=True
    )
    pre_normalization: Literal["instancenorm", "layernorm"] | None = None

    @field_validator("model_init_config", mode="wrap")
    @classmethod
    def _by_model_type(cls, v: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        kinds: dict[str, type[_Strict]] = {"lcl": OutputLCLModelInitConfig, "cnn": CNNUpscaleModelInitConfig}
        return _pick_init_config(v, info, kinds, _DEFAULT_OUTPUT_LCL)

"""Pydantic models of EIR's config files, with EIR's key names and defaults.

Every model forbids unknown keys, so a typo is an error naming the key (see ``load.py`` for
the messages). Options that EIR accepts but this project does not implement are still
accepted as keys; ``unsupported.unsupported_options`` reports any set to a non-default value,
so a user learns "supported by EIR, not implemented here" instead of "unknown key".
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from eir_core.config.array_models import ArrayModelConfig as ArrayModelConfig
from eir_core.config.array_models import ArrayOutputModelConfig as ArrayOutputModelConfig
from eir_core.config.array_models import CNNModelInitConfig as CNNModelInitConfig
from eir_core.config.array_models import CNNUpscaleModelInitConfig as CNNUpscaleModelInitConfig
from eir_core.config.array_models import LCLModelInitConfig as LCLModelInitConfig
from eir_core.config.array_models import OutputLCLModelInitConfig as OutputLCLModelInitConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A path a user writes: ``~`` and ``~user`` mean home folders, as in a shell (not a folder named ``~``).
UserPath = Annotated[str, AfterValidator(os.path.expanduser)]


# ----------------------------------------------------------------------------- globals


class BasicExperimentConfig(Strict):
    output_folder: UserPath
    n_epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    # <= 1 is a fraction of the IDs, > 1 a count (EIR casts it to int).
    valid_size: float = Field(0.1, gt=0)
    manual_valid_ids_file: UserPath | None = None
    dataloader_workers: int = Field(0, ge=0)
    device: str = "cpu"  # deprecated in EIR; accelerator.hardware decides
    memory_dataset: bool = False


class AcceleratorConfig(Strict):
    hardware: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "32-true"
    strategy: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1


class GlobalModelConfig(Strict):
    compile_model: bool = False
    n_iter_before_swa: int | None = None
    amp: bool = False
    pretrained_checkpoint: str | None = None
    strict_pretrained_loading: bool = True


OPTIMIZERS_HERE = ("adabelief", "adabeliefw", "adam", "adamw", "sgdm")


class OptimizationConfig(Strict):
    optimizer: str = "adamw"
    lr: float = Field(3e-4, gt=0)
    lr_lb: float = Field(0.0, ge=0)
    b1: float = Field(0.9, ge=0, lt=1)
    b2: float = Field(0.999, ge=0, lt=1)
    wd: float = Field(1e-4, ge=0)
    gradient_clipping: float | None = Field(1.0, ge=0)
    gradient_accumulation_steps: int | None = None
    gradient_noise: float = 0.0


class LRScheduleConfig(Strict):
    find_lr: bool = False
    lr_schedule: Literal["cycle", "plateau", "same", "cosine"] = "plateau"
    lr_plateau_patience: int = Field(10, ge=1)
    lr_plateau_factor: float = Field(0.2, gt=0, lt=1)
    warmup_steps: Literal["auto"] | int = "auto"
    plot_lr_schedule: bool = False


class TrainingControlConfig(Strict):
    early_stopping_patience: int = Field(10, ge=0)
    early_stopping_buffer: int | None = None
    weighted_sampling_columns: list[str] | None = None
    mixing_alpha: float = 0.0


class EvaluationCheckpointConfig(Strict):
    sample_interval: int = Field(200, ge=1)
    saved_result_detail_level: int = Field(5, ge=1, le=5)
    checkpoint_interval: int | None = Field(None, ge=1)
    n_saved_models: int = Field(1, ge=1)


class AttributionAnalysisConfig(Strict):
    compute_attributions: bool = False
    max_attributions_per_class: int | None = None
    attributions_every_sample_factor: int = 1
    attribution_background_samples: int = 256


class SupervisedMetricsConfig(Strict):
    cat_metrics: list[str] = ["mcc", "acc", "roc-auc-macro", "ap-macro"]
    con_metrics: list[str] = ["r2", "pcc", "loss"]
    cat_averaging_metrics: list[str] | None = None
    con_averaging_metrics: list[str] | None = None


class VisualizationLoggingConfig(Strict):
    plot_skip_steps: int = Field(200, ge=0)
    no_pbar: bool = False
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"


class DataPreparationConfig(Strict):
    streaming_setup_samples: int = 10000
    streaming_batch_size: int | None = None


class LatentSamplingConfig(Strict):
    layers_to_sample: list[str]
    max_samples_for_viz: int | None = Field(10000, ge=1)
    batch_size_for_saving: int = Field(1000, ge=1)


class GlobalConfig(Strict):
    basic_experiment: BasicExperimentConfig
    accelerator: AcceleratorConfig = AcceleratorConfig()
    model: GlobalModelConfig = GlobalModelConfig()
    optimization: OptimizationConfig = OptimizationConfig()
    lr_schedule: LRScheduleConfig = LRScheduleConfig()
    training_control: TrainingControlConfig = TrainingControlConfig()
    evaluation_checkpoint: EvaluationCheckpointConfig = EvaluationCheckpointConfig()
    attribution_analysis: AttributionAnalysisConfig = AttributionAnalysisConfig()
    metrics: SupervisedMetricsConfig = SupervisedMetricsConfig()
    visualization_logging: VisualizationLoggingConfig = VisualizationLoggingConfig()
    data_preparation: DataPreparationConfig = DataPreparationConfig()
    latent_sampling: LatentSamplingConfig | None = None

    @model_validator(mode="after")
    def _checkpoint_multiple_of_sample(self) -> GlobalConfig:
        ec = self.evaluation_checkpoint
        if ec.checkpoint_interval is not None and ec.checkpoint_interval % ec.sample_interval:
            raise ValueError(
                f"evaluation_checkpoint.checkpoint_interval ({ec.checkpoint_interval}) must be "
                f"a multiple of sample_interval ({ec.sample_interval}): a checkpoint is scored "
                "by the validation that runs at the same iteration"
            )
        return self


# ----------------------------------------------------------------------------- models

# The array model sections (LCL and CNN init configs, chosen by model_type): array_models.py.


class TabularModelInitConfig(Strict):
    l1: float = Field(0.0, ge=0)
    fc_layer: bool = False


class TabularModelConfig(Strict):
    model_type: Literal["tabular"] = "tabular"
    model_init_config: TabularModelInitConfig = TabularModelInitConfig()


# ----------------------------------------------------------------------------- inputs

INPUT_TYPES = ("omics", "tabular", "sequence", "image", "bytes", "array")


class InputInfo(Strict):
    input_source: UserPath
    input_name: str
    input_type: Literal["omics", "tabular", "sequence", "image", "bytes", "array"]
    input_inner_key: str | None = None


class ArrayInputTypeInfo(Strict):
    normalization: Literal["element", "channel"] | None = "channel"
    adaptive_normalization_max_samples: int | None = Field(None, ge=1)
    mixing_subtype: Literal["mixup", "cutmix-block", "cutmix-uniform"] = "mixup"
    modality_dropout_rate: float = Field(0.0, ge=0, le=1)


class TabularInputTypeInfo(Strict):
    input_cat_columns: list[str] = []
    input_con_columns: list[str] = []
    label_parsing_chunk_size: int | None = None
    mixing_subtype: Literal["mixup"] = "mixup"
    modality_dropout_rate: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _columns(self) -> TabularInputTypeInfo:
        both = set(self.input_cat_columns) & set(self.input_con_columns)
        if both:
            raise ValueError(f"columns listed as both categorical and continuous: {sorted(both)}")
        if not self.input_cat_columns and not self.input_con_columns:
            raise ValueError("a tabular input needs input_cat_columns or input_con_columns")
        return self


class _InputConfigBase(Strict):
    input_info: InputInfo
    pretrained_config: dict[str, Any] | None = None
    interpretation_config: dict[str, Any] | None = None
    tensor_broker_config: dict[str, Any] | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    @property
    def name(self) -> str:
        return self.input_info.input_name

    @property
    def type(self) -> str:
        return self.input_info.input_type


class ArrayInputConfig(_InputConfigBase):
    input_type_info: ArrayInputTypeInfo = ArrayInputTypeInfo()
    model_config_: ArrayModelConfig = Field(ArrayModelConfig(), alias="model_config")


class TabularInputConfig(_InputConfigBase):
    input_type_info: TabularInputTypeInfo
    model_config_: TabularModelConfig = Field(TabularModelConfig(), alias="model_config")


def _input_kind(value: Any) -> str | None:
    info = value.get("input_info") if isinstance(value, dict) else value.input_info
    kind = info.get("input_type") if isinstance(info, dict) else getattr(info, "input_type", None)
    return kind if kind in ("array", "tabular") else None


InputConfig = Annotated[
    Annotated[ArrayInputConfig, Tag("array")] | Annotated[TabularInputConfig, Tag("tabular")],
    Discriminator(_input_kind),
]


# ----------------------------------------------------------------------------- outputs


class OutputInfo(Strict):
    output_source: UserPath
    output_name: str
    output_type: Literal["tabular", "sequence", "array", "image", "survival"]
    output_inner_key: str | None = None


class ArrayOutputTypeInfo(Strict):
    normalization: Literal["element", "channel"] | None = "channel"
    adaptive_normalization_max_samples: int | None = Field(None, ge=1)
    loss: Literal["mse", "diffusion"] = "mse"
    diffusion_time_steps: int | None = Field(500, ge=1)
    diffusion_beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"] = "linear"


class ArrayOutputSamplingConfig(Strict):
    manual_inputs: list[dict[str, Any]] = []
    n_eval_inputs: int = Field(10, ge=0)
    diffusion_inference_steps: int = Field(500, ge=1)
    diffusion_sampler: Literal["ddpm", "ddim", "dpm_solver"] = "ddpm"
    diffusion_eta: float = Field(0.2, ge=0, allow_inf_nan=False)
    # Beyond EIR: classifier-free guidance at sampling (None: off, one conditional pass as in
    # EIR). Needs a conditioning input trained with modality_dropout_rate > 0 (config/diffusion_rules.py).
    diffusion_guidance_scale: float | None = Field(None, ge=0, allow_inf_nan=False)


class OutputConfig(Strict):
    output_info: OutputInfo
    output_type_info: ArrayOutputTypeInfo = ArrayOutputTypeInfo()
    model_config_: ArrayOutputModelConfig = Field(ArrayOutputModelConfig(), alias="model_config")
    sampling_config: ArrayOutputSamplingConfig = ArrayOutputSamplingConfig()
    tensor_broker_config: dict[str, Any] | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    @property
    def name(self) -> str:
        return self.output_info.output_name


# ----------------------------------------------------------------------------- fusion


class ResidualMLPConfig(Strict):
    layers: list[int] = [2]
    fc_task_dim: int = Field(256, ge=1)
    rb_do: float = Field(0.10, ge=0, lt=1)
    fc_do: float = Field(0.10, ge=0, lt=1)
    stochastic_depth_p: float = Field(0.10, ge=0, lt=1)

    @field_validator("layers")
    @classmethod
    def _one_entry(cls, v: list[int]) -> list[int]:
        if len(v) != 1 or v[0] < 1:
            raise ValueError("layers must be a list with one positive block count, e.g. [2]")
        return v


class FusionConfig(Strict):
    model_type: Literal["mlp-residual", "identity", "mgmoe", "pass-through", "linear", "attention"] = "mlp-residual"
    model_config_: ResidualMLPConfig = Field(ResidualMLPConfig(), alias="model_config")
    tensor_broker_config: dict[str, Any] | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


# ----------------------------------------------------------------------------- the whole


class ExperimentConfig(BaseModel):
    """Everything one training run is built from, after files and overrides are merged.
    Frozen, like every section: build a variant with ``model_copy(update=...)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    global_config: GlobalConfig
    input_configs: list[InputConfig]
    output_configs: list[OutputConfig]
    fusion_config: FusionConfig = FusionConfig()

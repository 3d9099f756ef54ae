"""What a run is, derived from its config and data: the model spec, the bundle's manifest,
and the resolved configs and model description written into the run folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from eir_core.config.schema import (
    ArrayInputConfig,
    CNNModelInitConfig,
    CNNUpscaleModelInitConfig,
    ExperimentConfig,
    OutputConfig,
)
from eir_core.data.dataset import ArrayColumn, RunData, TabularColumn
from eir_core.manifest import (
    ArrayInput,
    ArrayOutput,
    DiffusionInfo,
    InputEntry,
    Manifest,
    TabularInput,
    TrainingSummary,
)
from eir_core.model.meta import InputSpec, ModelSpec, OutputSpec


def array_input_spec(ic: ArrayInputConfig, shape: tuple[int, int, int]) -> InputSpec:
    init = ic.model_config_.model_init_config
    if isinstance(init, CNNModelInitConfig):
        return InputSpec(name=ic.name, type="array", shape=shape, model_type="cnn", cnn=init)
    return InputSpec(name=ic.name, type="array", shape=shape, lcl=init)


def output_spec(oc: OutputConfig, shape: tuple[int, int, int]) -> OutputSpec:
    """An output's spec; ``diffusion_time_steps`` is set for ``loss: diffusion`` only."""
    init = oc.model_config_.model_init_config
    ti = oc.output_type_info
    steps = ti.diffusion_time_steps if ti.loss == "diffusion" else None
    if isinstance(init, CNNUpscaleModelInitConfig):
        return OutputSpec(name=oc.name, shape=shape, model_type="cnn", cnn=init, diffusion_time_steps=steps)
    return OutputSpec(name=oc.name, shape=shape, lcl=init, diffusion_time_steps=steps)


def build_model_spec(cfg: ExperimentConfig, data: RunData) -> ModelSpec:
    inputs = []
    for ic in cfg.input_configs:
        col = data.inputs[ic.name]
        if isinstance(ic, ArrayInputConfig):
            assert isinstance(col, ArrayColumn)
            inputs.append(array_input_spec(ic, col.source.shape))
        else:
            assert isinstance(col, TabularColumn)
            enc = col.encoding
            inputs.append(
                InputSpec(
                    name=ic.name,
                    type="tabular",
                    cat_cardinalities={c: len(enc.categories[c]) for c in enc.cat_columns},
                    n_con=len(enc.con_columns),
                )
            )
    outputs = [output_spec(oc, data.outputs[oc.name].source.shape) for oc in cfg.output_configs]
    return ModelSpec(inputs=inputs, outputs=outputs, fusion=cfg.fusion_config.model_config_)


def build_manifest(
    cfg: ExperimentConfig, data: RunData, spec: ModelSpec, run_name: str, training: TrainingSummary
) -> Manifest:
    dropout = {ic.name: ic.input_type_info.modality_dropout_rate for ic in cfg.input_configs}
    inputs: list[InputEntry] = []
    for ic in cfg.input_configs:
        col = data.inputs[ic.name]
        if isinstance(col, ArrayColumn):
            inputs.append(
                ArrayInput(
                    name=ic.name,
                    shape=col.source.shape,
                    dtype=col.source.dtype.str,
                    original_shape=col.source.original_shape,
                    normalization=col.stats.kind,
                    modality_dropout_rate=dropout[ic.name],
                )
            )
        else:
            inputs.append(
                TabularInput.model_validate(
                    {"name": ic.name, "modality_dropout_rate": dropout[ic.name], **col.encoding.to_json()}
                )
            )
    by_name = {oc.name: oc for oc in cfg.output_configs}
    outputs = [
        ArrayOutput(
            name=n,
            shape=c.source.shape,
            source_dtype=c.source.dtype.str,
            original_shape=c.source.original_shape,
            normalization=c.stats.kind,
            diffusion=diffusion_info(cfg, by_name[n]),
        )
        for n, c in data.outputs.items()
    ]
    return Manifest(
        run_name=run_name,
        model_spec=spec,
        configs=cfg.model_dump(mode="json", by_alias=True),
        inputs=inputs,
        outputs=outputs,
        training=training,
    )


def diffusion_info(cfg: ExperimentConfig, oc: OutputConfig) -> DiffusionInfo | None:
    """The sampling record of a diffusion output (None for an MSE output)."""
    ti, sc = oc.output_type_info, oc.sampling_config
    if ti.loss != "diffusion":
        return None
    assert ti.diffusion_time_steps is not None  # config/diffusion_rules.py
    guidable = [
        ic.name for ic in cfg.input_configs if ic.name != oc.name and ic.input_type_info.modality_dropout_rate > 0
    ]
    return DiffusionInfo(
        time_steps=ti.diffusion_time_steps,
        beta_schedule=ti.diffusion_beta_schedule,
        inference_steps=sc.diffusion_inference_steps,
        sampler=sc.diffusion_sampler,
        eta=sc.diffusion_eta,
        guidance_scale=sc.diffusion_guidance_scale,
        guidable_inputs=guidable,
    )


def write_run_description(
    cfg: ExperimentConfig, run_dir: Path, model_text: str, n_params: int, record: Callable[[Path], None]
) -> None:
    """``configs/*.yaml`` (the resolved configs, as EIR writes them) and
    ``model_architecture/model_info.txt``."""
    d = run_dir / "configs"
    d.mkdir(exist_ok=True)
    dump = cfg.model_dump(mode="json", by_alias=True)
    for key in ("global_config", "input_configs", "output_configs", "fusion_config"):
        record(d / f"{key}.yaml")
        (d / f"{key}.yaml").write_text(yaml.safe_dump(dump[key], sort_keys=False))
    (run_dir / "model_architecture").mkdir(exist_ok=True)
    record(run_dir / "model_architecture" / "model_info.txt")
    (run_dir / "model_architecture" / "model_info.txt").write_text(f"{model_text}\n\nparameters: {n_params}\n")

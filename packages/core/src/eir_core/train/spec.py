"""What a run is, derived from its config and data: the model spec, the bundle's manifest,
and the resolved configs and model description written into the run folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from eir_core.config.schema import ArrayInputConfig, ExperimentConfig
from eir_core.data.dataset import ArrayColumn, RunData, TabularColumn
from eir_core.manifest import ArrayInput, ArrayOutput, InputEntry, Manifest, TabularInput, TrainingSummary
from eir_core.model.meta import InputSpec, ModelSpec, OutputSpec


def build_model_spec(cfg: ExperimentConfig, data: RunData) -> ModelSpec:
    inputs = []
    for ic in cfg.input_configs:
        col = data.inputs[ic.name]
        if isinstance(ic, ArrayInputConfig):
            assert isinstance(col, ArrayColumn)
            inputs.append(
                InputSpec(name=ic.name, type="array", shape=col.source.shape, lcl=ic.model_config_.model_init_config)
            )
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
    outputs = [
        OutputSpec(name=oc.name, shape=data.outputs[oc.name].source.shape, lcl=oc.model_config_.model_init_config)
        for oc in cfg.output_configs
    ]
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
    outputs = [
        ArrayOutput(
            name=n,
            shape=c.source.shape,
            source_dtype=c.source.dtype.str,
            original_shape=c.source.original_shape,
            normalization=c.stats.kind,
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

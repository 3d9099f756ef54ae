"""EIR options this project accepts as keys but does not build: which of them a config sets.

A valid EIR option that is not implemented here is refused with "supported by EIR, not
implemented here: KEY=VALUE" (never "unknown key"), so an EIR user knows what to change.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from eir_core.config.schema import OPTIMIZERS_HERE, ArrayInputConfig, CNNModelInitConfig, ExperimentConfig


def _set_options(model: BaseModel, prefix: str) -> list[tuple[str, Any]]:
    """Every (dotted key, value) in ``model`` whose value differs from the field default."""
    out: list[tuple[str, Any]] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        key = f"{prefix}{field.alias or name}"
        if isinstance(value, BaseModel):
            out.extend(_set_options(value, key + "."))
        elif not field.is_required() and value != field.default:
            out.append((key, value))
    return out


# EIR options this project accepts as keys but does not implement, with the value that
# means "off". Any other value is refused with a message saying exactly that.
_GLOBAL_UNSUPPORTED: dict[str, Any] = {
    "model.compile_model": False,
    "model.n_iter_before_swa": None,
    "model.amp": False,
    "model.pretrained_checkpoint": None,
    "optimization.gradient_accumulation_steps": None,
    "optimization.gradient_noise": 0.0,
    "lr_schedule.find_lr": False,
    "lr_schedule.plot_lr_schedule": False,
    "training_control.weighted_sampling_columns": None,
    "training_control.mixing_alpha": 0.0,
    "attribution_analysis.compute_attributions": False,
    "accelerator.strategy": "auto",
    "accelerator.num_nodes": 1,
}
_DEVICES_HERE = ("auto", 1, "1")


def unsupported_options(cfg: ExperimentConfig) -> list[str]:
    """Human-readable 'KEY=VALUE' entries for EIR options set to values not built here."""
    found: list[str] = []
    g = cfg.global_config
    for key, value in _set_options(g, ""):
        if key in _GLOBAL_UNSUPPORTED and value != _GLOBAL_UNSUPPORTED[key]:
            found.append(f"globals: {key}={value!r}")
    if g.lr_schedule.lr_schedule == "cycle":
        found.append("globals: lr_schedule.lr_schedule='cycle'")
    if g.optimization.optimizer not in OPTIMIZERS_HERE:
        found.append(f"globals: optimization.optimizer={g.optimization.optimizer!r}")
    if g.accelerator.devices not in _DEVICES_HERE:
        found.append(f"globals: accelerator.devices={g.accelerator.devices!r}")
    if g.accelerator.precision not in ("32-true", "32"):
        found.append(f"globals: accelerator.precision={g.accelerator.precision!r}")
    for ic in cfg.input_configs:
        where = f"input {ic.name!r}"
        if isinstance(ic, ArrayInputConfig):
            mc = ic.model_config_
            if mc.model_type == "transformer":  # refused by the schema already; kept for model_copy'd configs
                found.append(f"{where}: model_config.model_type={mc.model_type!r}")
            if isinstance(mc.model_init_config, CNNModelInitConfig) and mc.model_init_config.l1:
                found.append(f"{where}: model_config.model_init_config.l1={mc.model_init_config.l1!r}")
            if mc.pre_normalization is not None:
                found.append(f"{where}: model_config.pre_normalization={mc.pre_normalization!r}")
            if ic.input_type_info.mixing_subtype != "mixup":
                found.append(f"{where}: input_type_info.mixing_subtype={ic.input_type_info.mixing_subtype!r}")
        for key in ("pretrained_config", "interpretation_config", "tensor_broker_config"):
            if getattr(ic, key) is not None:
                found.append(f"{where}: {key}")
    for oc in cfg.output_configs:
        where = f"output {oc.name!r}"
        if oc.output_info.output_type != "array":
            found.append(f"{where}: output_info.output_type={oc.output_info.output_type!r}")
        if oc.model_config_.pre_normalization is not None:
            found.append(f"{where}: model_config.pre_normalization")
        if oc.tensor_broker_config is not None:
            found.append(f"{where}: tensor_broker_config")
    if cfg.fusion_config.model_type != "mlp-residual":
        found.append(f"fusion: model_type={cfg.fusion_config.model_type!r}")
    return found

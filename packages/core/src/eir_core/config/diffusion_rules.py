"""The rules a ``loss: diffusion`` output must follow, checked before anything is trained.

EIR's own rules (``setup/config_validation.py`` in 0.25): the output's model is a CNN; an input
with the output's name and source exists (it carries the noised array in training); inference
steps do not exceed the trained time steps. This project adds the rules its own choices need:
the noised input is an array that is never dropped (modality dropout on it would train the
model to denoise nothing), one diffusion output per run with no other outputs beside it (one
sampling loop per model), and classifier-free guidance only where some conditioning input
was trained with dropout (otherwise the unconditional branch was never learned).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from eir_core.config.schema import ArrayInputConfig, ExperimentConfig, OutputConfig
from eir_core.errors import ConfigError

if TYPE_CHECKING:
    from eir_core.diffusion import NoiseSchedule


def diffusion_outputs(cfg: ExperimentConfig) -> list[OutputConfig]:
    return [oc for oc in cfg.output_configs if oc.output_type_info.loss == "diffusion"]


def noise_schedules(cfg: ExperimentConfig) -> dict[str, NoiseSchedule]:
    """Output name -> the noise schedule it trains with, for each diffusion output."""
    outputs = diffusion_outputs(cfg)
    if not outputs:
        return {}
    from eir_core.diffusion import NoiseSchedule

    out = {}
    for oc in outputs:
        ti = oc.output_type_info
        assert ti.diffusion_time_steps is not None  # check_diffusion
        out[oc.name] = NoiseSchedule.build(ti.diffusion_time_steps, ti.diffusion_beta_schedule)
    return out


def check_diffusion(cfg: ExperimentConfig, output_files: Mapping[str, str]) -> None:
    """ConfigError naming the output's file and key for the first broken rule."""
    outputs = diffusion_outputs(cfg)
    if not outputs:
        return
    if len(cfg.output_configs) > 1:
        names = ", ".join(repr(oc.name) for oc in cfg.output_configs)
        raise ConfigError(
            f"{output_files.get(outputs[0].name, 'output config')}: a diffusion output trains alone here "
            f"(outputs given: {names}); train the other outputs in a run of their own"
        )
    oc = outputs[0]
    where = output_files.get(oc.name, f"output {oc.name!r}")
    ti, sc = oc.output_type_info, oc.sampling_config
    if oc.model_config_.model_type != "cnn":
        raise ConfigError(
            f"{where}: output_type_info.loss=diffusion needs model_config.model_type: cnn "
            f"(got {oc.model_config_.model_type!r}; EIR has the same rule)"
        )
    steps = ti.diffusion_time_steps
    if steps is None:
        raise ConfigError(f"{where}: output_type_info.diffusion_time_steps must be set for loss: diffusion (EIR: 500)")
    if sc.diffusion_inference_steps > steps:
        raise ConfigError(
            f"{where}: sampling_config.diffusion_inference_steps ({sc.diffusion_inference_steps}) must be <= "
            f"output_type_info.diffusion_time_steps ({steps})"
        )
    same = [ic for ic in cfg.input_configs if ic.name == oc.name]
    if not same:
        raise ConfigError(
            f"{where}: loss: diffusion needs an input config with input_name {oc.name!r} and the same "
            f"input_source ({oc.output_info.output_source}): it carries the noised array in training"
        )
    noised = same[0]
    if not isinstance(noised, ArrayInputConfig):
        raise ConfigError(f"{where}: the input {oc.name!r} that carries the noised array must be input_type: array")
    if noised.input_info.input_source != oc.output_info.output_source:
        raise ConfigError(
            f"{where}: the input {oc.name!r} reads {noised.input_info.input_source}, the output reads "
            f"{oc.output_info.output_source}; for diffusion both must be the same source"
        )
    if noised.input_type_info.modality_dropout_rate > 0:
        raise ConfigError(
            f"input {oc.name!r}: input_type_info.modality_dropout_rate must be 0 for the array a diffusion "
            "output denoises (it is replaced by noise at sampling anyway); set dropout on the conditioning "
            "inputs instead"
        )
    if sc.diffusion_guidance_scale is not None:
        dropped = [
            ic.name for ic in cfg.input_configs if ic.name != oc.name and ic.input_type_info.modality_dropout_rate > 0
        ]
        if not dropped:
            others = [ic.name for ic in cfg.input_configs if ic.name != oc.name]
            hint = (
                f"set input_type_info.modality_dropout_rate (e.g. 0.1) on {', '.join(repr(n) for n in others)}"
                if others
                else "add a conditioning input (e.g. the label) trained with modality_dropout_rate > 0"
            )
            raise ConfigError(
                f"{where}: sampling_config.diffusion_guidance_scale needs a conditioning input trained with "
                f"modality dropout (the unconditional model): {hint}"
            )

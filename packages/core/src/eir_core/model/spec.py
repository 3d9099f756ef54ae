"""The model's recorded architecture (:class:`ModelSpec`): plain data, without PyTorch, so that a
bundle's manifest can be read (and served by the ONNX runtime) without importing it.
``eir_core.model.meta.MetaModel`` builds the network from it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from eir_core.config.schema import (
    CNNModelInitConfig,
    CNNUpscaleModelInitConfig,
    LCLModelInitConfig,
    OutputLCLModelInitConfig,
    ResidualMLPConfig,
)

# Which set of building rules a spec is built with. 1: eir-lite's own rules (bundles written
# before the spec recorded this; their manifests have no "architecture" key). 2: EIR 0.25.0's.
ARCHITECTURE: Literal[1, 2] = 2


def timestep_key(output_name: str) -> str:
    """The batch key of a diffusion output's timesteps: an int64 (B,) tensor, embedded in the model."""
    return f"__timestep_{output_name}"


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    type: Literal["array", "tabular"]
    shape: tuple[int, int, int] | None = None  # array, channel first
    model_type: Literal["lcl", "cnn"] = "lcl"  # array
    lcl: LCLModelInitConfig | None = None  # array, model_type lcl
    cnn: CNNModelInitConfig | None = None  # array, model_type cnn
    cat_cardinalities: dict[str, int] = {}  # tabular: column -> vocabulary size
    n_con: int = 0  # tabular


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    shape: tuple[int, int, int]
    model_type: Literal["lcl", "cnn"] = "lcl"
    lcl: OutputLCLModelInitConfig | None = None  # model_type lcl
    cnn: CNNUpscaleModelInitConfig | None = None  # model_type cnn
    # Set: a diffusion output (its model reads the noised input of the same name and the
    # timesteps under timestep_key(name)); None: an MSE output of the fused features.
    diffusion_time_steps: int | None = None


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[InputSpec]
    outputs: list[OutputSpec]
    fusion: ResidualMLPConfig = ResidualMLPConfig()
    architecture: Literal[1, 2] = ARCHITECTURE

    @classmethod
    def from_manifest(cls, data: Any) -> ModelSpec:
        """A bundle's recorded spec; one without an architecture predates it and is architecture 1."""
        if isinstance(data, dict) and "architecture" not in data:
            data = {**data, "architecture": 1}
        return cls.model_validate(data)

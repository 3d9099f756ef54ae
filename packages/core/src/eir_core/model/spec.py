"""The model's recorded architecture (:class:`ModelSpec`): plain data, without PyTorch, so that a
bundle's manifest can be read (and served by the ONNX runtime) without importing it.
``eir_core.model.meta.MetaModel`` builds the network from it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from eir_core.config.schema import LCLModelInitConfig, OutputLCLModelInitConfig, ResidualMLPConfig

# Which set of building rules a spec is built with. 1: eir-lite's own rules (bundles written
# before the spec recorded this; their manifests have no "architecture" key). 2: EIR 0.25.0's.
ARCHITECTURE: Literal[1, 2] = 2


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    type: Literal["array", "tabular"]
    shape: tuple[int, int, int] | None = None  # array, channel first
    lcl: LCLModelInitConfig | None = None  # array
    cat_cardinalities: dict[str, int] = {}  # tabular: column -> vocabulary size
    n_con: int = 0  # tabular


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    shape: tuple[int, int, int]
    lcl: OutputLCLModelInitConfig


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

"""The Open Inference Protocol's (KServe V2) REST payloads, with the protocol's field names.

Parameters are free-form (``{"seed": 3, "binary_data_output": true}``); the ones eirserve reads are
``seed`` and ``noise_scale`` (request), ``binary_data_output`` (request), ``binary_data`` (requested
output) and ``binary_data_size`` (input or output tensor, binary tensor data extension).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

ParameterValue = StrictBool | StrictInt | StrictFloat | StrictStr
Dimension = Annotated[StrictInt, Field(ge=0)]  # a JSON integer: not "1", 1.0 or true
Parameters = dict[str, ParameterValue]


class _Lenient(BaseModel):
    # Clients add fields of their own; the protocol says a server ignores what it does not know.
    model_config = ConfigDict(extra="ignore")


class InferTensor(_Lenient):
    """One input tensor. ``data`` is row-major, flat or nested; absent when the tensor's bytes
    follow the JSON header (``parameters.binary_data_size``)."""

    name: StrictStr
    shape: list[Dimension]
    datatype: StrictStr = Field(description="BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64 or BYTES")
    parameters: Parameters | None = None
    data: list[Any] | None = None


class RequestedOutput(_Lenient):
    name: StrictStr
    parameters: Parameters | None = Field(None, description='{"binary_data": true} answers this output in binary')


class InferRequest(_Lenient):
    id: StrictStr | None = None
    parameters: Parameters | None = Field(
        None,
        description='"seed": noise seed of imputed inputs (item i uses seed+i); "noise_scale": scale of that '
        'noise, 0..10 (absent: the server default); "binary_data_output": true',
    )
    inputs: list[InferTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = Field(None, description="absent: every output")


class OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[float] | None = Field(None, description="absent when the bytes follow the JSON header")


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[OutputTensor]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any size (the batch)")


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, str | int | float | bool] | None = Field(
        None,
        description="a diffusion model's request parameters: <name>_default, <name>_min/_max, sampler_choices "
        "(absent for a model answered in one pass)",
    )


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ProtocolErrorResponse(BaseModel):
    """The protocol's error object: every 4xx/5xx under /v2."""

    error: str


class RepositoryIndexEntry(BaseModel):
    """One row of the model-repository index (a model version, or a model with none loaded)."""

    name: str
    version: str = ""
    state: str = Field(description="READY, LOADING or UNAVAILABLE")
    reason: str = ""

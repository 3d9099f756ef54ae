"""EIR's payloads: ``POST /predict`` (a JSON list of items) and ``GET /info``.

The request models check the payload's shape (a non-empty list of objects whose values are a
base64 string, an object of column: value, or null) with messages in the service's own words;
what depends on the model (input names, dtype, byte counts, categories) is checked by the
service against the bundle. Validation errors become the one error shape in ``errors.py``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, PlainValidator, RootModel
from pydantic_core import PydanticCustomError

ColumnValue = str | int | float | None
TabularRow = dict[str, ColumnValue]
InputValue = str | TabularRow | None


def _kind(v: object) -> str:
    kinds = {list: "a list", dict: "an object", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return kinds.get(type(v), "null" if v is None else type(v).__name__)


def _input_value(v: object) -> object:
    # A row's values are checked against the bundle's columns by the service (field "input.column").
    if v is None or isinstance(v, str | dict):
        return v
    raise PydanticCustomError(
        "input_value",
        "expected a base64 string (array input), an object of column: value (tabular input) or null, got {kind}",
        {"kind": _kind(v)},
    )


def _item(v: object) -> object:
    if not isinstance(v, dict):
        raise PydanticCustomError("item", "expected an object keyed by input name, got {kind}", {"kind": _kind(v)})
    return v


def _items(v: object) -> object:
    if not isinstance(v, list):
        raise PydanticCustomError("items", "expected a JSON list of items, got {kind}", {"kind": _kind(v)})
    if not v:
        raise PydanticCustomError("items", "the list of items is empty")
    return v


Value = Annotated[InputValue, PlainValidator(_input_value, json_schema_input_type=InputValue)]
Item = Annotated[dict[str, Value], BeforeValidator(_item)]


class PredictRequest(RootModel[Annotated[list[Item], BeforeValidator(_items), Field(min_length=1)]]):
    """A JSON list of items, each an object keyed by input name: base64 of the raw C-order bytes
    (training dtype and shape, see /info) for an array input, ``{"column": value}`` for a
    tabular one, or null / left out for an input trained with modality dropout."""


class PredictResponse(BaseModel):
    result: list[dict[str, str]] = Field(
        description="one object per item, in request order: output name -> base64 of raw float32 bytes"
    )


class ErrorDetail(BaseModel):
    item: int | None = Field(description="index of the item in the request's list, null: the request as a whole")
    field: str | None = Field(description="input name, input.column, or body / a parameter")
    message: str


class ErrorBody(BaseModel):
    code: str = Field(description="invalid_input, body_too_large, too_many_items, overloaded, timeout, ...")
    message: str
    details: list[ErrorDetail]


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer of these routes (see errors.py)."""

    error: ErrorBody


class ArrayInputInfo(BaseModel):
    type: Literal["array"] = "array"
    shape: list[int]
    dtype: str = Field(description="numpy dtype string of the raw bytes to send, e.g. |u1 for uint8")
    optional: bool = Field(description="may be left out (trained with modality dropout); imputed with noise")


class TabularInputInfo(BaseModel):
    type: Literal["tabular"] = "tabular"
    categorical_columns: dict[str, list[str]] = Field(description="column -> its categories")
    continuous_columns: list[str]
    optional: bool


class ArrayOutputInfo(BaseModel):
    type: Literal["array"] = "array"
    shape: list[int]
    dtype: Literal["<f4"] = Field(default="<f4", description="answers are always raw float32 bytes")
    source_dtype: str | None = Field(description="dtype of the training data the output was made from")


class ModelInfo(BaseModel):
    name: str | None
    training: dict[str, Any] | None = Field(description="training summary: iteration, validation loss, time")
    device: str
    runtime: Literal["onnxruntime", "torch"] = Field(
        "torch", description="what runs the model: the bundle's ONNX graph on ONNX Runtime, or PyTorch"
    )
    eir_core_version: str | None
    noise_scale: float = Field(
        description="this server's default scale of the N(0,1) noise that replaces a left-out input "
        "(1: EIR's imputation); ?noise_scale= overrides it per request"
    )


class InfoResponse(BaseModel):
    inputs: dict[str, Annotated[ArrayInputInfo | TabularInputInfo, Field(discriminator="type")]]
    outputs: dict[str, ArrayOutputInfo]
    model: ModelInfo

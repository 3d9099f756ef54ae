"""The bundle's manifest, typed: what a servable model takes, gives and was trained as.

Written by the trainer into the bundle's header, validated by ``load_bundle`` (a manifest
that does not fit these models is a ``BundleError``) and read by attribute everywhere else.
The views that the CLIs and the server show (``/info``, a working example item, the
checkpoint file name) are derived here, once. ``check_manifest`` holds a manifest read from a
file to what a server can use without allocating past documented bounds (``MAX_ELEMENTS``...).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from eir_core.data.tabular import NULL
from eir_core.errors import BundleError
from eir_core.model.spec import ModelSpec

FORMAT = "eir-bundle"
FORMAT_VERSION = 1
MAX_ELEMENTS = 1 << 24  # of one item's input or output (a 4 096 x 4 096 image); far past the tutorial's 784
MAX_CATEGORIES = 100_000  # per tabular column
MAX_CATEGORY_CHARS = 1_000
NORMALIZATIONS = (None, "channel", "element")


class _Model(BaseModel):
    # Frozen: a manifest describes a written file. Unknown keys are ignored so that a newer
    # eir-core's additions within the same format version do not make a bundle unreadable.
    model_config = ConfigDict(frozen=True, extra="ignore")


class ArrayInput(_Model):
    type: Literal["array"] = "array"
    name: str
    shape: tuple[int, ...]  # channel first, as the model sees it
    dtype: str  # numpy dtype string of the training files (and of request bytes), e.g. "|u1"
    original_shape: tuple[int, ...] = ()
    normalization: str | None = None
    modality_dropout_rate: float = 0.0

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)  # not np.prod: 0.3 instead of 3-12 us, checked for every item served


class TabularInput(_Model):
    type: Literal["tabular"] = "tabular"
    name: str
    cat_columns: list[str] = []
    con_columns: list[str] = []
    categories: dict[str, list[str]] = {}  # column -> sorted vocabulary, NULL included
    con_mean: dict[str, float] = {}
    con_std: dict[str, float] = {}
    modality_dropout_rate: float = 0.0

    def offered(self, column: str) -> list[str]:
        """The categories a client may send for ``column`` (the vocabulary without NULL)."""
        return [c for c in self.categories[column] if c != NULL]


InputEntry = Annotated[ArrayInput | TabularInput, Field(discriminator="type")]


class DiffusionInfo(_Model):
    """How a ``loss: diffusion`` output was trained and is sampled by default (EIR's keys)."""

    time_steps: int
    beta_schedule: str
    inference_steps: int
    sampler: str
    eta: float
    guidance_scale: float | None = None  # None: no classifier-free guidance by default
    # The input with the output's name carries the noised array; these inputs condition it
    # and were trained with dropout, so an unconditional pass (guidance) is meaningful.
    guidable_inputs: list[str] = []


class ArrayOutput(_Model):
    type: Literal["array"] = "array"
    name: str
    shape: tuple[int, ...]
    dtype: str = "<f4"  # what the server returns: un-normalized float32
    source_dtype: str | None = None  # dtype of the training files
    original_shape: tuple[int, ...] = ()
    normalization: str | None = None
    diffusion: DiffusionInfo | None = None  # None: one forward pass (MSE)


class TrainingSummary(_Model):
    iteration: int
    perf_average: float
    validation_loss: float
    elapsed_s: float = 0.0
    world_size: int = 1
    batch_size: int | None = None
    batch_size_per_process: int | None = None
    seed: int | None = None


class Manifest(_Model):
    format: Literal["eir-bundle"] = "eir-bundle"
    format_version: int = FORMAT_VERSION
    package_version: str = ""
    run_name: str
    model_spec: ModelSpec
    configs: dict[str, Any] = {}
    inputs: list[InputEntry]
    outputs: list[ArrayOutput]
    training: TrainingSummary

    @field_validator("model_spec", mode="before")
    @classmethod
    def _spec_as_written(cls, value: Any) -> Any:
        # A spec written before specs recorded their architecture is architecture 1.
        return ModelSpec.from_manifest(value) if isinstance(value, dict) else value

    def input(self, name: str) -> ArrayInput | TabularInput:
        for e in self.inputs:
            if e.name == name:
                return e
        raise KeyError(name)

    @property
    def input_names(self) -> list[str]:
        return [e.name for e in self.inputs]

    @property
    def optional_inputs(self) -> set[str]:
        """Inputs that may be left out of a request: those trained with modality dropout, and
        the array a diffusion output denoises (sampling starts from noise in its place)."""
        return {e.name for e in self.inputs if e.modality_dropout_rate > 0} | set(self.diffusion_outputs)

    @property
    def diffusion_outputs(self) -> dict[str, DiffusionInfo]:
        """Output name -> its diffusion settings, for outputs sampled by diffusion."""
        return {o.name: o.diffusion for o in self.outputs if o.diffusion is not None}

    def dummy_item(self) -> dict[str, Any]:
        """An item the model accepts: all-zero arrays, the first offered category of every
        categorical column and the training mean of every continuous one (every column has a
        value, as a request must). The server's warm-up and its OpenAPI example both use it."""
        item: dict[str, Any] = {}
        for e in self.inputs:
            if isinstance(e, ArrayInput):
                item[e.name] = np.zeros(e.shape, dtype=np.dtype(e.dtype))
            else:
                row: dict[str, Any] = {c: e.offered(c)[0] for c in e.cat_columns if e.offered(c)}
                item[e.name] = row | {c: float(e.con_mean.get(c, 0.0)) for c in e.con_columns}
        return item

    def info(self, device: str) -> dict[str, Any]:
        """EIR's ``/info`` (input shapes and dtypes), with the tabular columns and their
        categories, which inputs are optional, the real output dtype and the model."""
        optional = self.optional_inputs
        inputs: dict[str, Any] = {}
        for e in self.inputs:
            if isinstance(e, ArrayInput):
                inputs[e.name] = {"type": "array", "shape": list(e.shape), "dtype": e.dtype}
            else:
                inputs[e.name] = {
                    "type": "tabular",
                    "categorical_columns": {c: e.offered(c) for c in e.cat_columns},
                    "continuous_columns": list(e.con_columns),
                }
            inputs[e.name]["optional"] = e.name in optional
        outputs: dict[str, Any] = {
            o.name: {"type": "array", "shape": list(o.shape), "dtype": o.dtype, "source_dtype": o.source_dtype}
            for o in self.outputs
        }
        for name, d in self.diffusion_outputs.items():  # the sampler's defaults and bounds
            outputs[name]["diffusion"] = d.model_dump(mode="json")
        return {
            "inputs": inputs,
            "outputs": outputs,
            "model": {
                "name": self.run_name,
                "training": self.training.model_dump(mode="json"),
                "device": device,
                "eir_core_version": self.package_version,
            },
        }

    def describe(self) -> list[str]:
        """Human-readable lines for ``eir-bundle inspect``."""
        t = self.training
        lines = [
            f"format    {self.format} v{self.format_version} (eir-core {self.package_version})",
            f"run       {self.run_name}  iteration {t.iteration}  perf-average {t.perf_average}",
        ]
        per = f" ({t.batch_size_per_process} per process)" if t.batch_size_per_process is not None else ""
        lines.append(f"trained   {t.world_size} process(es), global batch {t.batch_size or '?'}{per}")
        for e in self.inputs:
            if isinstance(e, ArrayInput):
                lines.append(f"input     {e.name}: array {list(e.shape)} {e.dtype} normalization={e.normalization}")
            else:
                cats = "; ".join(f"{c}: {', '.join(e.offered(c))}" for c in e.cat_columns)
                lines.append(f"input     {e.name}: tabular  categories {cats}  continuous {e.con_columns}")
            if e.modality_dropout_rate:
                lines.append(f"          (optional at prediction: modality_dropout_rate={e.modality_dropout_rate})")
        for o in self.outputs:
            lines.append(f"output    {o.name}: array {list(o.shape)} float32 (training files {o.source_dtype})")
        return lines


# ------------------------------------------------------------------ checkpoint file names
# EIR's checkpoint names with the bundle's suffix: <run>_checkpoint_<iter>_perf-average=<x>.safetensors
_CHECKPOINT = re.compile(r"_checkpoint_(\d+)_perf-average=(-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\.safetensors$")


def checkpoint_name(run_name: str, iteration: int, perf: float) -> str:
    return f"{run_name}_checkpoint_{iteration}_perf-average={perf:.4f}.safetensors"


def parse_checkpoint_name(name: str) -> tuple[int, float] | None:
    """(iteration, perf-average) of a checkpoint file name, or None for any other name."""
    m = _CHECKPOINT.search(name)
    return (int(m.group(1)), float(m.group(2))) if m else None


def checkpoints_in(folder: Path) -> list[tuple[float, int, Path]]:
    """(perf-average, iteration, path) of every checkpoint in ``folder``."""
    found = []
    for p in folder.glob("*.safetensors"):
        parsed = parse_checkpoint_name(p.name)
        if parsed is not None:
            found.append((parsed[1], parsed[0], p))
    return found


def _bad(path: Path, where: str, problem: str) -> BundleError:
    return BundleError(f"{path}: manifest field {where}: {problem}")


def _check_shape(path: Path, where: str, shape: tuple[int, ...]) -> None:
    if len(shape) != 3 or any(d < 1 for d in shape):
        raise _bad(path, where, f"{list(shape)} is not a channel-first shape of 3 positive sizes")
    if math.prod(shape) > MAX_ELEMENTS:
        raise _bad(path, where, f"{list(shape)} has {math.prod(shape)} elements, over the bound of {MAX_ELEMENTS}")


def _check_dtype(path: Path, where: str, dtype: str) -> None:
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        raise _bad(path, where, f"{dtype!r} is not a numpy dtype") from None
    if dt.kind not in "biuf" or dt.itemsize not in (1, 2, 4, 8) or dt.hasobject:
        raise _bad(path, where, f"{dtype!r} is not a supported dtype (bool, integers, floats of 1-8 bytes)")


def check_manifest(path: Path, m: Manifest) -> None:
    """Refuse a manifest that a server could not use, or that would make it allocate past the
    bounds (module doc), with one BundleError naming the field."""
    for field, entries in (("inputs", m.inputs), ("outputs", m.outputs)):
        if not entries:
            raise _bad(path, field, "empty: a model needs at least one")
        names = [e.name for e in entries]
        if any(not n for n in names) or len(set(names)) != len(names):
            raise _bad(path, field, f"names must be unique and non-empty, got {names}")
    for i, e in enumerate(m.inputs):
        where = f"inputs[{i}]"
        if not 0 <= e.modality_dropout_rate <= 1:
            raise _bad(path, f"{where}.modality_dropout_rate", f"{e.modality_dropout_rate} is not in 0..1")
        if isinstance(e, ArrayInput):
            _check_shape(path, f"{where}.shape", e.shape)
            _check_dtype(path, f"{where}.dtype", e.dtype)
            if e.normalization not in NORMALIZATIONS:
                raise _bad(path, f"{where}.normalization", f"{e.normalization!r} is not channel, element or null")
            continue
        if not e.cat_columns and not e.con_columns:
            raise _bad(path, where, "a tabular input without columns")
        for c in e.cat_columns:
            vocab = e.categories.get(c)
            if not vocab or len(vocab) > MAX_CATEGORIES or len(set(vocab)) != len(vocab):
                raise _bad(path, f"{where}.categories.{c}", f"needs 1 to {MAX_CATEGORIES} distinct categories")
            if any(len(v) > MAX_CATEGORY_CHARS for v in vocab):
                raise _bad(
                    path, f"{where}.categories.{c}", f"a category is longer than {MAX_CATEGORY_CHARS} characters"
                )
        for c in e.con_columns:
            mean, std = e.con_mean.get(c), e.con_std.get(c)
            if mean is None or std is None or not (math.isfinite(mean) and math.isfinite(std) and std > 0):
                raise _bad(
                    path, f"{where}.con_mean/con_std.{c}", f"needs a finite mean and a positive std, got {mean}, {std}"
                )
    for i, o in enumerate(m.outputs):
        _check_shape(path, f"outputs[{i}].shape", o.shape)
        if not _is_dtype(o.dtype) or np.dtype(o.dtype) != np.dtype("<f4"):
            raise _bad(path, f"outputs[{i}].dtype", f"{o.dtype!r}: outputs are float32 ('<f4')")
        if o.normalization not in NORMALIZATIONS:
            raise _bad(path, f"outputs[{i}].normalization", f"{o.normalization!r} is not channel, element or null")


def _is_dtype(text: str) -> bool:
    try:
        np.dtype(text)
    except (TypeError, ValueError):
        return False
    return True

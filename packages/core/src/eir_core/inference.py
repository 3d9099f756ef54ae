"""What every runtime of a bundle shares, in NumPy only: checking items and building the batch.

A batch is built the same way for PyTorch (``eir_core.predict.Predictor``) and for ONNX Runtime
(``eir_core.onnx_runtime.OnnxPredictor``): normalize the given arrays with the training
statistics, impute the left-out ones (seeded noise, optionally scaled; ``__NULL__`` and 0 for
tabular inputs), encode tabular values. Only the forward pass differs, so both give the same
answer for the same items and seeds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any, Protocol

import numpy as np

from eir_core.data.normalization import NormStats
from eir_core.data.tabular import NULL, TabularEncoding
from eir_core.diffusion_sampling import DiffusionSampling, SamplingParams
from eir_core.errors import InputError
from eir_core.imputation import check_noise_scale, noise_array, null_codes_array
from eir_core.manifest import ArrayInput, ArrayOutput, Manifest, TabularInput
from eir_core.model.spec import timestep_key

# What one item may carry per input: an array (any numeric dtype, the input's element
# count) or, for a tabular input, a mapping of column -> raw value. Absent = imputed.
Item = Mapping[str, Any]

# input name -> (N, C, H, W) float32 (array) or {"cat": (N, k) int64, "con": (N, m) float32}
ArrayBatch = dict[str, Any]


class ItemModel:
    """A bundle's inputs and outputs, as the manifest and statistics describe them."""

    def __init__(self, manifest: Manifest, input_stats: dict[str, NormStats], output_stats: dict[str, NormStats]):
        self.manifest = manifest
        self.input_stats = input_stats
        self.output_stats = output_stats
        self.inputs: dict[str, ArrayInput | TabularInput] = {e.name: e for e in manifest.inputs}
        self.outputs: dict[str, ArrayOutput] = {o.name: o for o in manifest.outputs}
        self.encodings = {
            e.name: TabularEncoding.from_json(e.model_dump()) for e in manifest.inputs if e.type == "tabular"
        }
        self._null_codes = {name: null_codes_array(enc) for name, enc in self.encodings.items()}

    @property
    def optional_inputs(self) -> set[str]:
        """Inputs that may be left out: those trained with modality dropout."""
        return self.manifest.optional_inputs

    def check_item(self, item: Item) -> None:
        """Raise InputError naming the field for the first problem in ``item``."""
        for name in item:
            if name not in self.inputs:
                raise InputError(name, f"unknown input; this model's inputs are: {', '.join(self.inputs)}")
        given = [n for n in self.inputs if item.get(n) is not None]
        if not given:
            raise InputError("(item)", f"give at least one input of: {', '.join(self.inputs)}")
        for name in self.inputs:
            if item.get(name) is None and name not in self.optional_inputs:
                raise InputError(
                    name,
                    "required: this model was trained without modality dropout for it, so it cannot be left out",
                )
        for name in given:
            entry = self.inputs[name]
            if isinstance(entry, ArrayInput):
                self._check_array(name, item[name], entry)
            else:
                self._check_tabular(name, item[name], self.encodings[name])

    @staticmethod
    def _check_array(name: str, value: Any, entry: ArrayInput) -> None:
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            raise InputError(name, "expected a numeric array")
        n = entry.n_elements
        if value.size != n:
            raise InputError(name, f"expected {n} elements (shape {list(entry.shape)}), got {value.size}")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise InputError(name, "contains NaN or infinite values")

    @staticmethod
    def _check_tabular(name: str, value: Any, enc: TabularEncoding) -> None:
        if not isinstance(value, Mapping):
            raise InputError(name, "expected an object of column: value")
        for col in value:
            if col not in enc.cat_columns and col not in enc.con_columns:
                cols = ", ".join([*enc.cat_columns, *enc.con_columns])
                raise InputError(f"{name}.{col}", f"unknown column; columns are: {cols}")
        for col in enc.cat_columns:
            v = value.get(col)
            if v is None:
                continue
            if not isinstance(v, str):
                raise InputError(f"{name}.{col}", f"categories are strings, e.g. {enc.categories[col][0]!r}; got {v!r}")
            allowed = [c for c in enc.categories[col] if c != NULL]
            if v not in allowed:
                raise InputError(f"{name}.{col}", f"unknown category {v!r}; allowed: {', '.join(allowed)}")
        for col in enc.con_columns:
            v = value.get(col)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
                raise InputError(f"{name}.{col}", f"expected a finite number, got {v!r}")

    @staticmethod
    def seeds_and_scales(
        n: int, seeds: Sequence[int] | None, noise_scale: float | Sequence[float]
    ) -> tuple[Sequence[int], list[float]]:
        """Fresh seeds when none are given; one checked noise scale per item."""
        if seeds is None:
            seeds = [int(s) for s in np.random.SeedSequence().generate_state(n)]
        if isinstance(noise_scale, Sequence | np.ndarray):
            scales = [check_noise_scale(s) for s in noise_scale]
            if len(scales) != n:
                raise ValueError(f"{len(scales)} noise scales for {n} items; give one per item")
        else:
            scales = [check_noise_scale(noise_scale)] * n
        return seeds, scales

    def array_batch(self, items: Sequence[Item], seeds: Sequence[int], scales: Sequence[float]) -> ArrayBatch:
        """The model's input for ``items`` (which passed ``check_item``), in NumPy."""
        n = len(items)
        batch: ArrayBatch = {}
        for name, entry in self.inputs.items():
            missing = [items[i].get(name) is None for i in range(n)]
            if isinstance(entry, ArrayInput):
                shape = entry.shape
                x = np.empty((n, *shape), dtype=np.float32)
                given = [i for i in range(n) if not missing[i]]
                if given:  # one normalization for all given items
                    raw = np.stack([np.asarray(items[i][name], dtype=np.float32).reshape(shape) for i in given])
                    x[given] = self.input_stats[name].normalize_array(raw)
                for i in (i for i in range(n) if missing[i]):
                    # One generator per item: batched and unbatched answers agree.
                    x[i] = noise_array(shape, int(seeds[i]), float(scales[i]))
                batch[name] = x
            else:
                enc = self.encodings[name]
                cat = np.zeros((n, len(enc.cat_columns)), np.int64)
                con = np.zeros((n, len(enc.con_columns)), np.float32)
                for i in range(n):
                    if missing[i]:  # __NULL__ for every column, 0 (the training mean) for values
                        cat[i] = self._null_codes[name]
                        continue
                    row = items[i][name]
                    for j, c in enumerate(enc.cat_columns):
                        cat[i, j] = enc.cat_codes(c, [row.get(c) or NULL])[0]
                    for j, c in enumerate(enc.con_columns):
                        v = row.get(c)
                        con[i, j] = enc.con_values(c, np.array([np.nan if v is None else v]))[0]
                batch[name] = {"cat": cat, "con": con}
        for name, info in self.manifest.diffusion_outputs.items():
            # The last (pure-noise) timestep by default: the sampling loop sets each step's.
            batch[timestep_key(name)] = np.full(n, info.time_steps - 1, dtype=np.int64)
        return batch

    def split_outputs(self, arrays: Mapping[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
        """Un-normalized float32 outputs, one dict per item."""
        out = {name: self.output_stats[name].denormalize_array(np.asarray(y, np.float32)) for name, y in arrays.items()}
        return [{name: arr[i] for name, arr in out.items()} for i in range(n)]


class BatchRunner(ItemModel, ABC):
    """An ItemModel with a runtime's forward pass (Predictor on PyTorch, OnnxPredictor on ONNX
    Runtime): ``predict`` is the same for both around their ``run_batch``."""

    @abstractmethod
    def run_batch(self, batch: ArrayBatch) -> dict[str, np.ndarray]:
        """The forward pass of a runtime (Predictor, OnnxPredictor): model outputs (normalized)."""

    @cached_property
    def diffusion(self) -> DiffusionSampling | None:
        """The sampling loop, for a model whose output is generated by diffusion."""
        return DiffusionSampling(self) if self.manifest.diffusion_outputs else None

    def predict(
        self,
        items: Sequence[Item],
        seeds: Sequence[int] | None = None,
        noise_scale: float | Sequence[float] = 1.0,
        sampling: SamplingParams | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """Un-normalized float32 outputs, one dict per item (items must pass ``check_item``).

        ``noise_scale`` (one for all items, or one per item) multiplies the N(0, 1) noise that
        replaces a left-out array input: the same seed at scale s is s × the scale-1 noise.
        1.0 is what the model was trained with (and what EIR imputes). A diffusion model runs
        its sampler (``sampling``: steps, sampler, eta, guidance; None: the bundle's defaults),
        each item's noise drawn from its seed."""
        if not items:
            return []
        seeds, scales = self.seeds_and_scales(len(items), seeds, noise_scale)
        if self.diffusion is not None:
            out = self.diffusion.run(self.run_batch, items, seeds, scales, sampling or SamplingParams())
            return self.split_outputs(out, len(items))
        return self.split_outputs(self.run_batch(self.array_batch(items, seeds, scales)), len(items))


class Runner(Protocol):
    """What a server needs of a loaded model, whichever runtime runs it."""

    manifest: Manifest
    inputs: dict[str, ArrayInput | TabularInput]
    outputs: dict[str, ArrayOutput]
    runtime: str  # "torch" or "onnxruntime"
    graph: str  # "eager", "torchscript" or "onnx"

    @property
    def device(self) -> Any: ...

    @property
    def optional_inputs(self) -> set[str]: ...

    @property
    def diffusion(self) -> DiffusionSampling | None: ...

    def check_item(self, item: Item) -> None: ...

    def run_batch(self, batch: ArrayBatch) -> dict[str, np.ndarray]: ...

    def split_outputs(self, arrays: Mapping[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]: ...

    def predict(
        self,
        items: Sequence[Item],
        seeds: Sequence[int] | None = None,
        noise_scale: float | Sequence[float] = 1.0,
        sampling: SamplingParams | None = None,
    ) -> list[dict[str, np.ndarray]]: ...

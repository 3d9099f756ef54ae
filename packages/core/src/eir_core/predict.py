"""Predictor: a bundle on a device; raw inputs in, un-normalized float32 arrays out.

Used by ``eirserve`` and by training's sample generation, so that both generate the same
way: normalize -> impute missing inputs (seeded noise, optionally scaled) -> forward -> un-normalize.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eir_core.bundle import Bundle, load_bundle
from eir_core.data.tabular import NULL, TabularEncoding
from eir_core.device import resolve_device
from eir_core.errors import BundleError, InputError
from eir_core.graph import trace_for_inference
from eir_core.imputation import check_noise_scale, impute_array_, impute_tabular_, null_codes
from eir_core.manifest import ArrayInput, ArrayOutput, Manifest, TabularInput
from eir_core.model.meta import MetaModel

# What one item may carry per input: an array (any numeric dtype, the input's element
# count) or, for a tabular input, a mapping of column -> raw value. Absent = imputed.
Item = Mapping[str, Any]


GRAPHS = ("eager", "torchscript", "auto")
log = logging.getLogger("eir_core.predict")


class Predictor:
    """``graph``: how the forward pass runs. "eager" is the module itself; "torchscript" traces
    and freezes it (``eir_core.graph``; checked against eager, which stays in use if the check
    fails); "auto" is "torchscript" on the CPU and "eager" elsewhere. ``self.graph`` says which
    one runs."""

    def __init__(
        self, bundle: Bundle, device: str | torch.device = "auto", source: str = "bundle", graph: str = "eager"
    ) -> None:
        if graph not in GRAPHS:
            raise ValueError(f"graph must be one of {', '.join(GRAPHS)}, not {graph!r}")
        self.manifest: Manifest = bundle.manifest
        self.spec = bundle.manifest.model_spec
        model = MetaModel(self.spec)
        try:
            model.load_state_dict(bundle.state_dict, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[0:3]
            raise BundleError(f"{source}: weights do not match the manifest's model ({' '.join(first)})") from None
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.model = model.to(self.device).eval()
        self.input_stats = bundle.input_stats
        self.output_stats = bundle.output_stats
        self.inputs: dict[str, ArrayInput | TabularInput] = {e.name: e for e in bundle.manifest.inputs}
        self.outputs: dict[str, ArrayOutput] = {o.name: o for o in bundle.manifest.outputs}
        self.encodings = {
            e.name: TabularEncoding.from_json(e.model_dump()) for e in bundle.manifest.inputs if e.type == "tabular"
        }
        self.forward: Callable[[dict[str, Any]], dict[str, torch.Tensor]] = self.model
        self.graph = "eager"
        if graph == "torchscript" or (graph == "auto" and self.device.type == "cpu"):
            dummy = self.manifest.dummy_item()
            traced, why = trace_for_inference(self.model, lambda n: self._batch([dummy] * n, range(n), [1.0] * n))
            if traced is None:
                log.warning("%s: running the model eagerly (TorchScript: %s)", source, why)
            else:
                self.forward, self.graph = traced, "torchscript"

    @classmethod
    def from_path(cls, path: Path | str, device: str = "auto", graph: str = "eager") -> Predictor:
        return cls(load_bundle(Path(path)), device=device, source=str(path), graph=graph)

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

    def _batch(self, items: Sequence[Item], seeds: Sequence[int], scales: Sequence[float]) -> dict[str, Any]:
        n = len(items)
        batch: dict[str, Any] = {}
        for name, entry in self.inputs.items():
            missing = np.array([items[i].get(name) is None for i in range(n)])
            if isinstance(entry, ArrayInput):
                shape = entry.shape
                x = torch.empty((n, *shape), dtype=torch.float32)
                given = [i for i in range(n) if not missing[i]]
                if given:  # one normalization for all given items
                    raw = np.stack([np.asarray(items[i][name], dtype=np.float32).reshape(shape) for i in given])
                    x[torch.tensor(given)] = self.input_stats[name].normalize(torch.from_numpy(raw))
                for i in (i for i in range(n) if missing[i]):
                    # One generator per item: batched and unbatched answers agree.
                    gen = torch.Generator().manual_seed(int(seeds[i]))
                    impute_array_(x[i : i + 1], np.array([True]), gen, scales[i])
                batch[name] = x.to(self.device, non_blocking=True)
            else:
                enc = self.encodings[name]
                cat = np.zeros((n, len(enc.cat_columns)), np.int64)
                con = np.zeros((n, len(enc.con_columns)), np.float32)
                for i in range(n):
                    row = items[i].get(name) or {}
                    for j, c in enumerate(enc.cat_columns):
                        cat[i, j] = enc.cat_codes(c, [row.get(c) or NULL])[0]
                    for j, c in enumerate(enc.con_columns):
                        v = row.get(c)
                        con[i, j] = enc.con_values(c, np.array([np.nan if v is None else v]))[0]
                t = {"cat": torch.from_numpy(cat), "con": torch.from_numpy(con)}
                impute_tabular_(t, missing, null_codes(enc))
                batch[name] = {k: v.to(self.device, non_blocking=True) for k, v in t.items()}
        return batch

    @torch.inference_mode()
    def predict(
        self, items: Sequence[Item], seeds: Sequence[int] | None = None, noise_scale: float | Sequence[float] = 1.0
    ) -> list[dict[str, np.ndarray]]:
        """Un-normalized float32 outputs, one dict per item (items must pass ``check_item``).

        ``noise_scale`` (one for all items, or one per item) multiplies the N(0, 1) noise that
        replaces a left-out array input: the same seed at scale s is s × the scale-1 noise.
        1.0 is what the model was trained with (and what EIR imputes)."""
        if not items:
            return []
        if seeds is None:
            seeds = [int(s) for s in np.random.SeedSequence().generate_state(len(items))]
        if isinstance(noise_scale, Sequence | np.ndarray):
            scales = [check_noise_scale(s) for s in noise_scale]
            if len(scales) != len(items):
                raise ValueError(f"{len(scales)} noise scales for {len(items)} items; give one per item")
        else:
            scales = [check_noise_scale(noise_scale)] * len(items)
        out = self.forward(self._batch(items, seeds, scales))
        arrays = {
            name: self.output_stats[name].denormalize(y.float()).cpu().numpy().astype(np.float32, copy=False)
            for name, y in out.items()
        }
        return [{name: arr[i] for name, arr in arrays.items()} for i in range(len(items))]

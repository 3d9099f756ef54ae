"""Generated samples at every validation, through the same Predictor that serving uses.

``results/<output>/<output>/samples/<iter>/auto/``: ``n_eval_inputs`` fixed random
validation items; ``.../manual/``: the config's ``sampling_config.manual_inputs`` (inputs not
given are imputed, so a label alone generates a digit). Each item: ``<i>_generated.npy``
(un-normalized float32), ``<i>_inputs/<input>.npy|.json``, plus ``meta.json`` and a PNG grid.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eir_core.config.schema import OutputConfig
from eir_core.data.arrays import load_npy
from eir_core.data.dataset import ArrayColumn, RunData, TabularColumn
from eir_core.data.tabular import NULL
from eir_core.errors import ConfigError, DataError, InputError
from eir_core.predict import Predictor
from eir_core.train.render import Renderer

# Below this ``saved_result_detail_level`` no samples are written (as in EIR).
MIN_DETAIL_LEVEL = 5


class SampleWriter:
    """Chooses the items once (validation samples and the config's manual inputs) and, at
    every validation, generates their outputs with the predictor it is given."""

    def __init__(
        self,
        data: RunData,
        output_configs: Sequence[OutputConfig],
        detail_level: int,
        seed: int,
        run_dir: Path,
        renderer: Renderer,
        record: Callable[[Path], None],
    ) -> None:
        self.data = data
        self.seed = seed
        self.run_dir = run_dir
        self.record = record  # the run's journal of the files it writes (RunFolder.record)
        self.renderer = renderer
        self.level = detail_level
        n_eval = max((oc.sampling_config.n_eval_inputs for oc in output_configs), default=0)
        valid = data.valid_idx
        rng = np.random.default_rng(seed + 1)
        self.auto_idx = np.sort(rng.choice(valid, size=min(n_eval, len(valid)), replace=False))
        self.manual: dict[str, list[dict[str, Any]]] = {
            oc.name: [self._manual_item(k, m) for k, m in enumerate(oc.sampling_config.manual_inputs)]
            for oc in output_configs
        }
        self.n_eval = {oc.name: oc.sampling_config.n_eval_inputs for oc in output_configs}

    @property
    def enabled(self) -> bool:
        return self.level >= MIN_DETAIL_LEVEL and any([len(self.auto_idx), *self.manual.values()])

    def _manual_item(self, k: int, raw: dict[str, Any]) -> dict[str, Any]:
        where = f"sampling_config.manual_inputs[{k}]"
        inputs = self.data.inputs
        item: dict[str, Any] = {}
        for name, value in raw.items():
            col = inputs.get(name)
            if col is None:
                raise ConfigError(f"{where}: unknown input {name!r}; inputs are: {', '.join(inputs)}")
            if isinstance(col, ArrayColumn):
                try:
                    arr = load_npy(Path(str(value)))
                except DataError as e:
                    raise ConfigError(f"{where}.{name}: {e}") from None
                if arr.size != int(np.prod(col.source.shape)):
                    raise ConfigError(
                        f"{where}.{name}: array has {arr.size} elements, the input needs shape {list(col.source.shape)}"
                    )
                item[name] = arr
            else:
                if not isinstance(value, dict):
                    raise ConfigError(f'{where}.{name}: give a mapping of column: value, e.g. {{CLASS: "0"}}')
                row: dict[str, str | float] = {}
                enc = col.encoding
                for c, v in value.items():
                    if c in enc.cat_columns:
                        allowed = [x for x in enc.categories[c] if x != NULL]
                        if str(v) not in allowed:
                            raise ConfigError(
                                f"{where}.{name}.{c}: unknown category {v!r}; allowed: {', '.join(allowed)}"
                            )
                        row[c] = str(v)
                    elif c in enc.con_columns:
                        row[c] = float(v)
                    else:
                        raise ConfigError(
                            f"{where}.{name}: unknown column {c!r}; columns: "
                            f"{', '.join([*enc.cat_columns, *enc.con_columns])}"
                        )
                item[name] = row
        return item

    def _auto_items(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = [{} for _ in self.auto_idx]
        for name, col in self.data.inputs.items():
            if isinstance(col, ArrayColumn):
                rows = col.rows[self.auto_idx]
                have = rows >= 0
                raw = col.source.read(rows[have]) if have.any() else None
                j = 0
                for i, h in enumerate(have):
                    if h and raw is not None:
                        items[i][name] = raw[j]
                        j += 1
            elif isinstance(col, TabularColumn):
                enc = col.encoding
                for i, idx in enumerate(self.auto_idx):
                    if not col.present[idx]:
                        continue
                    auto_row: dict[str, Any] = {
                        c: enc.categories[c][int(col.cat[idx, j])] for j, c in enumerate(enc.cat_columns)
                    }
                    for j, c in enumerate(enc.con_columns):
                        auto_row[c] = float(col.con[idx, j]) * enc.con_std[c] + enc.con_mean[c]
                    items[i][name] = {k: v for k, v in auto_row.items() if v != NULL}
        return items

    def write(self, iteration: int, predictor: Predictor) -> None:
        """Generate and save samples now; the PNG grids are drawn by the renderer process."""
        if not self.enabled:
            return
        auto = self._auto_items()
        ids = [self.data.ids[i] for i in self.auto_idx]
        seed = self.seed
        try:
            auto_out = predictor.predict(auto, seeds=[seed + i for i in range(len(auto))])
            manual_out = {
                o: predictor.predict(items, seeds=[seed + 1000 + k for k in range(len(items))])
                for o, items in self.manual.items()
            }
        except InputError as e:  # data the config pointed at; say which
            raise ConfigError(f"sample generation: {e}") from None
        for out_name in self.data.outputs:
            base = self.run_dir / "results" / out_name / out_name / "samples" / str(iteration)
            n = self.n_eval[out_name]
            self._save(base / "auto", auto[:n], [o[out_name] for o in auto_out[:n]], ids[:n], 0)
            manual = self.manual[out_name]
            self._save(
                base / "manual",
                manual,
                [o[out_name] for o in manual_out[out_name]],
                [f"manual_{k}" for k in range(len(manual))],
                n,
            )

    def _save(
        self, folder: Path, items: list[dict[str, Any]], generated: list[np.ndarray], ids: list[str], start: int
    ) -> None:
        if not items:
            return
        folder.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {}
        rows = []
        array_inputs = [n for n, c in self.data.inputs.items() if isinstance(c, ArrayColumn)]
        for k, (item, gen, sid) in enumerate(zip(items, generated, ids, strict=True)):
            i = start + k
            self.record(folder / f"{i}_generated.npy")
            np.save(folder / f"{i}_generated.npy", gen.astype(np.float32))
            inp_dir = folder / f"{i}_inputs"
            inp_dir.mkdir(exist_ok=True)
            saved = {}
            for name, value in item.items():
                if isinstance(value, np.ndarray):
                    self.record(inp_dir / f"{name}.npy")
                    np.save(inp_dir / f"{name}.npy", value)
                    saved[name] = f"{i}_inputs/{name}.npy"
                else:
                    self.record(inp_dir / f"{name}.json")
                    (inp_dir / f"{name}.json").write_text(json.dumps(value))
                    saved[name] = f"{i}_inputs/{name}.json"
            meta[sid] = {"generated": f"{i}_generated.npy", "inputs": saved, "index": i}
            label = ", ".join(f"{c}={v}" for val in item.values() if isinstance(val, dict) for c, v in val.items())
            shown = [item[n] for n in array_inputs if isinstance(item.get(n), np.ndarray)]
            pics = [np.asarray(s, np.float32).reshape(gen.shape) for s in shown] + [gen]
            rows.append((label or sid, pics))
        self.record(folder / "meta.json")
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))
        n_cols = max(len(r[1]) for r in rows)
        rows = [(lab, pics + [pics[-1]] * (n_cols - len(pics))) for lab, pics in rows]
        titles = (["input"] * (n_cols - 1)) + ["generated"]
        arrays = folder / ".grid_arrays.npz"  # the renderer deletes it once drawn
        self.record(arrays)
        self.record(folder / "grid.png")
        np.savez(arrays, **{f"{i}_{k}": p for i, (_, pics) in enumerate(rows) for k, p in enumerate(pics)})
        self.renderer.submit(
            "grid",
            path=str(folder / "grid.png"),
            arrays=str(arrays),
            rows=[(lab, len(pics)) for lab, pics in rows],
            titles=titles,
        )

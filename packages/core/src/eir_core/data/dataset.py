"""From validated configs to tensors: sample IDs, the train/valid split, statistics, batches.

IDs follow EIR: the sample universe is the union of the output sources' IDs; inputs are
matched by ID string. IDs with none of their inputs are dropped; IDs missing some inputs
are kept and those inputs imputed (see ``eir_core.imputation``). Both counts are logged.
"""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from eir_core.config.schema import ArrayInputConfig, ExperimentConfig, TabularInputConfig
from eir_core.data import read_ahead
from eir_core.data.arrays import ArraySource, open_array_source
from eir_core.data.normalization import NormStats, compute_stats
from eir_core.data.tabular import TabularEncoding, fit_encoding, read_table
from eir_core.errors import DataError

log = logging.getLogger(__name__)

LOAD_CHUNK = 512  # rows converted to normalized float32 at a time (ArrayColumn._load)


def split_ids(ids: list[str], valid_size: float, seed: int) -> tuple[list[str], list[str]]:
    """Sorted IDs split exactly as scikit-learn's ``train_test_split(test_size, random_state)``.

    A fraction (<= 1) takes ``ceil(valid_size * n)`` IDs, a larger number that many.
    """
    ids = sorted(ids)
    n = len(ids)
    n_valid = math.ceil(valid_size * n) if valid_size <= 1 else int(valid_size)
    if not 0 < n_valid < n:
        raise DataError(
            f"basic_experiment.valid_size={valid_size} leaves {n - n_valid} training and "
            f"{n_valid} validation samples out of {n}; choose a size between 1 and {n - 1}"
        )
    perm = np.random.RandomState(seed).permutation(n)
    valid = [ids[i] for i in perm[:n_valid]]
    train = [ids[i] for i in perm[n_valid:]]
    return train, valid


def manual_split(ids: list[str], valid_file: Path) -> tuple[list[str], list[str]]:
    if not valid_file.is_file():
        raise DataError(f"basic_experiment.manual_valid_ids_file: {valid_file} not found")
    wanted = [line.strip() for line in valid_file.read_text().splitlines() if line.strip()]
    known = set(ids)
    unknown = [v for v in wanted if v not in known]
    if unknown:
        raise DataError(f"{valid_file}: IDs not in the data: {', '.join(unknown[:10])}")
    valid_set = set(wanted)
    return sorted(i for i in ids if i not in valid_set), sorted(valid_set)


@dataclass
class ArrayColumn:
    """One array input or output over the run's IDs: presence, stats and values."""

    name: str
    source: ArraySource
    rows: np.ndarray  # run index -> row in source (-1 = missing)
    stats: NormStats
    preloaded: torch.Tensor | None = None  # (N, C, H, W) normalized float32 (NaN if missing)

    @property
    def present(self) -> np.ndarray:
        return self.rows >= 0

    def get(self, idx: np.ndarray) -> torch.Tensor:
        if self.preloaded is not None:
            return self.preloaded[torch.from_numpy(idx)]
        return self._load(idx)

    def _load(self, idx: np.ndarray) -> torch.Tensor:
        """Normalized float32 arrays of run indices ``idx`` (NaN where the sample has none),
        converted ``LOAD_CHUNK`` rows at a time: the temporaries of the conversion are then a
        few MB instead of several copies of the whole set (preloading 10 000 28x28 images
        raised the peak RSS by ~130 MB and left ~65 MB of it in the heap)."""
        rows = self.rows[idx]
        have = np.nonzero(rows >= 0)[0]
        out = torch.empty((len(idx), *self.source.shape), dtype=torch.float32)
        if have.size < len(idx):
            out.fill_(float("nan"))
        every = have.size == len(idx)  # then row k of ``have`` is row k of ``out``
        for s in range(0, have.size, LOAD_CHUNK):
            part = have[s : s + LOAD_CHUNK]
            raw = torch.from_numpy(self.source.read(rows[part]))
            values = out[s : s + len(part)] if every else torch.empty(raw.shape, dtype=torch.float32)
            self.stats.normalize_into(raw, values)
            if not every:
                out[torch.from_numpy(part)] = values
        return out

    def preload(self) -> None:
        self.preloaded = self._load(np.arange(len(self.rows)))


@dataclass
class TabularColumn:
    name: str
    encoding: TabularEncoding
    cat: torch.Tensor  # (N, n_cat) int64
    con: torch.Tensor  # (N, n_con) float32
    present_mask: np.ndarray

    @property
    def present(self) -> np.ndarray:
        return self.present_mask

    def get(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        t = torch.from_numpy(idx)
        return {"cat": self.cat[t], "con": self.con[t]}


@dataclass
class RunData:
    ids: list[str]
    train_idx: np.ndarray
    valid_idx: np.ndarray
    inputs: dict[str, ArrayColumn | TabularColumn]
    outputs: dict[str, ArrayColumn]
    stats_by_key: dict[tuple[str, str | None, int | None], NormStats] = field(default_factory=dict)

    def fitted_state(self) -> dict[str, object]:
        """What was learned from the training split (array statistics in the order they were
        computed, tabular encodings by input), as JSON: the other ranks of a distributed run
        receive it from rank 0 instead of computing their own."""
        return {
            "stats": [
                {"kind": s.kind, "mean": s.mean.tolist(), "std": s.std.tolist()} for s in self.stats_by_key.values()
            ],
            "encodings": {n: c.encoding.to_json() for n, c in self.inputs.items() if isinstance(c, TabularColumn)},
        }

    def fingerprint(self) -> dict[str, object]:
        """A short summary of the samples and split, for checking that every rank sees the same data."""
        import hashlib

        h = hashlib.sha256()
        for part in ("\n".join(self.ids).encode(), self.train_idx.tobytes(), self.valid_idx.tobytes()):
            h.update(part)
        return {"n_ids": len(self.ids), "n_train": len(self.train_idx), "sha256": h.hexdigest()[:16]}

    def batch(
        self, idx: np.ndarray
    ) -> tuple[dict[str, torch.Tensor | dict[str, torch.Tensor]], dict[str, torch.Tensor], dict[str, np.ndarray]]:
        """(model inputs, normalized targets, input presence masks) for run indices ``idx``."""
        inputs: dict[str, torch.Tensor | dict[str, torch.Tensor]] = {
            name: col.get(idx) for name, col in self.inputs.items()
        }
        targets = {name: col.get(idx) for name, col in self.outputs.items()}
        present = {name: col.present[idx] for name, col in self.inputs.items()}
        return inputs, targets, present


def _where(input_name: str) -> str:
    return f"input {input_name!r}: input_info.input_source"


@contextmanager
def _naming(where: str, path: str) -> Iterator[None]:
    """A data error about a configured path names the config key and the absolute path."""
    try:
        yield
    except DataError as e:
        resolved = Path(path).resolve()
        raise DataError(
            f"{where} = {path} (resolved to {resolved}; relative paths start from the folder eirtrain runs in, "
            f"{Path.cwd()}): {str(e).removeprefix(str(path) + ': ')}"
        ) from None


def _some(ids: set[str], n: int = 3) -> str:
    return ", ".join(repr(i) for i in sorted(ids)[:n]) or "none"


def check_values(src: ArraySource, x: np.ndarray, rows: np.ndarray) -> None:
    """Refuse training arrays that cannot train: an infinite value (the file is named), or an
    element that is NaN (missing) in every one of them (the whole source when all are). NaN
    elsewhere marks a missing value, which normalization imputes."""
    if x.dtype.kind != "f" or not len(x):
        return
    seen = np.zeros(x.shape[1:], dtype=bool)  # element has a number in some sample
    for s in range(0, len(x), LOAD_CHUNK):
        part = x[s : s + LOAD_CHUNK]
        inf = np.isinf(part).reshape(len(part), -1).any(axis=1)
        if inf.any():
            raise DataError(
                f"{src.paths[rows[s + int(np.argmax(inf))]]}: holds an infinite value; training arrays must be finite "
                "(NaN marks a missing value)"
            )
        seen |= (~np.isnan(part)).any(axis=0)
    if not seen.any():
        raise DataError(f"{src.source}: every value of its {len(x)} training arrays is NaN; there is nothing to learn")
    if not seen.all():
        where = tuple(int(i) for i in np.argwhere(~seen)[0])
        raise DataError(
            f"{src.source}: element {where} (channel, row, column) is NaN in all {len(x)} training arrays; "
            "there is nothing to learn there"
        )


def _rows_for(ids: list[str], lookup: dict[str, int]) -> np.ndarray:
    return np.array([lookup.get(i, -1) for i in ids], dtype=np.int64)


def build_run_data(cfg: ExperimentConfig, seed: int, fitted: dict[str, object] | None = None) -> RunData:
    """Read the sources, split, fit statistics on the training split and wrap it all up.

    ``fitted`` (from :meth:`RunData.fitted_state` of another process) replaces the fitting, so
    every rank of a distributed run normalizes with exactly rank 0's numbers.
    """
    ge = cfg.global_config.basic_experiment
    given_stats = list(fitted["stats"]) if fitted else None  # type: ignore[call-overload]
    given_encodings: dict[str, object] = dict(fitted["encodings"]) if fitted else {}  # type: ignore[call-overload]
    sources: dict[str, ArraySource] = {}

    def source(path: str, where: str) -> ArraySource:
        key = read_ahead.source_key(path)
        if key not in sources:
            ahead = read_ahead.take(key) if ge.memory_dataset else None  # read while PyTorch loaded
            if ahead is not None:
                log.debug("%s: %d arrays read while PyTorch loaded", path, len(ahead.ids))
                sources[key] = ahead
                return ahead
            with _naming(where, path):
                sources[key] = open_array_source(Path(path))
            if ge.memory_dataset:
                sources[key].load_all()  # read each file once; stats and tensors share it
        return sources[key]

    out_sources = {
        oc.name: source(oc.output_info.output_source, f"output {oc.name!r}: output_info.output_source")
        for oc in cfg.output_configs
    }
    universe = sorted(set().union(*(s.ids for s in out_sources.values())))

    tables = {}
    input_ids: dict[str, set[str]] = {}
    for ic in cfg.input_configs:
        if isinstance(ic, TabularInputConfig):
            ti = ic.input_type_info
            with _naming(f"input {ic.name!r}: input_info.input_source", ic.input_info.input_source):
                tables[ic.name] = read_table(
                    Path(ic.input_info.input_source), ti.input_cat_columns, ti.input_con_columns
                )
            input_ids[ic.name] = set(tables[ic.name].ids)
        else:
            input_ids[ic.name] = set(source(ic.input_info.input_source, _where(ic.name)).ids)
    known = set(universe)
    for ic in cfg.input_configs:
        if input_ids[ic.name].isdisjoint(known):
            raise DataError(
                f"input {ic.name!r}: none of the {len(input_ids[ic.name])} IDs of {ic.input_info.input_source} "
                f"(e.g. {_some(input_ids[ic.name])}) is a sample ID of the outputs (e.g. {_some(known)}); "
                "IDs are matched as text: array file names without .npy, the ID column of a CSV"
            )
    anywhere = set().union(*input_ids.values())
    with_any = universe if anywhere.issuperset(universe) else [i for i in universe if i in anywhere]
    dropped = len(universe) - len(with_any)
    if not with_any:
        raise DataError(
            "the inputs and outputs share no sample ID: IDs come from the output sources "
            f"({', '.join(out_sources)}) and are matched to input files by name/ID column"
        )
    everywhere = set.intersection(*input_ids.values()) if input_ids else set()
    n_partial = len(with_any) - len(everywhere.intersection(with_any))
    if dropped:
        log.warning("%d of %d output IDs have no input at all and were dropped", dropped, len(universe))
    if n_partial:
        log.warning("%d IDs lack some inputs; those inputs are imputed", n_partial)
    ids = with_any

    if ge.manual_valid_ids_file:
        train_ids, valid_ids = manual_split(ids, Path(ge.manual_valid_ids_file))
    else:
        train_ids, valid_ids = split_ids(ids, ge.valid_size, seed)
    pos = {sid: i for i, sid in enumerate(ids)}
    train_idx = np.array(sorted(pos[i] for i in train_ids), dtype=np.int64)
    valid_idx = np.array(sorted(pos[i] for i in valid_ids), dtype=np.int64)

    stats_cache: dict[tuple[str, str | None, int | None], NormStats] = {}

    def stats_for(src: ArraySource, rows: np.ndarray, kind: str | None, max_n: int | None) -> NormStats:
        key = (str(src.source.resolve()), kind, max_n)
        if key not in stats_cache and given_stats is not None:
            if not given_stats:
                raise DataError("the statistics received from rank 0 do not match this rank's configs")
            g = given_stats.pop(0)
            stats_cache[key] = NormStats(
                g["kind"], np.asarray(g["mean"], dtype=np.float32), np.asarray(g["std"], dtype=np.float32)
            )
        if key not in stats_cache:
            train_rows = rows[train_idx]
            train_rows = train_rows[train_rows >= 0][: max_n or None]
            values = src.read(train_rows)
            check_values(src, values, train_rows)
            stats_cache[key] = compute_stats(values, kind)
            if kind and float(stats_cache[key].std.min()) < 1e-10:
                log.warning("%s: a standard deviation is ~0; normalized values may be large", src.source)
        return stats_cache[key]

    columns: dict[tuple[str, str | None, int | None], ArrayColumn] = {}

    def array_column(name: str, src: ArraySource, kind: str | None, max_n: int | None) -> ArrayColumn:
        rows = _rows_for(ids, src.index_of())
        stats = stats_for(src, rows, kind, max_n)
        key = (str(src.source.resolve()), kind, max_n)
        col = ArrayColumn(name=name, source=src, rows=rows, stats=stats)
        if ge.memory_dataset:
            # An input and an output on the same files share one tensor.
            if key not in columns:
                col.preload()
                columns[key] = col
            col.preloaded = columns[key].preloaded
        return col

    inputs: dict[str, ArrayColumn | TabularColumn] = {}
    for ic in cfg.input_configs:
        if isinstance(ic, ArrayInputConfig):
            ati = ic.input_type_info
            src = source(ic.input_info.input_source, _where(ic.name))
            inputs[ic.name] = array_column(ic.name, src, ati.normalization, ati.adaptive_normalization_max_samples)
        else:
            table = tables[ic.name]
            rows = _rows_for(ids, {sid: i for i, sid in enumerate(table.ids)})
            if ic.name in given_encodings:
                enc = TabularEncoding.from_json(given_encodings[ic.name])  # type: ignore[arg-type]
            else:
                enc = fit_encoding(table, rows[train_idx][rows[train_idx] >= 0])
            inputs[ic.name] = _tabular_column(ic.name, table, enc, rows)
    outputs = {}
    for oc in cfg.output_configs:
        oti = oc.output_type_info
        outputs[oc.name] = array_column(
            oc.name, out_sources[oc.name], oti.normalization, oti.adaptive_normalization_max_samples
        )
    return RunData(ids, train_idx, valid_idx, inputs, outputs, stats_cache)


def _tabular_column(name: str, table: object, enc: TabularEncoding, rows: np.ndarray) -> TabularColumn:
    from eir_core.data.tabular import NULL, TabularTable

    assert isinstance(table, TabularTable)
    present = rows >= 0
    cat = np.zeros((len(rows), len(enc.cat_columns)), dtype=np.int64)
    for j, c in enumerate(enc.cat_columns):
        values = [table.cat[c][r] if r >= 0 else NULL for r in rows]
        cat[:, j] = enc.cat_codes(c, values)
    con = np.zeros((len(rows), len(enc.con_columns)), dtype=np.float32)
    for j, c in enumerate(enc.con_columns):
        raw = np.where(present, table.con[c][np.maximum(rows, 0)], np.nan)
        con[:, j] = enc.con_values(c, raw)
    return TabularColumn(name, enc, torch.from_numpy(cat), torch.from_numpy(con), present)

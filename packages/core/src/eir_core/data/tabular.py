"""Tabular inputs from CSV: an ``ID`` column plus categorical and continuous columns.

Categorical values are strings; a missing value is the category ``__NULL__``. The
vocabulary of each column is its training values plus ``__NULL__``, sorted, so codes match
EIR's label encoding ("0".."9", "__NULL__" -> 0..10). Continuous columns are standardized
with the training split's mean and std; missing values become 0 after standardization.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eir_core.errors import DataError

NULL = "__NULL__"


@dataclass
class TabularTable:
    source: Path
    ids: list[str]
    cat: dict[str, list[str]] = field(default_factory=dict)  # column -> raw values
    con: dict[str, np.ndarray] = field(default_factory=dict)  # column -> float64 (NaN missing)


@dataclass
class TabularEncoding:
    """What it takes to turn raw tabular values into model tensors (kept in the bundle)."""

    cat_columns: list[str]
    con_columns: list[str]
    categories: dict[str, list[str]]  # column -> sorted vocabulary incl. NULL
    con_mean: dict[str, float]
    con_std: dict[str, float]

    def cat_codes(self, column: str, values: list[str]) -> np.ndarray:
        lookup = {v: i for i, v in enumerate(self.categories[column])}
        null = lookup[NULL]
        return np.array([lookup.get(v, null) for v in values], dtype=np.int64)

    def con_values(self, column: str, values: np.ndarray) -> np.ndarray:
        z = (values.astype(np.float64) - self.con_mean[column]) / self.con_std[column]
        return np.nan_to_num(z, nan=0.0).astype(np.float32)

    def to_json(self) -> dict[str, object]:
        return {
            "cat_columns": self.cat_columns,
            "con_columns": self.con_columns,
            "categories": self.categories,
            "con_mean": self.con_mean,
            "con_std": self.con_std,
        }

    @classmethod
    def from_json(cls, d: dict[str, object]) -> TabularEncoding:
        return cls(
            cat_columns=list(d["cat_columns"]),  # type: ignore[call-overload]
            con_columns=list(d["con_columns"]),  # type: ignore[call-overload]
            categories={k: list(v) for k, v in d["categories"].items()},  # type: ignore[attr-defined]
            con_mean={k: float(v) for k, v in d["con_mean"].items()},  # type: ignore[attr-defined]
            con_std={k: float(v) for k, v in d["con_std"].items()},  # type: ignore[attr-defined]
        )


def read_table(source: Path, cat_columns: list[str], con_columns: list[str]) -> TabularTable:
    if not source.is_file():
        raise DataError(f"{source}: tabular input file not found")
    try:
        with source.open(newline="", encoding="utf-8-sig") as f:  # a BOM (Excel's UTF-8 CSV) is not a name
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            if "ID" not in header:
                raise DataError(f"{source}: no 'ID' column (columns found: {', '.join(header)})")
            missing = [c for c in [*cat_columns, *con_columns] if c not in header]
            if missing:
                raise DataError(
                    f"{source}: configured columns not in the file: {', '.join(missing)} "
                    f"(columns found: {', '.join(header)})"
                )
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise DataError(f"{source}: not UTF-8 text (byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{source}: not a readable CSV file ({e})") from None
    ids = [(r.get("ID") or "").strip() for r in rows]
    seen: set[str] = set()
    for line, sid in enumerate(ids, start=2):
        if not sid:
            raise DataError(f"{source}: line {line} has an empty ID")
        if sid in seen:
            raise DataError(f"{source}: ID {sid!r} appears more than once (line {line}); IDs must be unique")
        seen.add(sid)
    table = TabularTable(source=source, ids=ids)
    for c in cat_columns:
        table.cat[c] = [(r.get(c) or "").strip() or NULL for r in rows]
    for c in con_columns:
        vals = np.empty(len(rows), dtype=np.float64)
        for i, r in enumerate(rows):
            text = (r.get(c) or "").strip()
            try:
                vals[i] = float(text) if text else np.nan
            except ValueError:
                raise DataError(
                    f"{source}: column {c!r} line {i + 2}: {text!r} is not a number; "
                    "list the column under input_cat_columns if it is categorical"
                ) from None
            if np.isinf(vals[i]):
                raise DataError(
                    f"{source}: column {c!r} line {i + 2}: {text!r} is not a finite number "
                    "(leave the cell empty for a missing value)"
                )
        table.con[c] = vals
    return table


def fit_encoding(table: TabularTable, train_rows: np.ndarray) -> TabularEncoding:
    """Vocabularies and standardization from the training rows of ``table``; a column with no
    value in any of them is refused (it would train on a constant)."""
    categories: dict[str, list[str]] = {}
    for c, values in table.cat.items():
        if len(train_rows) and all(values[i] == NULL for i in train_rows):
            raise DataError(f"{table.source}: column {c!r} is empty in every training row")
        vocab = {values[i] for i in train_rows} | {NULL}
        categories[c] = sorted(vocab)
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    for c, con_values in table.con.items():
        v = con_values[train_rows]
        if len(v) and not np.isfinite(v).any():
            raise DataError(f"{table.source}: column {c!r} has no number in any training row (all empty or NaN)")
        m = float(np.nanmean(v)) if np.isfinite(v).any() else 0.0
        s = float(np.nanstd(v)) if np.isfinite(v).any() else 1.0
        mean[c], std[c] = m, (s if s > 0 else 1.0)
    return TabularEncoding(
        cat_columns=list(table.cat),
        con_columns=list(table.con),
        categories=categories,
        con_mean=mean,
        con_std=std,
    )


def embedding_dim(n_categories: int) -> int:
    """EIR's rule of thumb for the width of a categorical embedding."""
    width: float = 1.6 * float(n_categories) ** 0.56
    return min(600, round(width))

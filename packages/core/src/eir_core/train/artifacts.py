"""What a run writes besides checkpoints: CSV histories, training curves, t-SNE of latents.

Numbers are written here; the PNGs are drawn by the renderer process (``render.py``) so that
drawing never holds up training.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eir_core._fs import atomic_write_text
from eir_core.config.schema import ExperimentConfig
from eir_core.data.dataset import RunData, TabularColumn
from eir_core.train.render import Renderer

log = logging.getLogger("eir_core.train")
TRAIN_CURVE_EVERY = 5  # every 5th training loss is plenty for a curve and keeps the job small


@dataclass
class Histories:
    train: list[tuple[int, float]] = field(default_factory=list)  # (iteration, loss)
    # (iteration, loss, perf-average): the same list as the resume state's, so a resumed run's
    # file keeps the validations before the interruption
    valid: list[tuple[int, float, float]] = field(default_factory=list)
    outputs: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # output -> (iteration, MSE)


def _write_csv(path: Path, header: str, rows: list[tuple[Any, ...]]) -> None:
    # Atomic: a run killed mid-write keeps the previous file whole, so a resume can read it.
    text = "".join(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in r) + "\n" for r in rows)
    atomic_write_text(path, header + "\n" + text)


def read_history(path: Path, upto: int) -> tuple[list[tuple[int, float]], str | None]:
    """The (iteration, value) rows of a history file that ``_write_csv`` wrote, up to and
    including iteration ``upto`` (a resumed run continues after it and writes the rest again).
    Returns the rows and, when the file is missing or has rows it cannot read, what is wrong."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return [], f"{path} is missing"
    except (OSError, UnicodeDecodeError) as e:
        return [], f"{path} cannot be read ({e.__class__.__name__})"
    rows: list[tuple[int, float]] = []
    bad = 0
    for line in lines[1:]:
        parts = line.split(",")
        try:
            it, value = int(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            bad += 1
            continue
        if it <= upto and (not rows or it > rows[-1][0]):
            rows.append((it, value))
    return rows, (f"{path}: {bad} unreadable rows skipped" if bad else None)


class Artifacts:
    def __init__(
        self, run_dir: Path, renderer: Renderer, record: Callable[[Path], None], plot_skip_steps: int = 0
    ) -> None:
        self.run_dir = run_dir
        self.record = record  # the run's journal of the files it writes (RunFolder.record)
        self.renderer = renderer
        self.skip = plot_skip_steps
        self.label_table: LabelTable | None = None  # labels to colour a t-SNE by, when no input has any

    def write_histories(self, h: Histories) -> None:
        """The CSV logs EIR writes, then their curves."""
        d = self.run_dir
        self._csv(self.train_history_path(), "iteration,loss-average", list(h.train))
        self._csv(d / "validation_average_history.log", "iteration,loss-average,perf-average", list(h.valid))
        for n, rows in h.outputs.items():
            self._csv(self.output_history_path(n), f"iteration,{n}_loss", list(rows))
        self._curves(h)

    def train_history_path(self) -> Path:
        return self.run_dir / "train_average_history.log"

    def output_history_path(self, name: str) -> Path:
        return self._output_dir(name) / f"validation_{name}_history.log"

    def past_histories(self, h: Histories, upto: int) -> None:
        """A resumed run's histories before it stopped (iterations 1..``upto``), read back from
        the files the run wrote, so that the files and curves keep the whole run (the
        validation history travels in the resume state). What cannot be read is a warning."""
        problems = []
        h.train, why = read_history(self.train_history_path(), upto)
        problems.append(why)
        for n in h.outputs:
            h.outputs[n], why = read_history(self.output_history_path(n), upto)
            problems.append(why)
        for problem in filter(None, problems):
            log.warning("resume: %s; the history before iteration %d is incomplete", problem, upto)

    def _csv(self, path: Path, header: str, rows: list[tuple[Any, ...]]) -> None:
        self.record(path)
        _write_csv(path, header, rows)

    def _output_dir(self, name: str) -> Path:
        return self.run_dir / "results" / name / name

    def _curves(self, h: Histories) -> None:
        curves: list[tuple[Path, list[tuple[int, float]], list[tuple[int, float]], str]] = [
            (
                self.run_dir / "training_curve_LOSS_1.png",
                h.train[::TRAIN_CURVE_EVERY],
                [(v[0], v[1]) for v in h.valid],
                "loss-average",
            ),
            (self.run_dir / "training_curve_PERF-AVERAGE_1.png", [], [(v[0], v[2]) for v in h.valid], "perf-average"),
        ]
        for n, rows in h.outputs.items():
            curves.append((self._output_dir(n) / "training_curve_LOSS.png", [], list(rows), f"{n} validation MSE"))
        for path, tr, va, title in curves:
            self.record(path)
            self.renderer.submit("curve", path=str(path), train=tr, valid=va, title=title, skip=self.skip)

    def plot_latents(self, data: RunData, iteration: int, layer: str, ids: list[str]) -> None:
        """t-SNE of one layer's validation latents, coloured by a label when there is one: a
        categorical input's, else a labels CSV beside an array folder (``labels_beside``)."""
        labels, by = latent_labels(data, ids, self.label_table)
        folder = self.run_dir / "latents" / "latent_outputs" / str(iteration) / layer
        title = f"t-SNE of {layer} at iteration {iteration} ({len(ids)} validation samples)"
        title += f",\ncoloured by {by}" if by else ",\nuncoloured: no categorical input, no labels CSV beside the data"
        pictures = [folder / "tsne.png", self.run_dir / "latents_visualization_tsne.png"]
        for p in pictures:
            self.record(p)
        self.renderer.submit(
            "tsne",
            batches=[str(p) for p in sorted(folder.glob("batch_*.npy"))],
            labels=labels,
            paths=[str(p) for p in pictures],
            title=title,
        )


@dataclass
class LabelTable:
    """A label per sample ID read from a CSV file (to colour pictures by; never trained on)."""

    values: dict[str, str]
    column: str
    path: Path


MAX_LABEL_CSV_BYTES = 64 << 20
MAX_LABEL_VALUES = 50  # more distinct values than this is not a label to colour by


def array_sources(cfg: ExperimentConfig) -> list[Path]:
    """The array folders a run reads: its array inputs', then its array outputs'."""
    out = [Path(ic.input_info.input_source) for ic in cfg.input_configs if ic.input_info.input_type == "array"]
    return out + [
        Path(oc.output_info.output_source) for oc in cfg.output_configs if oc.output_info.output_type == "array"
    ]


def labels_beside(array_folders: list[Path]) -> LabelTable | None:
    """The first CSV beside one of ``array_folders`` (in the folder that holds it, as EIR's
    tutorial layout puts ``mnist_labels.csv`` beside ``mnist_npy/``) whose first column is ``ID``
    and whose second has at most 50 distinct values: the labels of the samples."""
    import csv

    for folder in array_folders:
        parent = folder.parent
        try:
            candidates = sorted(p for p in parent.glob("*.csv") if p.is_file())
        except OSError:
            continue
        for path in candidates:
            try:
                if path.stat().st_size > MAX_LABEL_CSV_BYTES:
                    continue
                with path.open(newline="", encoding="utf-8-sig") as f:
                    rows = list(csv.reader(f))
            except (OSError, UnicodeDecodeError, csv.Error):
                continue
            if not rows or len(rows[0]) < 2 or rows[0][0].strip().upper() != "ID":
                continue
            values = {r[0]: r[1] for r in rows[1:] if len(r) >= 2 and r[1] != ""}
            if values and len(set(values.values())) <= MAX_LABEL_VALUES:
                return LabelTable(values, rows[0][1], path)
    return None


def latent_labels(data: RunData, ids: list[str], table: LabelTable | None = None) -> tuple[list[str] | None, str]:
    """Per sample ID, the first categorical column of a tabular input, else the labels of
    ``table`` when it has every ID; with what they are (for the title), or (None, "")."""
    pos = {sid: i for i, sid in enumerate(data.ids)}
    for name, col in data.inputs.items():
        if isinstance(col, TabularColumn) and col.encoding.cat_columns:
            c = col.encoding.cat_columns[0]
            vocab = col.encoding.categories[c]
            return [vocab[int(col.cat[pos[i], 0])] for i in ids], f"{name}.{c}"
    if table is not None and all(i in table.values for i in ids):
        return [table.values[i] for i in ids], f"{table.column} from {table.path.name} (not a model input)"
    return None, ""

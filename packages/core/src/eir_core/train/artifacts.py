"""What a run writes besides checkpoints: CSV histories, training curves, t-SNE of latents.

Numbers are written here; the PNGs are drawn by the renderer process (``render.py``) so that
drawing never holds up training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eir_core.data.dataset import RunData, TabularColumn
from eir_core.train.render import Renderer

TRAIN_CURVE_EVERY = 5  # every 5th training loss is plenty for a curve and keeps the job small


@dataclass
class Histories:
    train: list[tuple[int, float]] = field(default_factory=list)  # (iteration, loss)
    # (iteration, loss, perf-average): the same list as the resume state's, so a resumed run's
    # file keeps the validations before the interruption
    valid: list[tuple[int, float, float]] = field(default_factory=list)
    outputs: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # output -> (iteration, MSE)


def _write_csv(path: Path, header: str, rows: list[tuple[Any, ...]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in r) + "\n" for r in rows)
    path.write_text(header + "\n" + text)


class Artifacts:
    def __init__(
        self, run_dir: Path, renderer: Renderer, record: Callable[[Path], None], plot_skip_steps: int = 0
    ) -> None:
        self.run_dir = run_dir
        self.record = record  # the run's journal of the files it writes (RunFolder.record)
        self.renderer = renderer
        self.skip = plot_skip_steps

    def write_histories(self, h: Histories) -> None:
        """The CSV logs EIR writes, then their curves."""
        d = self.run_dir
        self._csv(d / "train_average_history.log", "iteration,loss-average", list(h.train))
        self._csv(d / "validation_average_history.log", "iteration,loss-average,perf-average", list(h.valid))
        for n, rows in h.outputs.items():
            self._csv(self._output_dir(n) / f"validation_{n}_history.log", f"iteration,{n}_loss", list(rows))
        self._curves(h)

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
        """t-SNE of one layer's validation latents, coloured by a label when there is one."""
        labels, by = latent_labels(data, ids)
        folder = self.run_dir / "latents" / "latent_outputs" / str(iteration) / layer
        title = f"t-SNE of {layer} at iteration {iteration} ({len(ids)} validation samples)"
        title += f", coloured by {by}" if by else ""
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


def latent_labels(data: RunData, ids: list[str]) -> tuple[list[str] | None, str]:
    """The first categorical column of a tabular input, per sample ID (and its name), if any."""
    pos = {sid: i for i, sid in enumerate(data.ids)}
    for name, col in data.inputs.items():
        if isinstance(col, TabularColumn) and col.encoding.cat_columns:
            c = col.encoding.cat_columns[0]
            vocab = col.encoding.categories[c]
            return [vocab[int(col.cat[pos[i], 0])] for i in ids], f"{name}.{c}"
    return None, ""

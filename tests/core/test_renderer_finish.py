"""The trainer ends the renderer's input before writing the final bundle, so the last plots draw
meanwhile; a job sent after that is reported, never an exception, and close() waits for the rest."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from eir_core.train.render import Renderer


def test_finish_then_close_draws_what_was_queued(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    r = Renderer()
    curve = tmp_path / "curve.png"
    r.submit("curve", path=str(curve), train=[[1, 1.0], [2, 0.5]], valid=[[2, 0.6]], title="loss")
    r.finish()
    r.finish()  # twice is harmless
    with caplog.at_level(logging.WARNING, logger="eir_core.train"):
        r.submit("curve", path=str(tmp_path / "late.png"), train=[[1, 1.0]], valid=[], title="late")
    assert "the plot renderer is gone" in caplog.text
    r.close()
    assert curve.stat().st_size > 1000 and not (tmp_path / "late.png").exists()
    assert r.proc is None


def test_after_the_end_of_input_the_newest_job_wins_a_shared_file(tmp_path: Path) -> None:
    """Once stdin ends, two lanes draw what is queued (on 2+ cores): a slow older t-SNE and a
    quick newer curve both write ``latest.png``; the t-SNE finishes last, yet the file is the
    curve's, and the t-SNE's own file is still written."""
    import io
    import json

    import numpy as np

    from eir_core.train.render import serve

    rng = np.random.default_rng(0)
    rec = np.zeros(300, dtype=[("Latent", "f8", (16,)), ("ID", "U8")])
    rec["Latent"] = rng.normal(size=(300, 16))
    np.save(tmp_path / "batch_00000.npy", rec)
    latest, own, curve = tmp_path / "latest.png", tmp_path / "tsne.png", tmp_path / "curve.png"
    jobs = [
        {
            "kind": "tsne",
            "batches": [str(tmp_path / "batch_00000.npy")],
            "paths": [str(own), str(latest)],
            "title": "t",
        },
        {"kind": "curve", "path": str(latest), "train": [[1, 1.0], [2, 0.5]], "valid": [], "title": "c"},
        {"kind": "curve", "path": str(curve), "train": [[1, 1.0], [2, 0.5]], "valid": [], "title": "c"},
    ]
    serve(io.StringIO("".join(json.dumps(j) + "\n" for j in jobs)))
    assert own.stat().st_size > 1000
    assert latest.read_bytes() == curve.read_bytes()  # the same curve, drawn twice


def test_outputs_keep_the_newest_write() -> None:
    import tempfile

    from eir_core.train.render import _Outputs

    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "x.png")
        out = _Outputs()
        out.write(path, b"new", seq=2)
        out.write(path, b"old", seq=1)
        assert Path(path).read_bytes() == b"new"
        out.write(path, b"newer", seq=3)
        assert Path(path).read_bytes() == b"newer"


def test_log_axis_labels_are_plain_numbers() -> None:
    """Curves on a log axis label ticks as 0.1 / 0.05 (no mathtext, half the drawing time); minor
    labels at 2 and 5 only while the axis spans at most two decades."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from eir_core.train.plots import _plain_log_labels

    def labels(lo: float, hi: float) -> tuple[set[str], set[str]]:
        fig = Figure()
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        ax.plot([0, 1], [lo, hi])
        ax.set_yscale("log")
        ax.set_ylim(lo, hi)
        _plain_log_labels(ax)
        fig.canvas.draw()

        def shown(ticks: list[Any]) -> set[str]:
            return {t.get_text() for t in ticks if t.get_text() and lo <= t.get_position()[1] <= hi}

        return shown(ax.yaxis.get_majorticklabels()), shown(ax.yaxis.get_minorticklabels())

    major, minor = labels(0.02, 0.7)
    assert major == {"0.1"} and minor == {"0.02", "0.05", "0.2", "0.5"}
    major, minor = labels(1e-4, 1.0)
    assert {"0.001", "0.01", "0.1", "1"} <= major and not minor
    assert not any("$" in t for t in major | minor)

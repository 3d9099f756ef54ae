"""The trainer ends the renderer's input before writing the final bundle, so the last plots draw
meanwhile; a job sent after that is reported, never an exception, and close() waits for the rest."""

from __future__ import annotations

import logging
from pathlib import Path

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

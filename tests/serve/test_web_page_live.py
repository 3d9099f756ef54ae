"""The web page follows a server that swaps in better checkpoints (--model-control poll), in real
headless Chromium: the iteration it shows and the note change without a reload."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from tests.helpers import place_checkpoint
from tests.serve.realserver import eirserve
from tests.serve.test_web_page import FLAGS, chromium

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_the_page_shows_the_iteration_served_and_follows_a_swap(tmp_path: Path, checkpoints: list[Path]) -> None:
    executable = chromium()
    saved = tmp_path / "run" / "saved_models"
    saved.mkdir(parents=True)
    place_checkpoint(saved, checkpoints[0], 1)
    first = checkpoints[0].name.split("_checkpoint_")[1].split("_")[0]
    last = checkpoints[-1].name.split("_checkpoint_")[1].split("_")[0]
    with (
        eirserve(tmp_path / "run", "--model-control", "poll", "--poll-interval-s", "0.2") as server,
        sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(executable_path=executable, args=FLAGS)
        p = browser.new_page()
        errors: list[str] = []
        p.on("pageerror", lambda e: errors.append(str(e)))
        p.goto(server.url + "/")
        p.wait_for_function(f"document.getElementById('model').textContent.endsWith('iteration {first}')")
        target = place_checkpoint(saved, checkpoints[-1], 2)
        p.wait_for_function(
            f"document.getElementById('model').textContent.endsWith('iteration {last}')", timeout=20_000
        )
        assert target.name in p.inner_text("#status")
        browser.close()
    assert errors == []

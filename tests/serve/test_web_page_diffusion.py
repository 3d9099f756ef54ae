"""The web page with a diffusion model, in real headless Chromium against a real eirserve: the
sampler's settings from /info, a grid of varied digits per label, a sample forming over
Server-Sent Events, and mistakes in the fields said rather than silently changed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.serve.realserver import eirserve
from tests.serve.test_web_page import FLAGS, chromium

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PIXELS = "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data).join(',')"


@pytest.fixture(scope="module")
def page(tiny_diffusion_run: Path) -> Iterator[tuple[Page, list[str], str]]:
    executable = chromium()
    with eirserve(tiny_diffusion_run) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=FLAGS)
        p = browser.new_page(viewport={"width": 1000, "height": 1400})
        errors: list[str] = []
        p.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        p.on("pageerror", lambda e: errors.append(str(e)))
        p.goto(server.url + "/")
        p.wait_for_function("document.querySelectorAll('#digit option').length === 10", timeout=30_000)
        yield p, errors, server.url
        browser.close()


def test_sampler_settings_come_from_info(page: tuple[Page, list[str], str]) -> None:
    p, errors, _ = page
    assert p.is_visible("#sampling") and not p.is_visible("#reconstruct")
    assert p.input_value("#steps") == "5" and p.input_value("#sampler") == "ddim"
    assert p.input_value("#guidance") == "2"
    assert errors == []


def test_grid_draws_varied_digits_for_every_label(page: tuple[Page, list[str], str], tmp_path: Path) -> None:
    p, errors, _ = page
    p.fill("#count", "4")
    p.click("#grid")
    p.wait_for_function("document.querySelectorAll('#gallery canvas').length === 40", timeout=30_000)
    rows = p.query_selector_all("#gallery > .row")
    assert [r.query_selector("b").inner_text() for r in rows] == [str(d) for d in range(10)]
    for r in rows:
        images = {c.evaluate(PIXELS) for c in r.query_selector_all("canvas")}
        assert len(images) == 4, "four samples of a label are four different images"
    p.screenshot(path=str(tmp_path / "grid.png"), full_page=True)
    assert errors == []


def test_watch_one_form_draws_every_step(page: tuple[Page, list[str], str]) -> None:
    p, errors, _ = page
    p.fill("#steps", "12")
    p.click("#watch")
    p.wait_for_function("document.getElementById('form-step').textContent === 'step 12 of 12 (done)'", timeout=30_000)
    assert p.evaluate("document.getElementById('form-out').width") == 8
    assert errors == []


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("#count", "0", "Count must be a whole number from 1 to 32"),
        ("#count", "5000", "Count must be a whole number from 1 to 32"),
        ("#steps", "999", "Steps must be a whole number from 1 to 20"),
        ("#guidance", "-1", "Guidance must be a number from 0 to 20"),
    ],
)
def test_a_bad_field_is_said_not_changed(page: tuple[Page, list[str], str], field: str, value: str, says: str) -> None:
    p, _, _ = page
    p.fill("#count", "2")
    p.fill("#steps", "5")
    p.fill("#guidance", "2")
    p.fill(field, value)
    p.click("#go")
    p.wait_for_selector("#gen-msg.error", timeout=10_000)
    assert says in p.inner_text("#gen-msg")
    assert p.input_value(field) == value

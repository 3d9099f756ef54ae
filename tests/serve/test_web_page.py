"""The web page at / in real headless Chromium (Debian's package) against a real eirserve."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.serve.realserver import eirserve

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# `make test` installs nothing: where there is no Chromium these tests are skipped, saying how to
# run them (CI installs Debian's chromium in .ci/run first, so they run there).
HAVE_CHROMIUM = Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        not HAVE_CHROMIUM,
        reason=f"web page tests skipped: no Chromium at {CHROMIUM}. To run them, install it "
        "(Debian/Ubuntu: sudo apt-get install chromium) or point CHROMIUM at a Chromium binary",
    ),
]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
         "--no-first-run", "--disable-component-update", "--disable-sync"]  # fmt: skip


def chromium() -> str:
    """Debian's Chromium, or the browser CHROMIUM names (checked before anything else runs)."""
    return CHROMIUM


@pytest.fixture(scope="module")
def server(tiny_conditional_bundle: Path) -> Iterator[str]:
    with eirserve(tiny_conditional_bundle) as s:
        yield s.url


@pytest.fixture(scope="module")
def browser_page() -> Iterator[tuple[Page, list[str]]]:
    executable = chromium()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=FLAGS)
        page = browser.new_page(viewport={"width": 1000, "height": 1100})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page, errors
        browser.close()


NON_BLANK = (
    "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
    " let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i]; return s / (d.length / 4); }"
)


def test_generate_each_digit_draws_images(server: str, browser_page: tuple[Page, list[str]], tmp_path: Path) -> None:
    page, errors = browser_page
    page.goto(server + "/")
    page.wait_for_function("document.querySelectorAll('#digit option').length === 10", timeout=20_000)
    assert "mnist_label" in page.inner_text("#info")
    page.fill("#count", "3")
    for d in range(10):
        page.select_option("#digit", str(d))
        page.click("#go")
        page.wait_for_function("document.querySelectorAll('#gallery canvas').length === 3", timeout=20_000)
        means = [c.evaluate(NON_BLANK) for c in page.query_selector_all("#gallery canvas")]
        assert all(m > 5 for m in means), (d, means)  # mean pixel value: not a blank (black) canvas
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert (tmp_path / "page.png").stat().st_size > 10_000
    assert errors == []


def test_server_error_is_shown_to_the_person(server: str, browser_page: tuple[Page, list[str]]) -> None:
    page, _ = browser_page
    page.goto(server + "/")
    page.wait_for_function("document.querySelectorAll('#digit option').length === 10", timeout=20_000)
    body = {"error": {"code": "overloaded", "message": "server busy: queue full; retry shortly", "details": []}}
    page.route("**/predict", lambda route: route.fulfill(status=503, content_type="application/json",
                                                          body=json.dumps(body)))  # fmt: skip
    page.click("#go")
    page.wait_for_selector("#gen-msg.error", timeout=10_000)
    assert "server busy" in page.inner_text("#gen-msg")
    page.unroute("**/predict")

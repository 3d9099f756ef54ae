"""GET /: a small page to generate digits from a label, reconstruct a drawn digit, see /info."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["web"])


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse(files("eir_serve").joinpath("static/index.html").read_text(encoding="utf-8"))

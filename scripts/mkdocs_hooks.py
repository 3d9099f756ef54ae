"""MkDocs hook (mkdocs.yml ``hooks:``): the Benchmarks page shows ``benchmarks/results/*.md``
as they are when the site is built, never a copy.

``docs/benchmarks.md`` holds a comment ``<!-- results: NAME -->`` where each results file goes;
the hook puts ``benchmarks/results/NAME.md`` there with its headings moved two levels down. A
marker naming no file, or a results file that no marker shows, fails the build.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
PAGE = "benchmarks.md"
MARKER = re.compile(r"<!-- results: (?P<name>[\w.-]+) -->")


class ResultsError(Exception):
    pass


def demote(markdown: str, levels: int) -> str:
    """Headings ``levels`` deeper (at most ######), outside fenced code."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith(("```", "~~~")):
            fenced = not fenced
        m = re.match(r"^(#{1,6})(\s)", line)
        if m and not fenced:
            line = "#" * min(6, len(m.group(1)) + levels) + line[len(m.group(1)) :]
        out.append(line)
    return "\n".join(out) + "\n"


def render_results(markdown: str, results: Path = RESULTS) -> str:
    """``markdown`` with each marker replaced by its results file."""
    available = {p.stem for p in results.glob("*.md")}
    shown = set(MARKER.findall(markdown))
    missing = sorted(shown - available)
    if missing:
        raise ResultsError(f"{PAGE}: no results file for {', '.join(missing)} in {results}")
    unshown = sorted(available - shown)
    if unshown:
        raise ResultsError(
            f"{PAGE}: {', '.join(f'{n}.md' for n in unshown)} in {results} not shown; "
            "add <!-- results: NAME --> for each"
        )

    def include(m: re.Match[str]) -> str:
        name = m.group("name")
        text = (results / f"{name}.md").read_text(encoding="utf-8")
        raw = f" (raw figures: `{name}.json`)" if (results / f"{name}.json").is_file() else ""
        source = f"*From `benchmarks/results/{name}.md`{raw}, as it is in this checkout.*\n\n"
        return source + demote(text, 2)

    return MARKER.sub(include, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    from mkdocs.exceptions import PluginError

    try:
        return render_results(markdown)
    except ResultsError as e:
        raise PluginError(str(e)) from None

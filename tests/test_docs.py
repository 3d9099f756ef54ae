"""The documentation: how scripts/run_docs.py reads and runs a page's blocks (fast, on small
pages written here), that the real pages parse, that every command line in them is one its tool
accepts (flags, config files and override keys), and that the site builds strictly with the
benchmark results generated into it."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


rd = _load("run_docs", ROOT / "scripts" / "run_docs.py")
hooks = _load("mkdocs_hooks", ROOT / "scripts" / "mkdocs_hooks.py")


def blocks(text: str) -> list:
    return [s for s in rd.parse_page(text, "page.md") if isinstance(s, rd.Block)]


# ------------------------------------------------------------------------------------ parsing


def test_runnable_fences_in_order_others_ignored() -> None:
    page = """# T

```bash
echo one
```

```text
not run
```

~~~python
print("two")
~~~

1. In a list:

    ```sh
    echo three
    ```

```yaml
a: 1
```
"""
    got = blocks(page)
    assert [(b.lang, b.code, b.line) for b in got] == [
        ("bash", "echo one\n", 3),
        ("python", 'print("two")\n', 11),
        ("sh", "echo three\n", 17),
    ]
    assert all(b.directive == rd.Directive() for b in got)


def test_directives_attach_to_the_block_below() -> None:
    page = """<!-- run: skip needs a cluster -->
```bash
kubectl apply -k deploy
```

<!-- run: background ready=http://127.0.0.1:8000/ready -->

```bash
eirserve --model-path runs/ae
```

<!-- run: exit=2 timeout=30 -->
```bash
false
```

<!-- run: stop -->

Add `--globals.basic_experiment.n_epochs=2` to train less.

<!-- run: eirtrain-extra="--globals.basic_experiment.n_epochs=2" -->
```bash
eirtrain --global_configs g.yaml
```
"""
    steps = rd.parse_page(page, "p.md")
    kinds = [type(s).__name__ for s in steps]
    assert kinds == ["Block", "Block", "Block", "Stop", "Block"]
    skip, bg, fail, stop, train = steps
    assert skip.directive.skip == "needs a cluster"
    assert bg.directive.background and bg.directive.ready == "http://127.0.0.1:8000/ready"
    assert fail.directive.exit == 2 and fail.directive.timeout == 30
    assert (stop.page, stop.line) == ("p.md", 17)
    assert train.directive.eirtrain_extra == "--globals.basic_experiment.n_epochs=2"


@pytest.mark.parametrize(
    ("page", "message"),
    [
        ("<!-- run: skip -->\n```bash\nx\n```\n", "needs a reason"),
        ("<!-- run: skip:   -->\n```bash\nx\n```\n", "needs a reason"),
        ("<!-- run: exit=2 -->\nSome prose.\n```bash\nx\n```\n", "right above its code block"),
        ("<!-- run: exit=2 -->\n```text\nx\n```\n", "never run"),
        ("<!-- run: exit=2 -->\n", "not followed by a code block"),
        ("<!-- run: frobnicate -->\n```bash\nx\n```\n", "unknown setting 'frobnicate'"),
        ("<!-- run: exit=two -->\n```bash\nx\n```\n", "unknown setting 'exit=two'"),
        ("<!-- run: ready=http://x -->\n```bash\nx\n```\n", "for background blocks"),
        ("<!-- run: background exit=1 -->\n```bash\nx\n```\n", "no exit status"),
        ("```bash\nnever closed\n", "never closed"),
        (
            '<!-- run: eirtrain-extra="--globals.basic_experiment.n_epochs=2" -->\n```bash\neirtrain --x\n```\n',
            "not shown on the page",
        ),
    ],
)
def test_mistakes_in_a_page_are_errors_naming_the_line(page: str, message: str) -> None:
    with pytest.raises(rd.DocsError, match=message) as e:
        rd.parse_page(page, "p.md")
    assert str(e.value).startswith(("p.md:1:", "p.md:2:"))  # the comment's line or its block's


def test_a_comment_quoted_in_prose_is_not_a_directive() -> None:
    page = "Mark a block with `<!-- run: skip REASON -->` above it.\n\n```bash\necho hi\n```\n"
    assert blocks(page)[0].directive == rd.Directive()


def test_the_extra_must_be_visible_text_not_only_in_a_comment() -> None:
    hidden = '<!-- run: eirtrain-extra="--n=2" -->\n```bash\neirtrain\n```\n<!-- --n=2 -->\n'
    with pytest.raises(rd.DocsError, match="not shown"):
        rd.parse_page(hidden, "p.md")
    shown = hidden + "Pass `--n=2` to train less.\n"
    assert blocks(shown)[0].directive.eirtrain_extra == "--n=2"


def test_training_extra_goes_on_each_training_command_before_its_comment() -> None:
    code = (
        "cd x\n"
        "eirtrain --a 1 \\\n"
        "         --b 2   # a comment with # inside\n"
        "torchrun --standalone -m eir_core.cli.train --a 1\n"
        "echo 'eirtrain is not run here'\n"
    )
    got = rd.add_training_extra(code, "--n=2")
    assert got.splitlines() == [
        "cd x",
        "eirtrain --a 1 \\",
        "         --b 2 --n=2  # a comment with # inside",
        "torchrun --standalone -m eir_core.cli.train --a 1 --n=2",
        "echo 'eirtrain is not run here'",
    ]
    with pytest.raises(rd.DocsError, match="no command starting with"):
        rd.add_training_extra("echo hi\n", "--n=2")


# ------------------------------------------------------------------------------------ running


def _session(tmp_path: Path):
    checkout, state = tmp_path / "checkout", tmp_path / "state"
    (checkout / "sub").mkdir(parents=True)
    state.mkdir()
    return rd.Session(checkout, state), checkout


def test_folder_and_exports_carry_from_block_to_block_python_included(tmp_path: Path) -> None:
    s, checkout = _session(tmp_path)
    page = """```bash
cd sub
export GREETING=hello
```

```bash
echo "$GREETING from $(pwd)" > out.txt
```

```python
import os, pathlib
pathlib.Path("py.txt").write_text(os.environ["GREETING"] + " " + os.getcwd())
```
"""
    for n, b in enumerate(blocks(page)):
        ok, why = s.run(b, n, tmp_path / f"{n}.log")
        assert ok, why
    sub = checkout / "sub"
    assert (sub / "out.txt").read_text() == f"hello from {sub}\n"
    assert (sub / "py.txt").read_text() == f"hello {sub}"


def test_a_failing_block_and_the_expected_exit_status(tmp_path: Path) -> None:
    s, _ = _session(tmp_path)
    fails, expected = blocks("```bash\nfalse\necho never\n```\n\n<!-- run: exit=3 -->\n```bash\nexit 3\n```\n")
    ok, why = s.run(fails, 0, tmp_path / "0.log")
    assert not ok and why == "exit status 1, expected 0"
    assert "never" not in (tmp_path / "0.log").read_text()  # set -e: a reader would see the error first
    assert s.run(expected, 1, tmp_path / "1.log") == (True, "")


def test_a_traceback_fails_a_block_that_exits_0(tmp_path: Path) -> None:
    s, _ = _session(tmp_path)
    code = "import sys\ntry:\n    1 / 0\nexcept ZeroDivisionError:\n    import traceback; traceback.print_exc()\n"
    (py,) = blocks(f"```python\n{code}```\n")
    ok, why = s.run(py, 0, tmp_path / "0.log")
    assert not ok and "traceback" in why
    (bg,) = blocks("<!-- run: background -->\n```bash\necho 'Traceback (most recent call last):' >&2; sleep 300\n```\n")
    assert s.run(bg, 1, tmp_path / "1.log") == (True, "")
    time.sleep(0.3)
    problems = s.stop_background()
    assert len(problems) == 1 and "printed a Python traceback" in problems[0]


def test_background_blocks_are_stopped_with_ctrl_c(tmp_path: Path) -> None:
    s, checkout = _session(tmp_path)
    (bg,) = blocks(
        "<!-- run: background -->\n```bash\ntrap 'echo stopped > stopped.txt; exit 0' INT\nsleep 300 & wait\n```\n"
    )
    assert s.run(bg, 0, tmp_path / "bg.log") == (True, "")
    proc = s.background[0][1]
    time.sleep(0.5)  # the block's trap is installed by then
    assert proc.poll() is None
    assert s.stop_background() == []
    assert proc.poll() is not None and (checkout / "stopped.txt").read_text() == "stopped\n"


def test_a_server_that_exits_before_it_is_ready_is_a_failure(tmp_path: Path) -> None:
    s, _ = _session(tmp_path)
    (bg,) = blocks("<!-- run: background ready=http://127.0.0.1:9/ready -->\n```bash\necho oops; exit 4\n```\n")
    ok, why = s.run(bg, 0, tmp_path / "bg.log")
    assert not ok and "exited with status 4" in why


# -------------------------------------------------------------------------------- the real pages


def all_pages() -> list[Path]:
    return [p for pages in rd.tracks(ROOT).values() for p in pages]


def test_nav_lists_every_page_and_every_page_parses() -> None:
    nav = rd.nav_pages(ROOT / "mkdocs.yml")
    on_disk = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert sorted(nav) == on_disk
    for page in all_pages():
        steps = rd.parse_page(page.read_text(), page.name)
        for s in steps:
            if isinstance(s, rd.Block) and s.directive.skip:
                assert len(s.directive.skip) > 10, f"{s.where}: say why it cannot run here"
    runnable = [s for p in all_pages() for s in rd.parse_page(p.read_text(), p.name) if isinstance(s, rd.Block)]
    assert sum(not s.directive.skip for s in runnable) >= 30


def _commands(code: str) -> list[list[str]]:
    """Each simple command of a shell block as words (continuations joined, comments, pipes,
    ;/&& separators and redirections split off, leading VAR=value assignments dropped)."""
    out: list[list[str]] = []
    joined = code.replace("\\\n", " ")
    for line in joined.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
        lex.whitespace_split = True
        lex.commenters = "#"
        words: list[str] = []
        redirect = False
        for w in [*list(lex), ";"]:
            if redirect:  # the file of a redirection is no argument
                redirect = False
            elif set(w) <= set("<>"):
                redirect = True
            elif set(w) <= set(";&|"):
                while words and "=" in words[0] and not words[0].startswith("-"):
                    words.pop(0)
                if words:
                    out.append(words)
                words = []
            else:
                words.append(w)
    return out


def test_every_command_line_in_the_docs_is_one_its_tool_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    from eir_core.cli.bundle import build_parser as bundle_parser
    from eir_core.cli.data import build_parser as data_parser
    from eir_core.cli.train import build_parser as train_parser
    from eir_core.config.load import build_experiment_config
    from eir_serve.cli import load_settings

    for k in [k for k in os.environ if k.startswith("EIR_SERVE_")]:
        monkeypatch.delenv(k)
    monkeypatch.chdir(ROOT / "examples" / "tutorial")  # where the pages run eirtrain from
    seen: dict[str, int] = {}
    for page in all_pages():
        for s in rd.parse_page(page.read_text(), page.name):
            if not isinstance(s, rd.Block) or s.kind != "shell":
                continue
            code = rd.add_training_extra(s.code, s.directive.eirtrain_extra) if s.directive.eirtrain_extra else s.code
            for words in _commands(code):
                tool, args = words[0], words[1:]
                if tool == "torchrun":
                    at = words.index("eir_core.cli.train")
                    tool, args = "eirtrain", words[at + 1 :]
                where = f"{s.where}: {' '.join(words)}"
                if tool == "eirtrain":
                    if args == ["--help"]:
                        continue
                    known, extra = train_parser().parse_known_args(args)
                    if s.directive.exit == 0 and "--resume" not in args:
                        # the configs load and every override names a real key
                        build_experiment_config(
                            known.global_configs, known.input_configs, known.output_configs, known.fusion_configs, extra
                        )
                    assert all(e.startswith("--") and "=" in e for e in extra), where
                elif tool == "eir-data":
                    data_parser().parse_args(args)
                elif tool == "eir-bundle":
                    bundle_parser().parse_args(args)
                elif tool == "eirserve":
                    if args != ["--help"]:
                        load_settings(args)
                else:
                    continue
                seen[tool] = seen.get(tool, 0) + 1
    assert seen.get("eirtrain", 0) >= 10 and seen.get("eir-data", 0) >= 3
    assert seen.get("eir-bundle", 0) >= 3 and seen.get("eirserve", 0) >= 5, seen


def test_served_model_names_are_the_runs_the_pages_trained() -> None:
    """A model name in an example (a V2 URL, tritonclient's infer) is the run folder's name of a
    run trained earlier on the pages, or the name deploy/'s training gives (tutorial_<run>_<size>)."""
    trained: set[str] = set()
    text = "\n".join(p.read_text() for p in all_pages())
    for m in __import__("re").finditer(r"output_folder=runs/([\w.-]+)", text):
        trained.add(m.group(1))
    trained.add("tutorial_autoencoder_8")  # docker/train_once.sh's default name (checked below)
    assert 'name="tutorial_${kind}_${size}"' in (ROOT / "docker" / "train_once.sh").read_text()
    import re

    used = re.findall(r"/v2/models/([\w.-]+)/infer|\.infer\(\s*\"([\w.-]+)\"", text)
    names = {a or b for a, b in used}
    assert names, "no model names found in the examples"
    assert names <= trained, f"examples call models no page trains: {names - trained}"


def test_the_site_builds_strictly_with_the_benchmark_results(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    html = (tmp_path / "site" / "benchmarks" / "index.html").read_text()
    for results in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        title = results.read_text().splitlines()[0].lstrip("# ").split(" (")[0]
        assert f"benchmarks/results/{results.name}" in html and title.split(":")[0] in html, results.name
    assert "<!-- results:" not in html


def test_results_markers_are_checked_and_headings_demoted(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A title\n\n## Part\n\n```\n# not a heading\n```\n")
    (tmp_path / "a.json").write_text("{}")
    got = hooks.render_results("x\n<!-- results: a -->\ny\n", tmp_path)
    assert "### A title" in got and "#### Part" in got and "\n# not a heading" in got and "`a.json`" in got
    with pytest.raises(hooks.ResultsError, match="no results file for b"):
        hooks.render_results("<!-- results: a --><!-- results: b -->", tmp_path)
    (tmp_path / "c.md").write_text("# C\n")
    with pytest.raises(hooks.ResultsError, match="c.md .* not shown"):
        hooks.render_results("<!-- results: a -->", tmp_path)


def test_mkdocs_config_is_plain_yaml() -> None:
    # scripts/run_docs.py reads the nav with yaml.safe_load: no !!python tags in mkdocs.yml.
    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert cfg["strict"] is True and cfg["hooks"] == ["scripts/mkdocs_hooks.py"]

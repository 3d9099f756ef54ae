#!/usr/bin/env python3
"""Run every shell and Python block of the documentation, in page order, in one fresh checkout,
the way a reader pastes them.

Pages: README.md (its own checkout), then the pages of mkdocs.yml's ``nav`` in order (one
checkout for all of them). State carries from block to block as it does in a terminal: the
current folder and the exported environment (``source .venv/bin/activate``, ``cd``) that a
shell block leaves are where the next block starts. A Python block runs as ``python FILE`` with
that folder and environment (the venv's python once the pages have activated it).

A block is changed or skipped only by an HTML comment right above it (blank lines between are
allowed), which the rendered page does not show::

    <!-- run: skip needs a Kubernetes cluster -->              not run; the reason is required
    <!-- run: background ready=http://127.0.0.1:8000/ready --> started and left running (a reader's
                                                                second terminal); the next block
                                                                waits until the URL answers 200
    <!-- run: exit=2 -->                                        the block must exit with this status
    <!-- run: timeout=1200 -->                                  seconds (default 900)
    <!-- run: eirtrain-extra="--globals.basic_experiment.n_epochs=2" -->
                                                                appended to each eirtrain/torchrun
                                                                command of the block; the text must
                                                                also appear on the page itself, so a
                                                                shortened training is one the page
                                                                shows how to shorten
    <!-- run: stop -->                                          on its own line: stop the background
                                                                processes (as Ctrl-C would)

Several settings may share one comment (``<!-- run: background ready=URL timeout=60 -->``).
Background processes left at the end of a page are stopped there. A block fails when it exits
with another status than expected, or prints a Python traceback (a background process too,
by the time it is stopped).

    python scripts/run_docs.py                 README.md, then the docs site (CI)
    python scripts/run_docs.py --list          the blocks and what would happen to each
    python scripts/run_docs.py --track docs    only the site's pages
    python scripts/run_docs.py --from-worktree the tracked and new files as they are now, not HEAD

Needs git, bash and python3; the pages themselves set up the rest (``make demo``).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHELL_LANGS = {"bash", "sh", "shell"}
PYTHON_LANGS = {"python", "py"}
DEFAULT_TIMEOUT_S = 900.0
READY_TIMEOUT_S = 300.0
TRAIN_COMMANDS = ("eirtrain", "torchrun")
TRACEBACK = "Traceback (most recent call last)"

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
DIRECTIVE = re.compile(r"<!--\s*run:(?P<body>.*?)-->", re.S)
COMMENT = re.compile(r"<!--.*?-->", re.S)


class DocsError(Exception):
    """A page that the runner cannot read as written (a mistake in the page, not in a block)."""


@dataclass
class Directive:
    skip: str | None = None
    background: bool = False
    ready: str | None = None
    exit: int = 0
    timeout: float = DEFAULT_TIMEOUT_S
    eirtrain_extra: str | None = None


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    directive: Directive = field(default_factory=Directive)

    @property
    def kind(self) -> str:
        return "shell" if self.lang in SHELL_LANGS else "python"

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass
class Stop:
    """A standalone ``<!-- run: stop -->``: end the background processes here."""

    page: str
    line: int


Step = Block | Stop


def parse_directive(body: str, where: str) -> Directive | Stop:
    """The settings in one ``<!-- run: ... -->`` comment."""
    text = body.strip()
    if text == "stop":
        return Stop("", 0)
    d = Directive()
    if text.startswith("skip"):
        reason = text[4:].strip(" :")
        if not reason:
            raise DocsError(f"{where}: `run: skip` needs a reason (`<!-- run: skip needs a GPU -->`)")
        d.skip = reason
        return d
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise DocsError(f"{where}: cannot read `run: {text}` ({e})") from None
    for w in words:
        key, eq, value = w.partition("=")
        if key == "background" and not eq:
            d.background = True
        elif key == "ready" and eq:
            d.ready = value
        elif key == "exit" and eq and value.isdigit():
            d.exit = int(value)
        elif key == "timeout" and eq and re.fullmatch(r"\d+(\.\d+)?", value):
            d.timeout = float(value)
        elif key == "eirtrain-extra" and eq and value:
            d.eirtrain_extra = value
        else:
            raise DocsError(
                f"{where}: unknown setting {w!r} in `run: {text}`; known: skip REASON, background, ready=URL, "
                "exit=N, timeout=SECONDS, eirtrain-extra=ARGS, stop"
            )
    if d.ready and not d.background:
        raise DocsError(f"{where}: ready=URL is for background blocks (`run: background ready=URL`)")
    if d.background and d.exit:
        raise DocsError(f"{where}: a background block has no exit status to check")
    return d


def parse_page(text: str, page: str) -> list[Step]:
    """The runnable blocks of a Markdown page, and its stop points, in order."""
    lines = text.splitlines()
    steps: list[Step] = []
    pending: tuple[Directive, int] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = FENCE.match(line)
        if m:
            fence, info = m.group("fence"), m.group("info").strip()
            lang = info.split()[0].lower() if info else ""
            close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
            j = i + 1
            while j < len(lines) and not close.match(lines[j]):
                j += 1
            if j == len(lines):
                raise DocsError(f"{page}:{i + 1}: a ``` block that is never closed")
            indent = len(m.group("indent"))
            code = "\n".join(ln[indent:] if ln[:indent].strip() == "" else ln for ln in lines[i + 1 : j]) + "\n"
            runnable = lang in SHELL_LANGS or lang in PYTHON_LANGS
            if pending is not None and not runnable:
                raise DocsError(f"{page}:{pending[1]}: a `run:` comment above a ```{lang} block, which is never run")
            if runnable:
                directive = pending[0] if pending else Directive()
                steps.append(Block(page, i + 1, lang, code, directive))
            pending = None
            i = j + 1
            continue
        if line.lstrip().startswith("<!--") and "run:" in line:  # a comment of its own, not one quoted in prose
            start = i
            chunk = line
            while "-->" not in chunk and i + 1 < len(lines):
                i += 1
                chunk += "\n" + lines[i]
            dm = DIRECTIVE.search(chunk)
            if dm is None:
                raise DocsError(f"{page}:{start + 1}: cannot read this `run:` comment")
            if pending is not None:
                raise DocsError(f"{page}:{pending[1]}: a `run:` comment not followed by a code block")
            parsed = parse_directive(dm.group("body"), f"{page}:{start + 1}")
            if isinstance(parsed, Stop):
                steps.append(Stop(page, start + 1))
            else:
                pending = (parsed, start + 1)
        elif line.strip() and pending is not None:
            raise DocsError(f"{page}:{pending[1]}: a `run:` comment must be right above its code block")
        i += 1
    if pending is not None:
        raise DocsError(f"{page}:{pending[1]}: a `run:` comment not followed by a code block")
    check_extras_are_shown(text, page, [s for s in steps if isinstance(s, Block)])
    return steps


def visible_text(markdown: str) -> str:
    """The page without its HTML comments (what a reader sees)."""
    return COMMENT.sub("", markdown)


def check_extras_are_shown(text: str, page: str, blocks: list[Block]) -> None:
    shown = visible_text(text)
    for b in blocks:
        extra = b.directive.eirtrain_extra
        if extra is not None and extra not in shown:
            raise DocsError(
                f"{b.where}: eirtrain-extra={extra!r} is not shown on the page: a shortened training must be "
                "one the page itself tells the reader how to shorten"
            )


def logical_lines(code: str) -> list[tuple[int, int]]:
    """(first, last) physical line index of each command, joining backslash continuations."""
    lines = code.splitlines()
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(lines):
        j = i
        while lines[j].rstrip().endswith("\\") and j + 1 < len(lines):
            j += 1
        out.append((i, j))
        i = j + 1
    return out


def add_training_extra(code: str, extra: str) -> str:
    """``extra`` appended to every command of ``code`` that starts with eirtrain or torchrun
    (before a trailing ``# comment``)."""
    lines = code.splitlines()
    changed = 0
    for first, last in logical_lines(code):
        words = lines[first].split()
        if not words or words[0] not in TRAIN_COMMANDS:
            continue
        body, hash_, comment = _split_comment(lines[last])
        lines[last] = f"{body.rstrip()} {extra}" + (f"  {hash_}{comment}" if hash_ else "")
        changed += 1
    if not changed:
        raise DocsError(
            f"eirtrain-extra given, but the block has no command starting with {' or '.join(TRAIN_COMMANDS)}"
        )
    return "\n".join(lines) + "\n"


def _split_comment(line: str) -> tuple[str, str, str]:
    """A shell line's code and its trailing `` # comment`` (a # outside quotes after a space)."""
    quote = ""
    for k, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1] in " \t"):
            return line[:k], "#", line[k + 1 :]
    return line, "", ""


def nav_pages(mkdocs_yml: Path) -> list[str]:
    """The Markdown files of mkdocs.yml's nav, in order, relative to its docs_dir."""
    import yaml  # PyYAML: installed with eir-core; the pages set up the venv before it is needed here

    cfg = yaml.safe_load(mkdocs_yml.read_text())
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, str):
            if node.endswith(".md"):
                out.append(node)
        elif isinstance(node, list):
            for n in node:
                walk(n)
        elif isinstance(node, dict):
            for v in node.values():
                walk(v)

    walk(cfg.get("nav", []))
    return out


def tracks(root: Path) -> dict[str, list[Path]]:
    """Each track runs in a checkout of its own: the README, and the docs site."""
    docs_dir = root / "docs"
    return {"readme": [root / "README.md"], "docs": [docs_dir / p for p in nav_pages(root / "mkdocs.yml")]}


# ---------------------------------------------------------------------------------- running


class Session:
    """One checkout and the shell state carried through its blocks."""

    def __init__(self, checkout: Path, state: Path) -> None:
        self.checkout = checkout
        self.state = state
        self.background: list[tuple[Block, subprocess.Popen[bytes], Path]] = []
        (state / "cwd").write_text(str(checkout))
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("EIR_", "VIRTUAL_ENV", "PYTHON")) and k not in ("OLDPWD", "PWD")
        }
        path = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if "/.venv/" not in p + "/")
        env["PATH"] = path
        env["HOME"] = os.environ.get("HOME", str(checkout))
        (state / "env").write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
        self.base_env = env

    def script(self, body: str) -> str:
        s = self.state
        return (
            f'cd "$(cat {shlex.quote(str(s / "cwd"))})"\n'
            f"source {shlex.quote(str(s / 'env'))}\n"
            f"trap 'pwd > {shlex.quote(str(s / 'cwd'))}; export -p > {shlex.quote(str(s / 'env'))}' EXIT\n"
            "set -eo pipefail\n" + body
        )

    def block_body(self, b: Block, n: int) -> str:
        code = b.code
        if b.directive.eirtrain_extra:
            code = add_training_extra(code, b.directive.eirtrain_extra)
        if b.kind == "python":
            f = self.state / f"block{n}.py"
            f.write_text(code)
            return f"python {shlex.quote(str(f))}\n"
        return code

    def run(self, b: Block, n: int, log: Path) -> tuple[bool, str]:
        body = self.block_body(b, n)
        if b.directive.background:
            return self.start_background(b, body, log)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", self.script(body)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.base_env,
                start_new_session=True,
            )
            try:
                code = proc.wait(timeout=b.directive.timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)  # the whole group: what the block started too
                proc.wait()
                return False, f"did not finish in {b.directive.timeout:.0f} s"
            except BaseException:  # Ctrl-C of the runner itself: leave nothing running
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
                raise
        if code != b.directive.exit:
            return False, f"exit status {code}, expected {b.directive.exit}"
        if TRACEBACK in log.read_text(errors="replace"):
            return False, "it printed a Python traceback (a reader would take it for a failure)"
        return True, ""

    def start_background(self, b: Block, body: str, log: Path) -> tuple[bool, str]:
        url = b.directive.ready
        if url and _answers(url):
            return False, f"something already answers {url} before this block starts it; stop it first"
        out = log.open("wb")
        proc = subprocess.Popen(
            ["bash", "-c", self.script(body)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.base_env,
            start_new_session=True,
        )
        out.close()
        self.background.append((b, proc, log))
        if url is None:
            return True, ""
        end = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < end:
            if proc.poll() is not None:
                return False, f"exited with status {proc.returncode} before {url} answered"
            if _answers(url):
                return True, ""
            time.sleep(0.2)
        return False, f"{url} did not answer 200 within {READY_TIMEOUT_S:.0f} s"

    def stop_background(self) -> list[str]:
        """Ctrl-C to each background process group, then SIGKILL after 30 s. Returns what went
        wrong: a process that did not stop, or one that printed a traceback."""
        problems: list[str] = []
        for b, proc, log in reversed(self.background):
            if proc.poll() is None:
                _signal_group(proc, signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    _signal_group(proc, signal.SIGKILL)
                    proc.wait()
                    problems.append(f"{b.where}: did not stop within 30 s of Ctrl-C; killed")
            if TRACEBACK in log.read_text(errors="replace"):
                problems.append(f"{b.where}: printed a Python traceback (see {log})")
        self.background.clear()
        return problems


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 (a loopback URL from the docs)
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _report_stop(session: Session) -> bool:
    problems = session.stop_background()
    for p in problems:
        print(f"   FAIL {p}")
    return not problems


def fresh_checkout(root: Path, dest: Path, from_worktree: bool) -> None:
    """A git clone of HEAD; or, with ``from_worktree``, the files git would commit now."""
    if not from_worktree:
        subprocess.run(["git", "clone", "--quiet", str(root), str(dest)], check=True)
        return
    names = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in names:
        if not raw:
            continue
        rel = raw.decode()
        src = root / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the worktree
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)


def dirty(root: Path) -> bool:
    r = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True, check=False)
    return bool(r.stdout.strip())


def describe(step: Step) -> str:
    if isinstance(step, Stop):
        return f"{step.page}:{step.line}  stop background processes"
    d = step.directive
    first = next((ln for ln in step.code.splitlines() if ln.strip() and not ln.startswith("#")), "")
    what = f"{step.kind:6} {first[:70]}"
    if d.skip:
        return f"{step.where}  SKIP ({d.skip})  {what}"
    notes = [n for n in ("background" if d.background else "", f"exit={d.exit}" if d.exit else "") if n]
    if d.eirtrain_extra:
        notes.append(f"+ {d.eirtrain_extra}")
    return f"{step.where}  {what}" + (f"  [{', '.join(notes)}]" if notes else "")


def run_track(name: str, pages: list[Path], root: Path, work: Path, from_worktree: bool) -> bool:
    checkout = work / f"{name}-checkout"
    state = work / f"{name}-state"
    state.mkdir(parents=True)
    logs = work / f"{name}-logs"
    logs.mkdir()
    print(f"== {name}: fresh checkout in {checkout}", flush=True)
    fresh_checkout(root, checkout, from_worktree)
    session = Session(checkout, state)
    ran = skipped = 0
    t_track = time.monotonic()
    try:
        for page in pages:
            rel = page.relative_to(root).as_posix()
            steps = parse_page((checkout / rel).read_text(), rel)
            print(f"-- {rel}: {sum(isinstance(s, Block) for s in steps)} blocks", flush=True)
            for step in steps:
                if isinstance(step, Stop):
                    if not _report_stop(session):
                        return False
                    continue
                if step.directive.skip:
                    skipped += 1
                    print(f"   {describe(step)}", flush=True)
                    continue
                ran += 1
                n = ran + skipped
                log = logs / f"block{n:03d}.log"
                t0 = time.monotonic()
                ok, why = session.run(step, n, log)
                took = time.monotonic() - t0
                print(f"   {'ok  ' if ok else 'FAIL'} {took:6.1f}s {describe(step)}", flush=True)
                if not ok:
                    print(f"\n{step.where}: {why}\n--- the block ---\n{step.code}--- its output (last 60 lines) ---")
                    print("\n".join(log.read_text(errors="replace").splitlines()[-60:]))
                    for _, proc, blog in session.background:
                        if blog != log:
                            print(f"--- background {blog.name} (pid {proc.pid}), last 20 lines ---")
                            print("\n".join(blog.read_text(errors="replace").splitlines()[-20:]))
                    return False
            if not _report_stop(session):  # a page's servers end with the page
                return False
    finally:
        session.stop_background()
    print(f"== {name}: {ran} blocks ran, {skipped} skipped, {time.monotonic() - t_track:.0f} s", flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--track", choices=("readme", "docs", "all"), default="all", help="which pages (default: all)")
    ap.add_argument("--list", action="store_true", help="print the blocks and what would happen to each; run nothing")
    ap.add_argument(
        "--from-worktree",
        action="store_true",
        help="copy the files git would commit now instead of cloning HEAD (to try pages before committing)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the checkouts and logs (default: removed when all pass)")
    ap.add_argument("--workdir", type=Path, help="where the checkouts go (default: a new folder under the temp dir)")
    a = ap.parse_args(argv)
    chosen = tracks(ROOT)
    if a.track != "all":
        chosen = {a.track: chosen[a.track]}
    try:
        parsed = {
            name: [(p, parse_page(p.read_text(), p.relative_to(ROOT).as_posix())) for p in pages]
            for name, pages in chosen.items()
        }
    except (DocsError, OSError) as e:
        print(f"run_docs: error: {e}", file=sys.stderr)
        return 2
    if a.list:
        for name, pages in parsed.items():
            print(f"== {name} (a checkout of its own)")
            for _, steps in pages:
                for s in steps:
                    print(f"   {describe(s)}")
        return 0
    if not a.from_worktree and dirty(ROOT):
        print("run_docs: note: the worktree has changes that a clone of HEAD leaves out (--from-worktree uses them)")
    work = a.workdir or Path(tempfile.mkdtemp(prefix="eir-docs-"))
    work.mkdir(parents=True, exist_ok=True)
    for port in (8000, 8001):
        if _port_taken(port):
            print(f"run_docs: error: 127.0.0.1:{port} is taken; the pages serve there. Stop what listens on it.")
            return 2
    ok = True
    for name, pages in chosen.items():
        if not run_track(name, pages, ROOT, work, a.from_worktree):
            ok = False
            break
    if ok and not a.keep and a.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"checkouts and logs kept in {work}")
    print("run_docs: every block passed" if ok else "run_docs: a block failed (above)")
    return 0 if ok else 1


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    sys.exit(main())

"""What is on disk: the models of a repository, the versions of a model (its checkpoints,
numbered by training iteration), the version policy that picks those served, and the checks of
the flags that name them. repository.py loads and serves what this finds."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from eir_core.manifest import checkpoints_in, parse_checkpoint_name

log = logging.getLogger("eir_serve.repository")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # what may stand in a URL path segment
Stamp = tuple[int, int]  # (mtime_ns, size): a file that changes is tried again


# ------------------------------------------------------------------ what is on disk
@dataclass(frozen=True)
class Found:
    """One bundle file of a model."""

    version: str
    number: int
    perf: float
    path: Path
    stamp: Stamp


def _stamp(path: Path) -> Stamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def found_in(source: Path) -> list[Found]:
    """The versions in a run folder, bundle folder or bundle file (none when it is empty)."""
    if source.is_file():
        stamp = _stamp(source)
        number, perf = parse_checkpoint_name(source.name) or (1, 0.0)
        return [Found(str(number), number, perf, source, stamp)] if stamp else []
    folder = source / "saved_models" if (source / "saved_models").is_dir() else source
    found = []
    for perf, iteration, path in checkpoints_in(folder):
        stamp = _stamp(path)
        if stamp is not None:
            found.append(Found(str(iteration), iteration, perf, path, stamp))
    if found:
        return found
    plain = [p for p in folder.glob("*.safetensors") if not p.name.startswith(".")]
    if len(plain) == 1 and (stamp := _stamp(plain[0])) is not None:
        return [Found("1", 1, 0.0, plain[0], stamp)]
    if len(plain) > 1:
        raise ValueError(
            f"{folder}: {len(plain)} bundles and none named as a checkpoint (<run>_checkpoint_<iteration>_"
            "perf-average=<x>.safetensors): give each model its own folder"
        )
    return []


def models_in(repository: Path) -> dict[str, Path]:
    """Model name -> its folder or bundle file, for every model in ``repository``."""
    models: dict[str, Path] = {}
    for entry in sorted(repository.iterdir()):
        if entry.name.startswith("."):
            continue
        name = entry.stem if entry.is_file() else entry.name
        if entry.is_file() and entry.suffix != ".safetensors":
            continue
        if not MODEL_NAME.match(name):
            log.warning("%s: skipped: a model name is letters, digits, '_', '.' and '-'", entry)
            continue
        models[name] = entry
    return models


# ------------------------------------------------------------------ version policy
@dataclass(frozen=True)
class VersionPolicy:
    kind: Literal["best", "latest", "all", "specific"]
    count: int = 1
    numbers: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, text: str, where: str = "--version-policy") -> VersionPolicy:
        kind, _, arg = text.strip().partition(":")
        try:
            if kind in ("best", "all") and not arg:
                return cls(kind)  # type: ignore[arg-type]
            if kind == "latest":
                count = int(arg) if arg else 1
                if count >= 1:
                    return cls("latest", count)
            if kind == "specific" and arg:
                return cls("specific", numbers=frozenset(int(v) for v in arg.split(",")))
        except ValueError:
            pass
        raise ValueError(
            f"{where} {text!r}: expected best, latest:N (N >= 1), all, or specific:ITERATION[,ITERATION...]"
        )

    def choose(self, found: Iterable[Found]) -> list[Found]:
        """The versions to serve, newest first. Two files of one iteration: the better one."""
        by_version: dict[str, Found] = {}
        for f in found:
            have = by_version.get(f.version)
            if have is None or (f.perf, f.stamp) > (have.perf, have.stamp):
                by_version[f.version] = f
        newest = sorted(by_version.values(), key=lambda f: f.number, reverse=True)
        if self.kind == "best":
            return [max(newest, key=lambda f: (f.perf, f.number))] if newest else []
        if self.kind == "latest":
            return newest[: self.count]
        if self.kind == "specific":
            return [f for f in newest if f.number in self.numbers]
        return newest

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, sorted(self.numbers)))
        return self.kind


def check_model_source(settings: Any) -> None:
    """ValueErrors naming the flags, for what cannot work whatever is on disk."""
    if (settings.model_path is None) == (settings.model_repository is None):
        raise ValueError(
            "give one of --model-path (or EIR_SERVE_MODEL_PATH: a bundle or run folder) and --model-repository "
            "(or EIR_SERVE_MODEL_REPOSITORY: a folder of models)"
        )
    if settings.model_repository is not None and not Path(settings.model_repository).is_dir():
        raise ValueError(f"--model-repository {settings.model_repository}: no such folder")
    if settings.model_control == "poll" and settings.model_path is not None and Path(settings.model_path).is_file():
        raise ValueError(
            f"--model-control poll watches a run folder, but --model-path {settings.model_path} is a file; "
            "pass the run folder eirtrain writes"
        )
    if settings.model_control == "explicit" and settings.workers > 1:
        raise ValueError(
            f"--model-control explicit with --workers {settings.workers}: a load or unload request reaches one "
            "worker only; use --model-control poll, or one worker"
        )
    if settings.version_policy != "auto":
        VersionPolicy.parse(settings.version_policy)
    for name, text in settings.model_version_policies.items():
        VersionPolicy.parse(text, f"--model-version-policies {name!r}:")


def policy_for(settings: Any, name: str) -> VersionPolicy:
    text = settings.model_version_policies.get(name, settings.version_policy)
    if text == "auto":
        text = "best" if settings.model_path is not None else "latest:1"
    return VersionPolicy.parse(text)

"""Every command's --help documents every flag, subcommand and environment variable it reads."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from eir_core.cli.bundle import build_parser as bundle_parser
from eir_core.cli.data import build_parser as data_parser
from eir_core.cli.train import build_parser as train_parser
from eir_serve.cli import build_parser as serve_parser
from eir_serve.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PARSERS = {"eirtrain": train_parser, "eir-data": data_parser, "eir-bundle": bundle_parser, "eirserve": serve_parser}
# Set by eirserve's own supervisor for the worker processes it starts (--workers), never by a user.
INTERNAL = {"EIR_SERVE_SUPERVISOR_PID"}


def walk(parser: argparse.ArgumentParser, name: str) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                out += walk(sub, f"{name} {sub_name}")
    return out


def all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    return [p for name, build in PARSERS.items() for p in walk(build(), name)]


@pytest.mark.parametrize(("name", "parser"), all_parsers(), ids=[n for n, _ in all_parsers()])
def test_every_flag_and_subcommand_has_help(name: str, parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        flag = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS and len(action.help) > 8, f"{name} {flag}: no help"
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help and len(choice.help) > 8, f"{name} {choice.dest}: no help"
    assert parser.description or name in ("eir-bundle add-graph", "eir-bundle inspect"), f"{name}: no description"


def _env_read(package: Path, prefix: str) -> set[str]:
    names: set[str] = set()
    for path in package.rglob("*.py"):
        # every quoted name of a variable (os.environ.get("EIR_SEED"), _env_int("EIR_DIST_TIMEOUT_S", ...))
        names |= set(re.findall(rf"[\"']({prefix}[A-Z0-9_]*[A-Z0-9])[\"']", path.read_text()))
    return names


def test_eirtrain_help_names_every_variable_it_reads() -> None:
    read = _env_read(ROOT / "packages" / "core" / "src" / "eir_core", "EIR_")
    assert {"EIR_SEED", "EIR_DIST_TIMEOUT_S"} <= read  # the scan finds them where they are read
    text = train_parser().format_help()
    for name in read:
        assert name in text, f"eirtrain --help does not mention {name}"
    assert "--<config file stem>.<section>.<key>=<value>" in text


def test_eirserve_help_names_every_variable_it_reads() -> None:
    text = serve_parser().format_help()
    for field in Settings.model_fields:
        assert f"EIR_SERVE_{field.upper()}" in text, field
    read = _env_read(ROOT / "services" / "serve" / "src" / "eir_serve", "EIR_SERVE_")
    assert INTERNAL <= read  # the scan finds quoted names (the settings are read through EIR_SERVE_ + field)
    for name in read - INTERNAL:
        assert name in text, f"eirserve --help does not mention {name}"


def test_eir_data_mnist_source_says_what_it_takes() -> None:
    (mnist,) = [p for n, p in all_parsers() if n == "eir-data mnist"]
    text = mnist.format_help()
    assert "--source" in text and "IDX" in text and ".npz" in text

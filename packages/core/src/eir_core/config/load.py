"""Read EIR-style YAML files, apply dotted command-line overrides, validate.

EIR's rules, kept here (see the spec, section 1):
* several global (or fusion) files merge by a shallow top-level update, later files win;
* each input file is one input and each output file one output, in order;
* an override ``--<file stem>.<k1>.<k2>=<value>`` deep-sets a key in every file with that
  stem; the value is a Python literal when it parses as one, else a string.

Unlike EIR, every mistake is a :class:`ConfigError` naming the file, the key path and the
fix, and unknown global sections are errors rather than silently ignored.
"""

from __future__ import annotations

import ast
import difflib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from eir_core.config.diffusion_rules import check_diffusion
from eir_core.config.schema import (
    INPUT_TYPES,
    ExperimentConfig,
    FusionConfig,
    GlobalConfig,
    InputConfig,
    OutputConfig,
)
from eir_core.config.unsupported import unsupported_options
from eir_core.errors import ConfigError

_INPUT_ADAPTER: TypeAdapter[Any] = TypeAdapter(InputConfig)
MAX_YAML_BYTES = 5_000_000
MAX_YAML_DEPTH = 64  # configs nest 4-5 levels; PyYAML's composer recurses once per level


@dataclass(frozen=True)
class Override:
    stem: str
    keys: tuple[str, ...]
    value: Any
    raw: str


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases (configs never need them, bombs do) and nesting
    past ``MAX_YAML_DEPTH`` (20 000 levels of ``[[[`` took the composer into a RecursionError)."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]  # PyYAML's stubs leave it untyped
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError(
                f"YAML aliases (*{event.anchor}) are not allowed in config files (line {event.start_mark.line + 1})"
            )
        if self.depth >= MAX_YAML_DEPTH:
            raise yaml.YAMLError(
                f"nested more than {MAX_YAML_DEPTH} levels deep (line {event.start_mark.line + 1}); "
                "config files nest a few levels"
            )
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def read_yaml(path: Path) -> dict[str, Any]:
    """One YAML mapping from ``path``; every failure is a ConfigError naming the file."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (check the path given on the command line)")
    raw = path.read_bytes()
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: {len(raw)} bytes is too large for a config file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def parse_override(token: str) -> Override:
    """``--globals.basic_experiment.n_epochs=3`` → Override('globals', (...), 3)."""
    body = token[2:] if token.startswith("--") else token
    if "=" not in body or "." not in body.split("=", 1)[0]:
        raise ConfigError(
            f"cannot read the argument {token!r}: overrides look like "
            "--<config file stem>.<section>.<key>=<value>, e.g. "
            "--globals.basic_experiment.n_epochs=3"
        )
    path, text = body.split("=", 1)
    stem, *keys = path.split(".")
    try:
        value: Any = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = text
    return Override(stem=stem, keys=tuple(keys), value=value, raw=token)


def apply_overrides(files: dict[Path, dict[str, Any]], overrides: Sequence[Override]) -> None:
    stems = {p.stem for p in files}
    for ov in overrides:
        if ov.stem not in stems:
            raise ConfigError(
                f"override {ov.raw!r}: no config file named {ov.stem!r}.yaml was given; "
                f"overrides start with a file stem, one of: {', '.join(sorted(stems))}"
            )
        for path, data in files.items():
            if path.stem != ov.stem:
                continue
            node = data
            for key in ov.keys[:-1]:
                child = node.get(key)
                if not isinstance(child, dict):
                    child = {}
                    node[key] = child
                node = child
            node[ov.keys[-1]] = ov.value


def _merge_shallow(datas: Sequence[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for d in datas:
        merged.update(d)
    return merged


def _unwrap_models(annotation: Any) -> list[type[BaseModel]]:
    """The BaseModel classes inside an annotation (Optional, list, Union, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap_models(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, dict) or origin is not None:
        for arg in typing.get_args(annotation):
            found.extend(_unwrap_models(arg))
    return found


def _keys_at(root: Any, loc: Sequence[Any]) -> list[str]:
    """Valid keys of the model found by following ``loc`` from ``root``."""
    models = _unwrap_models(root)
    for part in loc:
        if isinstance(part, int):
            continue
        nxt: list[type[BaseModel]] = []
        for m in models:
            for name, f in m.model_fields.items():
                if part in (name, f.alias):
                    nxt.extend(_unwrap_models(f.annotation))
        if nxt:
            models = nxt
        # else: a discriminator tag ("array") or an unknown key; stay on this level
    keys: list[str] = []
    for m in models:
        keys.extend(f.alias or n for n, f in m.model_fields.items())
    return sorted(set(keys))


def _describe(err: Any, root: Any) -> str:
    loc = [p for p in err["loc"] if p not in ("array", "tabular")]
    where = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        key = str(loc[-1])
        valid = _keys_at(root, loc[:-1])
        near = difflib.get_close_matches(key, valid, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        return f"unknown key {where!r}{hint} (valid keys here: {', '.join(valid)})"
    if err["type"] == "missing":
        return f"missing required key {where!r}"
    value = err.get("input")
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    if len(shown) > 80:
        shown = shown[:77] + "..."
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}={shown}: {msg}"


def _validate(adapter_or_model: Any, data: Any, source: str, root: Any) -> Any:
    try:
        if isinstance(adapter_or_model, TypeAdapter):
            return adapter_or_model.validate_python(data)
        return adapter_or_model.model_validate(data)
    except ValidationError as e:
        lines = [_describe(err, root) for err in e.errors()]
        raise ConfigError(f"{source}: " + "; ".join(lines)) from None


def build_experiment_config(
    global_files: Sequence[Path],
    input_files: Sequence[Path],
    output_files: Sequence[Path],
    fusion_files: Sequence[Path] = (),
    override_tokens: Sequence[str] = (),
) -> ExperimentConfig:
    """The whole validated config of a run, from files and override tokens."""
    if not global_files:
        raise ConfigError("--global_configs needs at least one file")
    if not output_files:
        raise ConfigError("--output_configs needs at least one file")
    all_files = [*global_files, *input_files, *output_files, *fusion_files]
    datas: dict[Path, dict[str, Any]] = {}
    for p in all_files:
        datas[Path(p)] = read_yaml(Path(p))
    apply_overrides(datas, [parse_override(t) for t in override_tokens])

    g_raw = _merge_shallow([datas[Path(p)] for p in global_files])
    g_src = ", ".join(str(p) for p in global_files)
    global_config = _validate(GlobalConfig, g_raw, f"global config ({g_src})", GlobalConfig)

    inputs = []
    for p in input_files:
        raw = datas[Path(p)]
        kind = (raw.get("input_info") or {}).get("input_type") if isinstance(raw.get("input_info"), dict) else None
        if kind in INPUT_TYPES and kind not in ("array", "tabular"):
            raise ConfigError(f"{p}: supported by EIR, not implemented here: input_info.input_type={kind}")
        if kind not in INPUT_TYPES:
            raise ConfigError(
                f"{p}: input_info.input_type={kind!r}: must be one of {', '.join(INPUT_TYPES)} "
                "(array and tabular are implemented here)"
            )
        inputs.append(_validate(_INPUT_ADAPTER, raw, str(p), InputConfig))
    outputs = [_validate(OutputConfig, datas[Path(p)], str(p), OutputConfig) for p in output_files]
    fusion_raw = _merge_shallow([datas[Path(p)] for p in fusion_files])
    fusion = _validate(FusionConfig, fusion_raw, "fusion config", FusionConfig)

    _check_names(inputs, outputs)
    cfg = ExperimentConfig(
        global_config=global_config,
        input_configs=inputs,
        output_configs=outputs,
        fusion_config=fusion,
    )
    missing = unsupported_options(cfg)
    if missing:
        raise ConfigError(
            "supported by EIR, not implemented here: "
            + "; ".join(missing)
            + ". Remove the key or set it back to its default."
            + (
                " For several processes or machines, start eirtrain under torchrun instead: "
                "torchrun --standalone --nproc-per-node N -m eir_core.cli.train <same flags>"
                if any("accelerator." in m for m in missing)
                else ""
            )
        )
    check_diffusion(cfg, {oc.name: str(p) for oc, p in zip(outputs, output_files, strict=True)})
    return cfg


def _check_names(inputs: Sequence[Any], outputs: Sequence[Any]) -> None:
    seen: set[str] = set()
    for ic in inputs:
        if ic.name in seen:
            raise ConfigError(f"two input configs use input_name {ic.name!r}; names must be unique")
        seen.add(ic.name)
    out_seen: set[str] = set()
    for oc in outputs:
        if oc.name in out_seen:
            raise ConfigError(f"two output configs use output_name {oc.name!r}; names must be unique")
        out_seen.add(oc.name)
    if not inputs:
        raise ConfigError("--input_configs: at least one input is needed to train a model")

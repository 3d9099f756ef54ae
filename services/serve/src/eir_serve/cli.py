"""``eirserve``: serve a bundle (EIR's flags, plus batching and limits).

Every field of ``Settings`` is a flag, generated here: ``max_batch_size`` is ``--max-batch-size``
(and ``--max_batch_size``, as EIR spells ``--model_path``), with the field's description as its
help; a new field becomes a flag with nothing to add. Values are parsed by ``Settings`` itself,
so flags and ``EIR_SERVE_*`` variables are checked by the same rules.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import socket
import sys
import types
from collections.abc import Sequence
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from eir_core.errors import EirError
from eir_serve.ports import check_port_free
from eir_serve.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
log = logging.getLogger("eir_serve")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _plain(annotation: Any) -> Any:
    """``T | None`` -> ``T``; anything else as it is."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"expected JSON, got {text!r}") from None


def _add_flag(p: argparse.ArgumentParser, name: str, field: FieldInfo) -> None:
    kind = _plain(field.annotation)
    # EIR spells its flags --model_path; both spellings work (booleans: --x / --no-x only).
    flags = [_flag(name)] + ([f"--{name}"] if "_" in name and kind is not bool else [])
    env = f"EIR_SERVE_{name.upper()}"
    default = "required" if field.is_required() else f"default: {field.get_default()}"
    help_text = f"{field.description or name.replace('_', ' ')} ({default}; env {env})"
    if kind is bool:
        p.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    elif get_origin(kind) is Literal:
        p.add_argument(*flags, dest=name, choices=[str(a) for a in get_args(kind)], help=help_text)
    elif get_origin(kind) in (list, dict, set, tuple):
        p.add_argument(*flags, dest=name, type=_json_value, metavar="JSON", help=help_text)
    else:  # the string as typed; Settings parses it (int, float, Path, secrets, ...)
        p.add_argument(*flags, dest=name, metavar=name.upper(), help=help_text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eirserve",
        allow_abbrev=False,
        description="Serve an eirtrain bundle over HTTP. Every flag can also be set "
        "as an environment variable EIR_SERVE_<FLAG> (e.g. EIR_SERVE_MODEL_PATH).",
    )
    for name, field in Settings.model_fields.items():
        _add_flag(p, name, field)
    return p


def load_settings(argv: Sequence[str] | None) -> Settings:
    """Flags over ``EIR_SERVE_*`` over defaults; ``ValidationError`` names the field."""
    given = {k: v for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}
    return Settings(**given)


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """The listening address, taken before the model loads; OSError says why not."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart past TIME_WAIT
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_error(host: str, port: int, e: OSError) -> str:
    if isinstance(e, socket.gaierror):
        return f"--host {host}: cannot resolve it ({e.strerror})"
    if e.errno == errno.EADDRINUSE:
        return f"--port {port}: {host}:{port} is already in use; stop what listens there or pass another --port"
    if e.errno == errno.EACCES:
        return f"--port {port}: permission denied for {host}:{port}; pass a --port of 1024 or more"
    return f"--host {host} --port {port}: cannot listen there ({e.strerror})"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except ValidationError as e:
        first = e.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        where = f"{_flag(name)} (or EIR_SERVE_{name.upper()})" if name in Settings.model_fields else name
        print(f"eirserve: error: {where}: {first['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    try:  # cheap checks first: the parser, the ports, the bundle's manifest, the runtime
        from eir_serve.server import draining_server, http_stack, raise_file_limit

        parser, loop = http_stack(settings)
        short_of_files = raise_file_limit(settings)
        if short_of_files:
            log.warning("%s", short_of_files)
        if settings.grpc_port:
            check_port_free(settings.host, settings.grpc_port)
        from eir_core.bundle import load_array_bundle
        from eir_serve.loading import plan_models
        from eir_serve.runtime import load_checked
        from eir_serve.versions import check_model_source

        check_model_source(settings)
        plan = plan_models(settings)  # the manifests, the runtime and the device, the flags naming models
        # --model-path with a bundle (not a run that has none yet): loaded here, before the port listens.
        bundle_path = plan.bundle
        if bundle_path is not None and settings.workers > 1:  # the supervisor checks it with NumPy alone
            from eir_core.bundle import has_graph, read_manifest

            load_array_bundle(bundle_path) if has_graph(bundle_path) else read_manifest(bundle_path)
    except (EirError, ValueError) as e:
        print(f"eirserve: error: {e}", file=sys.stderr)
        return 2
    try:  # before the model loads: a busy port is refused in a moment, not after the warm-up
        sock = bind(settings.host, settings.port, settings.reuse_port)
    except OSError as e:
        print(f"eirserve: error: {_bind_error(settings.host, settings.port, e)}", file=sys.stderr)
        return 2
    port = int(sock.getsockname()[1])
    if settings.workers > 1:  # the port is free (bound without SO_REUSEPORT); the workers share it
        sock.close()
        from eir_serve.workers import run_workers

        return run_workers(settings, port, list(sys.argv[1:] if argv is None else argv))
    try:  # the whole bundle, loaded and run once while the port is bound but not listening
        from eir_serve.app import create_app

        if bundle_path is not None and plan.runtime is not None:
            app = create_app(settings, load_checked(settings, bundle_path, plan.runtime), plan)
        else:  # a repository, or a run waiting for its first checkpoint: the lifespan loads what there is
            app = create_app(settings, plan=plan)
    except (EirError, ValueError) as e:
        sock.close()
        print(f"eirserve: error: {e}", file=sys.stderr)
        return 2
    log.info("listening on http://%s:%d", settings.host, port)
    log.info("HTTP: %s parser, %s event loop", parser, loop)
    server = draining_server(app, settings, port)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down cleanly and re-raised it; no traceback
        return 130
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())

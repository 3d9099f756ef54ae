"""``eirserve``: serve a bundle (EIR's flags, plus batching and limits)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from eir_core.errors import EirError


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="eirserve",
        allow_abbrev=False,
        description="Serve an eirtrain bundle over HTTP. Every flag can also be set "
        "as an environment variable EIR_SERVE_<FLAG> (e.g. EIR_SERVE_MODEL_PATH).",
    )
    p.add_argument("--model-path", "--model_path", type=Path, help="a .safetensors bundle or a run folder")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--device", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--max-batch-size", type=int)
    p.add_argument("--batch-timeout-ms", type=float)
    p.add_argument("--max-queue", type=int)
    p.add_argument("--max-body-bytes", type=int)
    p.add_argument("--max-items-per-request", type=int)
    p.add_argument("--request-timeout-s", type=float)
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--enable-echo", action="store_true", default=None, help="add POST /echo (benchmarks)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /predict and /v2 infer (prefer the env)")
    p.add_argument("--api-key-file", type=Path, help="read the API key from this file (e.g. a mounted secret)")
    p.add_argument("--body-timeout-s", type=float, help="time to receive headers, then body (408 past it)")
    p.add_argument("--limit-concurrency", type=int, help="open connections + running requests at most (503)")
    p.add_argument("--keep-alive-s", type=int, help="close idle keep-alive connections after this")
    p.add_argument("--drain-s", type=float, help="on SIGTERM: not ready but serving this long, then stop")
    p.add_argument("--graceful-timeout-s", type=int, help="on stop: wait this long for requests in flight")
    args = p.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    try:
        from eir_serve.settings import Settings

        settings = Settings(**given)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(x) for x in first["loc"])
        hint = " (pass --model-path or set EIR_SERVE_MODEL_PATH)" if field == "model_path" else ""
        print(f"eirserve: error: {field}: {first['msg']}{hint}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        from eir_core.predict import resolve_device
        from eir_serve.app import create_app
        from eir_serve.server import serve

        resolve_device(settings.device)
        app = create_app(settings)
    except (EirError, ValueError) as e:
        print(f"eirserve: error: {e}", file=sys.stderr)
        return 2
    serve(app, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
    p.add_argument("--grpc-port", type=int, help="gRPC (Open Inference Protocol) port, default 8001; 0 turns it off")
    p.add_argument("--device", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--max-batch-size", type=int)
    p.add_argument("--batch-timeout-ms", type=float)
    p.add_argument("--max-queue", type=int)
    p.add_argument("--max-body-bytes", type=int)
    p.add_argument("--max-items-per-request", type=int)
    p.add_argument("--request-timeout-s", type=float)
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--enable-echo", action="store_true", default=None, help="add POST /echo (benchmarks)")
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
        import uvicorn

        from eir_core.predict import resolve_device
        from eir_serve.app import create_app

        resolve_device(settings.device)
        if settings.grpc_port:
            from eir_serve.grpc.server import check_port_free

            check_port_free(settings.host, settings.grpc_port)
        app = create_app(settings)
    except (EirError, ValueError) as e:
        print(f"eirserve: error: {e}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, timeout_graceful_shutdown=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())

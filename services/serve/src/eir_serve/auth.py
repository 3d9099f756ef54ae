"""Optional API key: ``Authorization: Bearer <key>`` on the inference routes.

``check_bearer`` is a plain function so that other transports (a gRPC servicer reading the
``authorization`` metadata) make the same decision; ``require_api_key`` is the FastAPI
dependency the HTTP routes use. Health, readiness, metrics and /info never ask for the key.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from eir_serve.errors import ApiError
from eir_serve.settings import Settings

CHALLENGE = 'Bearer realm="eirserve"'


def check_bearer(header_value: str | None, key: str | None) -> bool:
    """True when no key is configured, or ``header_value`` is ``Bearer <key>`` (constant-time compare)."""
    if key is None:
        return True
    if not header_value:
        return False
    scheme, _, token = header_value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), key.encode())


def resolve_api_key(settings: Settings) -> str | None:
    """The configured key (from ``api_key`` or the file ``api_key_file``), or None when auth is off."""
    if settings.api_key is not None and settings.api_key_file is not None:
        raise ValueError("set only one of EIR_SERVE_API_KEY (--api-key) and EIR_SERVE_API_KEY_FILE (--api-key-file)")
    if settings.api_key_file is not None:
        path = settings.api_key_file
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(
                f"api_key_file {path}: cannot read it ({e.__class__.__name__}); "
                "point EIR_SERVE_API_KEY_FILE at a readable text file holding the key"
            ) from None
        where = f"api_key_file {path}"
    elif settings.api_key is not None:
        key, where = settings.api_key.get_secret_value().strip(), "api_key"
    else:
        return None
    if not key or any(c.isspace() for c in key):
        raise ValueError(f"{where}: the key must be non-empty and contain no whitespace")
    return key


async def require_api_key(request: Request) -> None:
    """FastAPI dependency: 401 in the service's error shape unless the request carries the key.
    (async so that FastAPI calls it on the event loop, not through its thread pool)"""
    key: str | None = getattr(request.app.state, "api_key", None)
    if not check_bearer(request.headers.get("authorization"), key):
        raise ApiError(
            401,
            "unauthorized",
            "this server needs an API key: send the header 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": CHALLENGE},
        )

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from eir_serve.app import create_app
from eir_serve.settings import Settings

# Apps and eirserve processes in tests serve no gRPC unless a test asks for a port: the default,
# 8001, would collide between tests (and with anything else on this machine).
os.environ["EIR_SERVE_GRPC_PORT"] = "0"


@pytest.fixture(scope="module")
def client(tiny_bundle: Path) -> Iterator[TestClient]:
    app = create_app(
        Settings(
            model_path=tiny_bundle, device="cpu", max_items_per_request=16, max_body_bytes=64_000, enable_echo=True
        )
    )
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def cond_client(tiny_conditional_bundle: Path) -> Iterator[TestClient]:
    app = create_app(Settings(model_path=tiny_conditional_bundle.parent.parent, device="cpu"))
    with TestClient(app) as c:
        yield c

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from eir_core.cli.train import main as eirtrain
from eir_core.manifest import checkpoints_in
from eir_serve.app import create_app
from eir_serve.settings import Settings
from tests.helpers import tutorial_configs

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


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> list[Path]:
    """Four checkpoints of one run (iterations 10, 20, 30, 40...), different weights each."""
    tmp = tmp_path_factory.mktemp("swap")
    run = tmp / "run"
    every = {"checkpoint_interval": 10, "sample_interval": 10, "n_saved_models": 10}
    args = tutorial_configs(tmp, digits_dir, run, conditional=False, evaluation_checkpoint=every)
    assert eirtrain([*args, "--globals.basic_experiment.n_epochs=1"]) == 0
    found = [path for _, _, path in sorted(checkpoints_in(run / "saved_models"), key=lambda c: c[1])]
    assert len(found) >= 3, found
    return found

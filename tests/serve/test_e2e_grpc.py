"""A real `eirserve` process serving HTTP and gRPC on loopback ephemeral ports: tritonclient over
both, then SIGTERM shuts both down cleanly; a taken gRPC port is a one-line CLI error."""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.serve.live import free_port
from tests.serve.realserver import EIRSERVE, eirserve

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_real_server_answers_tritonclient_over_http_and_grpc_and_stops_both(
    tiny_conditional_bundle: Path, digits_dir: Path
) -> None:
    grpc_port = free_port()  # gRPC's port 0 means "off", so this one is picked by the test
    with eirserve(tiny_conditional_bundle, env={"EIR_SERVE_GRPC_PORT": str(grpc_port)}) as server:  # the env form
        port = int(server.url.rsplit(":", 1)[1])
        name = httpx.get(f"http://127.0.0.1:{port}/info").json()["model"]["name"]
        version = httpx.get(f"http://127.0.0.1:{port}/v2/models/{name}").json()["versions"][0]
        img = np.load(digits_dir / "mnist_npy" / "10004.npy").reshape(1, 1, 8, 8)
        label = np.array([b"6"], dtype=object)
        want = np.frombuffer(
            base64.b64decode(
                httpx.post(
                    f"http://127.0.0.1:{port}/predict",
                    params={"seed": 3},
                    json=[{"mnist": base64.b64encode(img.tobytes()).decode(), "mnist_label": {"CLASS": "6"}}],
                ).json()["result"][0]["mnist_output"]
            ),
            "<f4",
        ).reshape(1, 1, 8, 8)

        g = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert g.is_server_ready() and g.is_model_ready(name, version)
        inputs = [
            grpcclient.InferInput("mnist", [1, 1, 8, 8], "UINT8"),
            grpcclient.InferInput("mnist_label.CLASS", [1], "BYTES"),
        ]
        inputs[0].set_data_from_numpy(img)
        inputs[1].set_data_from_numpy(label)
        got = g.infer(name, inputs, model_version=version, parameters={"seed": 3}).as_numpy("mnist_output")
        np.testing.assert_allclose(got, want, rtol=1e-6)

        h = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        hin = [
            httpclient.InferInput("mnist", [1, 1, 8, 8], "UINT8"),
            httpclient.InferInput("mnist_label.CLASS", [1], "BYTES"),
        ]
        hin[0].set_data_from_numpy(img, binary_data=True)
        hin[1].set_data_from_numpy(label, binary_data=True)
        np.testing.assert_allclose(h.infer(name, hin, parameters={"seed": 3}).as_numpy("mnist_output"), want, rtol=1e-6)
        assert server.stop() in (0, -signal.SIGTERM)
    assert "Traceback" not in server.stderr, server.stderr
    assert refused(port) and refused(grpc_port)


def test_a_taken_grpc_port_is_a_one_line_error(tiny_bundle: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        r = subprocess.run(
            [*EIRSERVE, "--model-path", str(tiny_bundle), "--port", "0", "--grpc-port", str(busy)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (
        f"eirserve: error: --grpc-port {busy}: cannot listen on 127.0.0.1:{busy} (Address already in use); "
        "pick another port, or 0 to turn gRPC off"
    )

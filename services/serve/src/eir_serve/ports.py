"""Port checks that need no model, no PyTorch and no gRPC: the command line makes them first."""

from __future__ import annotations

import socket


class GrpcPortError(ValueError):
    """The gRPC port cannot be bound; the message says which and what to do."""


def check_port_free(host: str, port: int) -> None:
    """Fail before the model loads, with a message, when the gRPC port is taken."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as e:
            raise GrpcPortError(
                f"--grpc-port {port}: cannot listen on {address} ({e.strerror}); "
                "pick another port, or 0 to turn gRPC off"
            ) from None

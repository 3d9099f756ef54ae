"""A request as EIR's tutorial client makes it, against eirserve: read a .npy image, send base64
of its raw array bytes (no .npy header) in a JSON list posted with ``requests``, and read the
answer as base64 of raw float32 bytes. Nothing eirserve-specific: an EIR client works as is.

    python examples/client/eir_request_example.py --url http://127.0.0.1:8000/predict \
        --npy examples/tutorial/data/digits8/mnist_npy/10001.npy
"""

from __future__ import annotations

import argparse
import base64

import numpy as np
import requests


def encode_array_to_base64(file_path: str) -> str:
    return base64.b64encode(np.load(file_path).tobytes()).decode("utf-8")


def send_request(url: str, payload: list[dict[str, object]]) -> list[dict[str, str]]:
    response = requests.post(url, json=payload, timeout=60)
    response.raise_for_status()
    result: list[dict[str, str]] = response.json()["result"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000/predict")
    ap.add_argument("--npy", required=True, help="an image of the model's input, e.g. .../mnist_npy/10001.npy")
    ap.add_argument("--input-name", default="mnist")
    ap.add_argument("--output-name", default="mnist_output")
    a = ap.parse_args()
    result = send_request(a.url, [{a.input_name: encode_array_to_base64(a.npy)}])
    out = np.frombuffer(base64.b64decode(result[0][a.output_name]), dtype=np.float32)
    image = np.load(a.npy)
    print(f"{a.output_name}: {out.size} float32 values, mean {out.mean():.2f} (input mean {image.mean():.2f})")


if __name__ == "__main__":
    main()

"""Talk to a running eirserve: wait until ready, show /info, reconstruct a digit (and, for the
conditional model, generate digits from labels alone), and print them as text art."""

from __future__ import annotations

import argparse
import base64
import sys
import time
from pathlib import Path

import httpx
import numpy as np

SHADES = " .:-=+*#%@"


def ascii_art(img: np.ndarray) -> list[str]:
    img = np.clip(img.reshape(img.shape[-2:]), 0, 255) / 255.0
    return ["".join(SHADES[int(v * (len(SHADES) - 1))] * 2 for v in row) for row in img]


def side_by_side(*blocks: list[str]) -> str:
    return "\n".join("   ".join(parts) for parts in zip(*blocks, strict=True))


def wait_ready(client: httpx.Client, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if client.get("/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    sys.exit("server did not become ready in time")


def decode(b64: str, shape: list[int]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<f4").reshape(shape)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--kind", default="autoencoder")
    a = ap.parse_args()
    with httpx.Client(base_url=a.url, timeout=30) as client:
        wait_ready(client)
        info = client.get("/info").json()
        print("GET /info ->", info)
        out_name, out = next(iter(info["outputs"].items()))
        if a.kind == "diffusion":  # a sampler: the same labels twice, other seeds, other digits
            for seed in (0, 1):
                r = client.post(f"/predict?seed={seed}", json=[{"mnist_label": {"CLASS": str(d)}} for d in range(10)])
                r.raise_for_status()
                imgs = [decode(x[out_name], out["shape"]) for x in r.json()["result"]]
                print(f"\nPOST /predict?seed={seed} (labels only, 0..9, sampled by diffusion):")
                print(side_by_side(*[ascii_art(i) for i in imgs[:5]]))
                print()
                print(side_by_side(*[ascii_art(i) for i in imgs[5:]]))
            return
        path = sorted((a.data / "mnist_npy").glob("*.npy"))[5]
        image = np.load(path)
        item: dict[str, object] = {"mnist": base64.b64encode(image.tobytes()).decode()}
        if "mnist_label" in info["inputs"]:  # the conditional model also wants the image's label
            rows = dict(line.split(",") for line in (a.data / "mnist_labels.csv").read_text().split()[1:])
            item["mnist_label"] = {"CLASS": rows[path.stem]}
        payload = [item]
        r = client.post("/predict", json=payload)
        r.raise_for_status()
        recon = decode(r.json()["result"][0][out_name], out["shape"])
        mse = float(np.mean((recon[0] - image) ** 2))
        print(f"\nPOST /predict (one image) -> {out_name} {recon.shape} float32, MSE vs input {mse:.1f}")
        print(side_by_side(ascii_art(image), ascii_art(recon)))
        if a.kind == "conditional":
            labels = [str(d) for d in range(10)]
            r = client.post("/predict?seed=0", json=[{"mnist_label": {"CLASS": d}} for d in labels])
            r.raise_for_status()
            imgs = [decode(x[out_name], out["shape"]) for x in r.json()["result"]]
            print("\nPOST /predict (labels only, 0..9):")
            print(side_by_side(*[ascii_art(i) for i in imgs[:5]]))
            print()
            print(side_by_side(*[ascii_art(i) for i in imgs[5:]]))


if __name__ == "__main__":
    main()

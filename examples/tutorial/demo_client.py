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


def check_data(ap: argparse.ArgumentParser, data: Path) -> list[Path]:
    """The data folder's images (EIR's tutorial layout), or an error that says where to look."""
    images = sorted((data / "mnist_npy").glob("*.npy"))
    if len(images) > 5:
        return images
    here = data if data.is_absolute() else Path.cwd() / data
    what = "no such folder" if not data.is_dir() else f"no .npy images in {data / 'mnist_npy'}"
    hint = ""
    for guess in (Path(__file__).parent / data, Path(__file__).parent / "demo" / data):
        if (guess / "mnist_npy").is_dir():
            hint = f"; did you mean --data {guess}?"
            break
    ap.error(
        f"--data {data}: {what} ({here}); give a folder in EIR's tutorial layout "
        f"(mnist_npy/<ID>.npy and mnist_labels.csv), e.g. one written by eir-data digits{hint}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    ap.add_argument(
        "--data",
        required=True,
        type=Path,
        help="the data folder the model was trained on (relative to the current folder), e.g. data/digits8",
    )
    ap.add_argument(
        "--kind",
        default="autoencoder",
        choices=("autoencoder", "conditional", "diffusion"),
        help="autoencoder: reconstruct an image; conditional: also generate 0-9 from labels; "
        "diffusion: sample 0-9 from labels (default: autoencoder)",
    )
    a = ap.parse_args()
    images = [] if a.kind == "diffusion" else check_data(ap, a.data)
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
        path = images[5]
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
        # What a model that learned nothing would score: every pixel guessed as the average digit's.
        mean_digit = np.mean([np.load(p).astype(np.float64) for p in images], axis=0)
        base = float(np.mean((mean_digit - image) ** 2))
        print(f"\nPOST /predict (one image, {path.name}) -> {out_name} {recon.shape} float32")
        print(
            f"reconstruction error: mean squared error {mse:.1f} in pixel units (values 0-255, so squared units), "
            f"i.e. off by {mse**0.5:.1f} of 255 per pixel on average (root mean square);\n"
            f"guessing the average digit of the data folder instead scores {base:.1f} (root {base**0.5:.1f})"
        )
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

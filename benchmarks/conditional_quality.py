"""Quality of label-only generation by the conditional tutorial model, scored independently.

    python benchmarks/conditional_quality.py [--per-label 60] [--seeds 3] [--nproc 1]

1. Splits scikit-learn's 1797 real digits: 1300 for the generator (written in the tutorial
   layout), 497 that the generator never sees.
2. Trains the tutorial's run-2 model (examples/tutorial/digits8/: image with modality dropout
   0.2 + the CLASS label) on the 1300 with `eirtrain`.
3. Trains a classifier (scikit-learn SVC) on the 497 unseen real digits only.
4. Generates `--per-label` images per digit from the label alone (image input left out, so it
   is imputed with noise), over several seeds, through the same Predictor that eirserve uses.
5. Prints per-label and overall accuracy of the classifier on those generations, its accuracy
   on real held-out digits (for reference), the validation reconstruction MSE, and the mean
   per-pixel spread between samples of one label. Writes benchmarks/results/conditional_quality.*
   (with --nproc N > 1 the model is trained under torchrun with N processes, and the results go
   to conditional_quality_nproc<N>.*)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "examples" / "tutorial" / "digits8"
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-label", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None, help="override the config's n_epochs")
    ap.add_argument("--nproc", type=int, default=1, help="train under torchrun with this many processes")
    a = ap.parse_args()
    from sklearn.svm import SVC

    from eir_core.cli.train import main as eirtrain
    from eir_core.data.builtin import load_digits_uint8, write_tutorial_layout
    from eir_core.predict import Predictor

    images, labels = load_digits_uint8()
    perm = np.random.default_rng(0).permutation(len(images))
    gen_idx, clf_idx = perm[:1300], perm[1300:]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_tutorial_layout(data, images[gen_idx], labels[gen_idx], 10000)
        run = Path(tmp) / "run"
        args = [
            "--global_configs", str(CONF / "globals.yaml"),
            "--input_configs", str(CONF / "input_mnist_array_with_label.yaml"), str(CONF / "input_mnist_label.yaml"),
            "--output_configs", str(CONF / "output_with_label.yaml"),
            f"--globals.basic_experiment.output_folder={run}",
            f"--input_mnist_array_with_label.input_info.input_source={data / 'mnist_npy'}",
            f"--input_mnist_label.input_info.input_source={data / 'mnist_labels.csv'}",
            f"--output_with_label.output_info.output_source={data / 'mnist_npy'}",
            "--no-pbar",
        ]  # fmt: skip
        if a.epochs:
            args.append(f"--globals.basic_experiment.n_epochs={a.epochs}")
        t0 = time.perf_counter()
        if a.nproc > 1:
            launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={a.nproc}"]
            if subprocess.run([*launch, "-m", "eir_core.cli.train", *args], check=False).returncode != 0:
                sys.exit("training failed")
        elif eirtrain(args) != 0:
            sys.exit("training failed")
        train_s = time.perf_counter() - t0
        ckpts = (run / "saved_models").glob("*.safetensors")
        ckpt = max(ckpts, key=lambda p: int(p.name.split("_checkpoint_")[1].split("_")[0]))
        valid_mse = float((run / "validation_average_history.log").read_text().strip().splitlines()[-1].split(",")[1])
        predictor = Predictor.from_path(ckpt, device="cpu")

        x_clf = images[clf_idx].reshape(len(clf_idx), -1) / 255.0
        clf = SVC(gamma=0.02 * 255 / 16, C=10).fit(x_clf[:400], labels[clf_idx][:400])
        held_acc = float((clf.predict(x_clf[400:]) == labels[clf_idx][400:]).mean())

        per_label: dict[str, float] = {}
        spread: dict[str, float] = {}
        all_correct = 0
        total = 0
        for d in range(10):
            gens = []
            n_per_seed = int(np.ceil(a.per_label / a.seeds))
            for s in range(a.seeds):
                items = [{"mnist_label": {"CLASS": str(d)}} for _ in range(n_per_seed)]
                out = predictor.predict(items, seeds=[10_000 * s + 100 * d + k for k in range(n_per_seed)])
                gens += [o["mnist_output"].reshape(-1) for o in out]
            g = np.clip(np.stack(gens[: a.per_label]), 0, 255) / 255.0
            pred = clf.predict(g)
            per_label[str(d)] = float((pred == d).mean())
            all_correct += int((pred == d).sum())
            total += len(pred)
            spread[str(d)] = float((g * 255).std(axis=0).mean())
    result = {
        "generations_per_label": a.per_label,
        "seeds": a.seeds,
        "accuracy_overall": round(all_correct / total, 4),
        "accuracy_per_label": per_label,
        "classifier_accuracy_on_unseen_real_digits": round(held_acc, 4),
        "validation_mse_normalized": valid_mse,
        "mean_pixel_spread_within_label_0_255": {k: round(v, 2) for k, v in spread.items()},
        "training_seconds": round(train_s, 1),
        "training_processes": a.nproc,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "conditional_quality" + (f"_nproc{a.nproc}" if a.nproc > 1 else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Label-only generation quality ({result['date']})",
        "",
        f"Tutorial run 2 on 1300 of the 8x8 digits; SVC classifier trained on 400 of the 497 digits the "
        f"generator never saw (accuracy on the other 97 real ones: {held_acc:.3f}). "
        f"{a.per_label} generations per label over {a.seeds} seed ranges. Training took {train_s:.0f} s"
        + (f" under torchrun with {a.nproc} processes (global batch unchanged)." if a.nproc > 1 else "."),
        "",
        "| label | classified as the asked digit | mean per-pixel spread (0-255) |",
        "|---|---|---|",
        *[f"| {d} | {per_label[d]:.3f} | {spread[d]:.2f} |" for d in per_label],
        f"| **all** | **{result['accuracy_overall']:.4f}** | |",
        "",
        f"Validation reconstruction MSE (normalized space): {valid_mse:.4f}.",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

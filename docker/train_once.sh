#!/usr/bin/env bash
# Train the tutorial model into /models once; a later start finds the bundle and does nothing.
#   TUTORIAL_RUN=autoencoder|conditional|diffusion (default autoencoder), SIZE=8|28 (default 8),
#   N_EPOCHS=N (default: the tutorial's; smoke tests train a few epochs)
set -euo pipefail
out=${MODELS_DIR:-/models}
size=${SIZE:-8}
kind=${TUTORIAL_RUN:-autoencoder}
case "$kind" in autoencoder|conditional|diffusion) ;; *) echo "TUTORIAL_RUN=$kind: use autoencoder, conditional or diffusion" >&2; exit 2 ;; esac
# The run's name names its checkpoints and is the model's name in /info.
name="tutorial_${kind}_${size}"
if ls "$out"/saved_models/"${name}"_checkpoint_*.safetensors >/dev/null 2>&1; then
  echo "bundle of $name already in $out; skipping training"; exit 0
fi
if ls "$out"/saved_models/*.safetensors >/dev/null 2>&1; then
  echo "$out holds a bundle of another run ($(ls "$out"/saved_models | head -1)), not of $name;" \
       "point MODELS_DIR at a folder of its own (compose uses /models/$name)" >&2
  exit 2
fi
conf=examples/tutorial/digits8; [ "$size" = 28 ] && conf=examples/tutorial
if [ "$kind" = diffusion ]; then conf=examples/diffusion; [ "$size" = 28 ] && conf=examples/diffusion/digits28; fi
data="$(mktemp -d)/data"  # a fresh folder each run (TMPDIR, else /tmp)
if [ "$size" = 28 ]; then eir-data digits --size 28 --count 10000 --output-folder "$data"
else eir-data digits --output-folder "$data"; fi
src="$data/mnist_npy"
if [ "$kind" = diffusion ]; then  # EIR's diffusion keys: the label conditions the denoised image
  set -- --input_configs "$conf/input_mnist_array.yaml" "$conf/input_mnist_label.yaml" \
    --output_configs "$conf/output.yaml" \
    "--input_mnist_array.input_info.input_source=$src" \
    "--input_mnist_label.input_info.input_source=$data/mnist_labels.csv" \
    "--output.output_info.output_source=$src"
elif [ "$kind" = conditional ]; then
  set -- --input_configs "$conf/input_mnist_array_with_label.yaml" "$conf/input_mnist_label.yaml" \
    --output_configs "$conf/output_with_label.yaml" \
    "--input_mnist_array_with_label.input_info.input_source=$src" \
    "--input_mnist_label.input_info.input_source=$data/mnist_labels.csv" \
    "--output_with_label.output_info.output_source=$src"
else
  set -- --input_configs "$conf/input_mnist_array.yaml" --output_configs "$conf/output.yaml" \
    "--input_mnist_array.input_info.input_source=$src" "--output.output_info.output_source=$src"
fi
# Train into a scratch folder on the volume, then move it in place: a half-trained run is
# never mistaken for a finished one.
# (The run's own folder name names the checkpoints; a leading dot on it would hide them.)
rm -rf "$out/.training"
eirtrain --global_configs "$conf/globals.yaml" "$@" \
  "--globals.basic_experiment.output_folder=$out/.training/$name" --no-pbar \
  ${N_EPOCHS:+"--globals.basic_experiment.n_epochs=$N_EPOCHS"}
mv "$out/.training/$name/saved_models" "$out/saved_models"
rm -rf "$out/.training"
echo "trained: $(ls "$out"/saved_models)"

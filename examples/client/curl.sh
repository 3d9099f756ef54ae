#!/usr/bin/env bash
# /predict and /info with plain curl (EIR's payload). Usage: curl.sh [URL] [NPY_FILE]
#   bash examples/client/curl.sh http://127.0.0.1:8000 examples/tutorial/data/digits8/mnist_npy/10001.npy
set -euo pipefail
url=${1:-http://127.0.0.1:8000}
npy=${2:-examples/tutorial/data/digits8/mnist_npy/10001.npy}
curl -sf "$url/info"; echo
b64=$(python3 -c 'import base64,numpy as np,sys; print(base64.b64encode(np.load(sys.argv[1]).tobytes()).decode())' "$npy")
curl -sf -H 'content-type: application/json' -d "[{\"mnist\": \"$b64\"}]" "$url/predict" | head -c 300; echo
# Label-only generation from the conditional model, with a seed:
#   curl -s -H 'content-type: application/json' -d '[{"mnist_label": {"CLASS": "7"}}]' "$url/predict?seed=1"
# A bad request shows the error shape:
curl -s -H 'content-type: application/json' -d '[{"mnist": "not base64"}]' "$url/predict"; echo

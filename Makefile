# One-command entry points (the README calls these).
#   make demo   set up .venv, make the built-in digits, train the tutorial autoencoder,
#               serve the bundle and answer a real /predict request
#   make demo-conditional / make demo-diffusion / make demo-torchrun   the label-conditional run /
#               label-only digits sampled by diffusion / the same demo
#               trained by 2 processes under torchrun
#   make test   set up .venv and run the whole test suite (what CI runs)
#   make lint   ruff + mypy;   make bench   benchmark scripts -> benchmarks/results/
#   make dist   wheels and sdists of eir-core and eir-serve in dist/ (version: the VERSION file);
#               make release-smoke installs them in fresh venvs, trains and serves
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines take this pinned build; for CUDA: make setup TORCH_SPEC="torch==2.13.0" \
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 (any build >= 2.2 works).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
DEMO_DIR ?= examples/tutorial

.PHONY: dist release-smoke setup browser demo demo-conditional demo-diffusion demo-torchrun test lint bench docker-smoke grpc-stubs clean

$(VENV)/.installed: packages/core/pyproject.toml requirements-dev.txt $(wildcard services/serve/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install -q -e "packages/core[train]" $(if $(wildcard services/serve/pyproject.toml),-e services/serve) -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" bash $(DEMO_DIR)/run_demo.sh

demo-conditional: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" bash $(DEMO_DIR)/run_demo.sh conditional

# Label-only digits sampled by a diffusion model (examples/diffusion: EIR's loss: diffusion keys).
demo-diffusion: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" bash $(DEMO_DIR)/run_demo.sh diffusion

# The same as demo, trained by 2 processes under torchrun (DistributedDataParallel, gloo).
demo-torchrun: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" NPROC=2 bash $(DEMO_DIR)/run_demo.sh

# The web page test drives a real headless Chromium: Debian's package, installed if missing.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium package (sudo apt-get install chromium) for the web page test" >&2; exit 1; fi; }

test: setup browser
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy packages/core/src $(wildcard services/serve/src)

# Side by side with EIR 0.25: bash benchmarks/eir_reference.sh install, then make bench BENCH_FLAGS=--with-eir
BENCH_FLAGS ?=
bench: setup
	$(PY) benchmarks/train_throughput.py $(BENCH_FLAGS)
	$(PY) benchmarks/serve_load.py --levers $(BENCH_FLAGS)

dist: setup
	rm -rf dist
	$(PY) -m build --outdir dist packages/core
	$(PY) -m build --outdir dist services/serve

release-smoke: dist
	bash scripts/release_smoke.sh dist

docker-smoke:
	bash scripts/docker_smoke.sh

# Regenerate eirserve's checked-in gRPC modules from its .proto (grpcio-tools, a dev requirement).
grpc-stubs: setup
	bash scripts/gen_grpc.sh $(PY)

clean:
	rm -rf $(VENV) $(DEMO_DIR)/runs $(DEMO_DIR)/data dist

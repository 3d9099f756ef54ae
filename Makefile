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
#   make docs   the documentation site (site/);   make docs-check   run every block of the docs
#   make clean  remove what the demos wrote and .venv (never your own runs or data)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines take this pinned build; for CUDA: make setup TORCH_SPEC="torch==2.13.0" \
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 (any build >= 2.2 works).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
DEMO_DIR ?= examples/tutorial

.PHONY: dist release-smoke setup demo demo-conditional demo-diffusion demo-torchrun test lint docs docs-check bench docker-smoke grpc-stubs clean

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

# The suite in 2 processes (pytest-xdist); the web page test runs where Chromium is (CHROMIUM, else
# /usr/bin/chromium) and is skipped with a message elsewhere: `make test` installs nothing itself.
# The tests marked `long` (end-to-end runs of ~10 s or more: torchrun jobs, kill-and-resume
# cycles, wheel installs) are `make test-long`; CI runs both.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope -m "not long"

test-long: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope -m long

lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy packages/core/src $(wildcard services/serve/src)

# Side by side with EIR 0.25: bash benchmarks/eir_reference.sh install, then make bench BENCH_FLAGS=--with-eir
BENCH_FLAGS ?=
# The documentation site (MkDocs + Material), built strictly (a broken link fails): site/.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# Every shell and Python block of README.md and the docs pages, in page order, in fresh clones of
# HEAD (they set themselves up: make demo, .venv, training, servers on 8000/8001); ~10 minutes.
docs-check: setup
	$(PY) scripts/run_docs.py

bench: setup
	$(PY) benchmarks/train_throughput.py $(BENCH_FLAGS)
	$(PY) benchmarks/serve_load.py --levers $(BENCH_FLAGS)

dist: setup
	rm -f dist/eir_core-* dist/eir_serve-*  # this target's own earlier files only
	$(PY) -m build --outdir dist packages/core
	$(PY) -m build --outdir dist services/serve

release-smoke: dist
	bash scripts/release_smoke.sh dist

docker-smoke:
	bash scripts/docker_smoke.sh

# Regenerate eirserve's checked-in gRPC modules from its .proto (grpcio-tools, a dev requirement).
grpc-stubs: setup
	bash scripts/gen_grpc.sh $(PY)

# Only what the demos wrote (under $(DEMO_DIR)/demo, by the runs' own records of their files) and
# the .venv that make setup made. The tutorial's runs/ and data/ folders are yours: never touched.
clean:
	@if [ -d $(DEMO_DIR)/demo ]; then \
	  if [ -x $(PY) ]; then $(PY) scripts/clean_demos.py $(DEMO_DIR)/demo; \
	  else echo "clean: $(DEMO_DIR)/demo is left as it is: removing exactly what the demos wrote needs $(VENV) (make setup)" >&2; fi; \
	fi
	@if [ -f $(VENV)/.installed ]; then rm -rf $(VENV) && echo "clean: removed $(VENV)"; fi
	@if [ -d dist ]; then rm -f dist/eir_core-* dist/eir_serve-*; rmdir dist 2>/dev/null || true; fi  # make dist's files only

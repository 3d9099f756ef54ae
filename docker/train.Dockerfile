# Trainer image: eir-core with its training extra (PyTorch, plots, ONNX export), and the tutorial
# configs for docker/train_once.sh. Build from the repository root:
#   docker build -f docker/train.Dockerfile -t eir-train .
#   docker build -f docker/train.Dockerfile --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 \
#     -t eir-train:cuda .                                   (PyTorch's CUDA build)
# TORCH_SPEC pins PyTorch; from PyPI, Linux x86_64 wheels of torch are CUDA builds: for a CPU-only
# image from a machine that is not set up with the CPU wheel, pass
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu.
# Two stages, as docker/serve.Dockerfile: the image keeps the environment, not the installer.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/eir
ENV PATH=/opt/eir/bin:$PATH
# Dependencies first (a cached layer), read from the package's pyproject file, code after.
COPY docker/deps.py /src/deps.py
COPY packages/core/pyproject.toml /src/packages/core/pyproject.toml
RUN pip install "${TORCH_SPEC}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
 && python /src/deps.py /src/packages/core/pyproject.toml:train > /src/deps.txt \
 && pip install -r /src/deps.txt
COPY VERSION /src/VERSION
COPY packages/core /src/packages/core
# Then what training never runs leaves: the installer, the packages' test suites, and PyTorch's
# C++ test programs, headers and test library (eirtrain builds no C++ extension and does not
# use torch.compile); torch_shm_manager stays (shared memory for data loading).
RUN pip install --no-deps /src/packages/core \
 && python -m pip uninstall -y -q pip setuptools \
 && site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
 && find "$site" -depth -type d -name tests -exec rm -rf {} + \
 && rm -rf "$site/torch/test" "$site/torch/include" "$site/torch/lib/libtorchbind_test.so" \
 && find "$site/torch/bin" -type f ! -name torch_shm_manager -delete \
 && python -c "import eir_core.train.trainer, sklearn.manifold, matplotlib.pyplot, onnxruntime"

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/eir /opt/eir
RUN useradd --create-home --uid 10001 eir && mkdir /models && chown eir /models
COPY examples/tutorial /app/examples/tutorial
COPY examples/diffusion /app/examples/diffusion
COPY docker/train_once.sh /app/train_once.sh
COPY docker/train_job.sh /app/train_job.sh
WORKDIR /app
USER eir
ENV PATH=/opt/eir/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MPLCONFIGDIR=/tmp/mpl
ENTRYPOINT ["bash", "/app/train_once.sh"]

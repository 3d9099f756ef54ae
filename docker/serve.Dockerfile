# eirserve image. Build from the repository root:
#   docker build -f docker/serve.Dockerfile -t eir-serve .
#       CPU (the default): ONNX Runtime runs the bundle's graph; no PyTorch in the image.
#   docker build -f docker/serve.Dockerfile --build-arg TORCH_SPEC=torch==2.13.0 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t eir-serve:cuda .
#       CUDA: adds PyTorch's CUDA build (eir-serve[torch]), which runs the model on the GPU and
#       serves bundles without a graph. docs/deploying.md, "Images and releases", says why this and not
#       onnxruntime-gpu.
# Two stages: the first builds a virtual environment (and whatever the build needs: pip, the
# build backend, downloads), the second copies only that environment onto a clean base.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_SPEC=
ARG TORCH_INDEX_URL=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/eir
ENV PATH=/opt/eir/bin:$PATH
# Dependencies first (a cached layer), read from the packages' pyproject files, code after.
COPY docker/deps.py /src/deps.py
COPY packages/core/pyproject.toml /src/packages/core/pyproject.toml
COPY services/serve/pyproject.toml /src/services/serve/pyproject.toml
RUN if [ -n "$TORCH_SPEC" ]; then pip install "$TORCH_SPEC" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}; fi \
 && python /src/deps.py /src/packages/core/pyproject.toml /src/services/serve/pyproject.toml > /src/deps.txt \
 && pip install -r /src/deps.txt
COPY VERSION /src/VERSION
COPY packages/core /src/packages/core
COPY services/serve /src/services/serve
# The packages themselves (their dependencies are in place), then the installer and the
# packages' test suites leave the environment: the image runs eirserve, it installs nothing.
RUN pip install --no-deps /src/packages/core /src/services/serve \
 && python -m pip uninstall -y -q pip setuptools \
 && find "$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")" -depth -type d -name tests -exec rm -rf {} + \
 && python -c "import eir_serve.cli, eir_serve.app, eir_core.onnx_runtime, onnxruntime"

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/eir /opt/eir
RUN useradd --create-home --uid 10001 eir && mkdir /models && chown eir /models
USER eir
ENV PATH=/opt/eir/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    EIR_SERVE_HOST=0.0.0.0 EIR_SERVE_PORT=8000 EIR_SERVE_GRPC_PORT=8001 EIR_SERVE_DEVICE=auto EIR_SERVE_MODEL_PATH=/models
# HTTP (EIR's /predict, the Open Inference Protocol under /v2) and gRPC (the protocol's GRPCInferenceService)
EXPOSE 8000 8001
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=5 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"EIR_SERVE_PORT\"]}/ready', timeout=2)"
ENTRYPOINT ["eirserve"]

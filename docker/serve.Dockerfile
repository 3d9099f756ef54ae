# eirserve image: eir-core (without the training extra) + eir-serve. Build from the repo root:
#   docker build -f docker/serve.Dockerfile -t eir-serve .
#   docker build -f docker/serve.Dockerfile --build-arg TORCH_SPEC=torch==2.13.0 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t eir-serve:cuda .
FROM python:3.11-slim

# CPU build by default; a CUDA build for GPU hosts through the two arguments above.
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

# Dependencies first (a cached layer), read from the packages' pyproject files, code after.
COPY docker/deps.py /src/deps.py
COPY packages/core/pyproject.toml /src/packages/core/pyproject.toml
COPY services/serve/pyproject.toml /src/services/serve/pyproject.toml
RUN pip install "${TORCH_SPEC}" ${TORCH_INDEX_URL:+--index-url ${TORCH_INDEX_URL}} \
 && python /src/deps.py /src/packages/core/pyproject.toml /src/services/serve/pyproject.toml > /src/deps.txt \
 && pip install -r /src/deps.txt

COPY packages/core /src/packages/core
COPY services/serve /src/services/serve
RUN pip install --no-deps /src/packages/core /src/services/serve && rm -rf /src \
 && useradd --create-home --uid 10001 eir && mkdir /models && chown eir /models

USER eir
ENV EIR_SERVE_HOST=0.0.0.0 EIR_SERVE_PORT=8000 EIR_SERVE_GRPC_PORT=8001 EIR_SERVE_DEVICE=auto EIR_SERVE_MODEL_PATH=/models
# HTTP (EIR's /predict, the Open Inference Protocol under /v2) and gRPC (the protocol's GRPCInferenceService)
EXPOSE 8000 8001
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=5 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"EIR_SERVE_PORT\"]}/ready', timeout=2)"
ENTRYPOINT ["eirserve"]

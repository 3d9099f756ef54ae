# Trainer image: eir-core with its training extra. Build from the repo root:
#   docker build -f docker/train.Dockerfile -t eir-train .
FROM python:3.11-slim

ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MPLCONFIGDIR=/tmp/mpl

# Dependencies first (a cached layer), read from the package's pyproject file, code after.
COPY docker/deps.py /src/deps.py
COPY packages/core/pyproject.toml /src/packages/core/pyproject.toml
RUN pip install "${TORCH_SPEC}" ${TORCH_INDEX_URL:+--index-url ${TORCH_INDEX_URL}} \
 && python /src/deps.py /src/packages/core/pyproject.toml:train > /src/deps.txt \
 && pip install -r /src/deps.txt

COPY packages/core /src/packages/core
RUN pip install --no-deps /src/packages/core && rm -rf /src \
 && useradd --create-home --uid 10001 eir && mkdir /models && chown eir /models
COPY examples/tutorial /app/examples/tutorial
COPY examples/diffusion /app/examples/diffusion
COPY docker/train_once.sh /app/train_once.sh
WORKDIR /app
USER eir
ENTRYPOINT ["bash", "/app/train_once.sh"]

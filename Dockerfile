# convewma-service image: `convewma serve` on port 8000, one uvicorn worker.
#
# One image tag everywhere: IMAGE=convewma:0.1.0 (README, docker/compose.yaml's ${IMAGE},
# docker/k8s/kustomization.yaml's images:); VERSION below is its tag, pyproject's version.
# CPU (default):  docker build -t "$IMAGE" .
# GPU hosts:      docker build -t convewma-cuda:0.1.0 \
#                   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#                 docker run --gpus all -p 8000:8000 convewma-cuda:0.1.0
# Offline / local wheel folder (this platform): see docker/README.md.
#
# Stop with a grace period of at least CONVEWMA_DRAIN_S + CONVEWMA_REQUEST_TIMEOUT_S + 5
# (40 s by default), e.g. `docker run --stop-timeout 45` or compose `stop_grace_period`.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# Where torch comes from: PyTorch's CPU index by default; a CUDA index (cu126, cu128,
# ...) gives a CUDA-capable build that brings its own CUDA libraries. Empty: PyPI only.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
# Extra pip options, e.g. "--find-links /wheels" for a wheel folder mounted at build.
ARG PIP_EXTRA_ARGS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Layers from the least to the most often changed: torch, pinned dependencies, the app.
# (torch is pinned by TORCH_VERSION; hadolint cannot see through the ${...:+...} form.)
# hadolint ignore=SC2086,DL3013
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} $PIP_EXTRA_ARGS \
        "torch==${TORCH_VERSION}"
COPY docker/requirements.lock ./
# hadolint ignore=SC2086
RUN pip install $PIP_EXTRA_ARGS -r requirements.lock
COPY pyproject.toml README.md ./
COPY app ./app
# hadolint ignore=SC2086
RUN pip install $PIP_EXTRA_ARGS --no-deps . \
    && python -c "import app.main, torch; print('torch', torch.__version__)" \
    && find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE} AS runtime
# The image's version: the tag of IMAGE and pyproject.toml's version (a test checks).
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="convewma-service" \
      org.opencontainers.image.description="ConvEWMA: learned exponential smoothing as a micro-batching HTTP service" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/convewma/convewma-service" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 convewma \
    && useradd --system --uid 10001 --gid convewma --no-create-home --shell /usr/sbin/nologin convewma
COPY --from=build /opt/venv /opt/venv
# The shipped weights; mount another file and point CONVEWMA_WEIGHTS at it to override.
COPY --chmod=0644 app/models/convewma.safetensors models/README.md /srv/convewma/models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONVEWMA_HOST=0.0.0.0 \
    CONVEWMA_PORT=8000 \
    CONVEWMA_WEIGHTS=/srv/convewma/models/convewma.safetensors
WORKDIR /srv/convewma
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('CONVEWMA_PORT', '8000'), timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["convewma", "serve"]

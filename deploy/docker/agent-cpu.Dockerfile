# syntax=docker/dockerfile:1
# fedquilt site agent, CPU only (small models, tests, sites without GPUs).
#
#   docker build -f deploy/docker/agent-cpu.Dockerfile -t fedquilt/agent-cpu .        (context: repo root)
#   docker run -v ./agent.toml:/etc/fedquilt/config/agent.toml:ro -v ./hospital-a:/etc/fedquilt/tls:ro \
#              -v /srv/model-and-data:/data:ro -v fq-agent-state:/var/lib/fedquilt fedquilt/agent-cpu
#
# Nothing secret is baked in: the site certificate and key are mounted at run time (see docs/deploy.md).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the CPU-only index (no CUDA libraries: a much smaller image).
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY . /src
RUN pip install /src

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="fedquilt agent (CPU)" \
      org.opencontainers.image.description="Federated LoRA fine-tuning site agent, CPU build" \
      org.opencontainers.image.licenses="Apache-2.0"
# tini forwards SIGTERM to the agent (python as PID 1 would ignore it).
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 fedquilt \
    && useradd --system --uid 10001 --gid fedquilt --home-dir /var/lib/fedquilt --no-create-home \
       --shell /usr/sbin/nologin fedquilt \
    && install -d -o fedquilt -g fedquilt -m 0700 /var/lib/fedquilt \
    && install -d -m 0755 /etc/fedquilt/config /etc/fedquilt/tls /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/tmp/hf \
    HF_HUB_OFFLINE=1
# state: privacy ledger and caches; tls: NAME.pem/.key + ca.pem; data: local base model and dataset.
VOLUME ["/var/lib/fedquilt", "/etc/fedquilt/tls", "/data"]
USER 10001:10001
WORKDIR /var/lib/fedquilt
ENTRYPOINT ["tini", "--", "fedquilt"]
CMD ["--log-json", "agent", "run", "--no-progress", "--config", "/etc/fedquilt/config/agent.toml"]

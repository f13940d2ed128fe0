# syntax=docker/dockerfile:1
# fedquilt site agent with CUDA torch, for sites with NVIDIA GPUs (needs the NVIDIA container toolkit:
# `docker run --gpus all ...` or a `deploy.resources.reservations.devices` entry in compose).
#
#   docker build -f deploy/docker/agent-cuda.Dockerfile -t fedquilt/agent-cuda .       (context: repo root)
#   docker build ... --build-arg TORCH_CUDA=cu128 --build-arg CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
#
# Pick TORCH_CUDA (the torch wheel variant) to match what the host driver supports; the CUDA runtime
# libraries come with the torch wheel, the base image supplies the rest of the user-space stack.
# Nothing secret is baked in: the site certificate and key are mounted at run time (see docs/deploy.md).
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu130
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_CUDA}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY . /src
RUN pip install /src

FROM ${CUDA_IMAGE}
LABEL org.opencontainers.image.title="fedquilt agent (CUDA)" \
      org.opencontainers.image.description="Federated LoRA fine-tuning site agent, CUDA build" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
# Same Python as the build stage (the venv links to it); tini forwards SIGTERM to the agent.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 tini \
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
    HF_HUB_OFFLINE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# state: privacy ledger and caches; tls: NAME.pem/.key + ca.pem; data: local base model and dataset.
VOLUME ["/var/lib/fedquilt", "/etc/fedquilt/tls", "/data"]
USER 10001:10001
WORKDIR /var/lib/fedquilt
ENTRYPOINT ["tini", "--", "fedquilt"]
CMD ["--log-json", "agent", "run", "--no-progress", "--config", "/etc/fedquilt/config/agent.toml"]

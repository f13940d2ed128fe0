# syntax=docker/dockerfile:1
# fedquilt coordinator: mutual-TLS gRPC on 7443, Prometheus metrics + status page + /healthz on 9464.
#
#   docker build -f deploy/docker/coordinator.Dockerfile -t fedquilt/coordinator .     (context: repo root)
#   docker run -v ./coordinator.toml:/etc/fedquilt/config/coordinator.toml:ro \
#              -v ./coordinator-certs:/etc/fedquilt/tls:ro -v fq-state:/var/lib/fedquilt \
#              -p 7443:7443 -p 127.0.0.1:9464:9464 fedquilt/coordinator
#
# Nothing secret is baked in: certificates and keys are mounted at run time (see docs/deploy.md).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the CPU-only index: the coordinator aggregates on CPU and needs no CUDA libraries.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY . /src
RUN pip install /src

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="fedquilt coordinator" \
      org.opencontainers.image.description="Federated LoRA fine-tuning coordinator (mTLS gRPC, secure aggregation)" \
      org.opencontainers.image.licenses="Apache-2.0"
# tini reaps children and forwards SIGTERM, so `docker stop` shuts the coordinator down cleanly.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 fedquilt \
    && useradd --system --uid 10001 --gid fedquilt --home-dir /var/lib/fedquilt --no-create-home \
       --shell /usr/sbin/nologin fedquilt \
    && install -d -o fedquilt -g fedquilt -m 0700 /var/lib/fedquilt \
    && install -d -m 0755 /etc/fedquilt/config /etc/fedquilt/tls
COPY --from=build /opt/venv /opt/venv
# Containers listen on every interface; FEDQUILT_COORDINATOR_<SECTION>__<FIELD> overrides the config file.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/tmp/hf \
    HF_HUB_OFFLINE=1 \
    FEDQUILT_COORDINATOR_SERVER__LISTEN=0.0.0.0:7443 \
    FEDQUILT_COORDINATOR_SERVER__METRICS_LISTEN=0.0.0.0:9464
# state: SQLite + model store; tls: coordinator.pem/.key, ca.pem, crl.pem (mounted read-only).
VOLUME ["/var/lib/fedquilt", "/etc/fedquilt/tls"]
EXPOSE 7443 9464
USER 10001:10001
WORKDIR /var/lib/fedquilt
# Plain HTTP on the metrics port: a gRPC health probe cannot present a client certificate (mTLS).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["tini", "--", "fedquilt"]
CMD ["--log-json", "coordinator", "serve", "--config", "/etc/fedquilt/config/coordinator.toml"]

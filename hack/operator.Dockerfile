# The kenv operator image. Built by `make image`:
#   buildah --storage-driver vfs bud --isolation chroot -f hack/operator.Dockerfile -t kenv-operator:dev .
# Runs as the non-root user 65532 with a read-only root filesystem (the chart mounts an emptyDir at /tmp).

# BASE_IMAGE: any Debian-based image with python3 (and its venv module); `make image BASE_IMAGE=...` points it at
# the local registry's Debian/python3 image on machines that cannot pull from Docker Hub.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- build: the package and its dependencies in a venv (no compilers needed in the final image) ---
FROM ${BASE_IMAGE} AS build
# PIP_CERT: a CA bundle for a TLS-intercepting proxy, mounted by `make image` for the build only.
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python3 -m venv /opt/kenv \
 && /opt/kenv/bin/pip install --no-compile . \
 && /opt/kenv/bin/python -m compileall -q /opt/kenv/lib

# --- runtime ---
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="kenv operator" \
      org.opencontainers.image.description="Builds Environment resources into images and injects them into pods" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 65532 kenv \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin kenv
COPY --from=build /opt/kenv /opt/kenv
ENV PATH=/opt/kenv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 65532:65532
# 9443 admission webhook, 8000 Prometheus metrics, 8080 kopf health (/healthz)
EXPOSE 9443 8000 8080
ENTRYPOINT ["kenv"]
CMD ["operator"]

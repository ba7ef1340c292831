# Two images from one file (not built in CI: no Docker engine there; checked by checkov in
# tests/test_manifests.py).
#   docker build --target server   -t featurestore-server:0.1.0 .    # `python -m server`
#   docker build --target pipeline -t featurestore-pipeline:0.1.0 .  # jobs/batch_pipeline.py on Spark
#
# The base is pinned to an exact Python release on Debian 12 (bookworm: Java 17 for Spark
# comes from its archive). Pin its digest too where the registry is reachable:
#   FROM python:3.11.14-slim-bookworm@sha256:<digest of `docker buildx imagetools inspect`>
FROM python:3.11.14-slim-bookworm AS server

# A named user with a high uid: Spark/Hadoop look the uid up in /etc/passwd, and the
# Kubernetes manifests run the pods as 10001:10001.
RUN groupadd --system --gid 10001 featurestore \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin featurestore

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY clients/python /app/clients/python
RUN pip install --no-cache-dir /app/clients/python
COPY pyproject.toml README.md /app/
COPY server /app/server
COPY devstack /app/devstack
COPY jobs /app/jobs
RUN pip install --no-cache-dir /app
COPY gateway /app/gateway

USER 10001:10001
EXPOSE 50051
# For `docker run`; Kubernetes ignores it and uses the pod's own probes. A TCP connect, like
# the pod's liveness probe: gRPC health follows PostgreSQL/Redis, which is readiness, not life.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, socket; socket.create_connection(('127.0.0.1', int(os.environ.get('FEATURESTORE_PORT', '50051'))), 2).close()"]
ENTRYPOINT ["python", "-m", "server"]

FROM server AS pipeline
USER root
# Java for Spark, and the PostgreSQL JDBC driver for JDBC sources (/usr/share/java/postgresql.jar).
# Package versions are left to bookworm's archive (the base image pins the release): exact
# Debian versions are withdrawn from the mirrors when a security update supersedes them.
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless libpostgresql-jdbc-java \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir '/app[pipeline]'
USER 10001:10001
ENV HOME=/tmp
# A batch job, run to completion by a Kubernetes Job; there is no long-running process to check.
HEALTHCHECK NONE
ENTRYPOINT []
CMD ["python", "jobs/batch_pipeline.py", "--help"]

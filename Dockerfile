# Two images from one file (not built in CI: no Docker engine there).
#   docker build --target server   -t featurestore-server:0.1.0 .    # `python -m server`
#   docker build --target pipeline -t featurestore-pipeline:0.1.0 .  # jobs/batch_pipeline.py on Spark
FROM python:3.11-slim AS server

WORKDIR /app
COPY clients/python /app/clients/python
RUN pip install --no-cache-dir /app/clients/python
COPY pyproject.toml README.md /app/
COPY server /app/server
COPY devstack /app/devstack
COPY jobs /app/jobs
RUN pip install --no-cache-dir /app
COPY gateway /app/gateway

USER 65534:65534
EXPOSE 50051
ENTRYPOINT ["python", "-m", "server"]

FROM server AS pipeline
USER root
# Java for Spark, and the PostgreSQL JDBC driver for JDBC sources (/usr/share/java/postgresql.jar).
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless libpostgresql-jdbc-java \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir '/app[pipeline]'
USER 65534:65534
ENV HOME=/tmp
ENTRYPOINT []
CMD ["python", "jobs/batch_pipeline.py", "--help"]

# The feature store server image: `python -m server` plus Envoy's descriptor set.
# Build: docker build -t featurestore-server:0.1.0 .
FROM python:3.11-slim

WORKDIR /app
COPY clients/python /app/clients/python
RUN pip install --no-cache-dir /app/clients/python
COPY pyproject.toml README.md /app/
COPY server /app/server
COPY devstack /app/devstack
RUN pip install --no-cache-dir /app
COPY gateway /app/gateway

USER 65534:65534
EXPOSE 50051
ENTRYPOINT ["python", "-m", "server"]

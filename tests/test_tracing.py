"""Traces: a server in this process with an in-memory span exporter, behind a real Envoy.

A request through Envoy carrying a W3C `traceparent` gives the RPC's span that trace and
that parent; the Redis and PostgreSQL calls it makes are its children.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devstack import RateLimit, free_port, start_envoy
from featurestore import FeatureStoreClient
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from server import Settings
from server._app import App, start
from server.tracing import JsonFormatter, disable_tracing
from tests._helpers import Processes, eventually, reaped
from tests._online import ago, f64, register, row, wait_servable

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class InProcessServer:
    """The server's composition root run on an event loop in a thread of this process."""

    def __init__(self, settings: Settings, exporter: InMemorySpanExporter) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="server", daemon=True)
        self.thread.start()
        self.app: App = asyncio.run_coroutine_threadsafe(start(settings, span_exporter=exporter), self.loop).result(60)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.app.stop(1.0), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        disable_tracing()


@pytest.fixture
def traced(
    processes: Processes, postgres_dsn: str, redis_url: str, tmp_path: Path
) -> Iterator[tuple[InProcessServer, int, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    args = ["--port", "0", "--host", "127.0.0.1", "--metrics-port", "0", "--registry-refresh-interval", "0.1"]
    settings = Settings.load([*args, "--postgres-dsn", postgres_dsn, "--redis-url", redis_url], {})
    server = InProcessServer(settings, exporter)
    try:
        unlimited = RateLimit(route=10**9, client=10**9)
        envoy = processes.add(reaped(lambda: start_envoy(tmp_path, free_port(), server.app.port, rate_limit=unlimited)))
        yield server, envoy.port, exporter
    finally:
        server.stop()


def _post(port: int, path: str, body: bytes) -> bytes:
    headers = {"Content-Type": "application/json", "traceparent": TRACEPARENT}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as resp:
        return bytes(resp.read())


def _in_trace(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == TRACE_ID]


def test_a_traceparent_through_envoy_continues_into_rpc_redis_and_postgresql_spans(
    traced: tuple[InProcessServer, int, InMemorySpanExporter],
) -> None:
    server, http_port, exporter = traced
    with FeatureStoreClient(f"127.0.0.1:{server.app.port}") as client:
        register(client, "traced_f", pb.FLOAT)
        wait_servable(client, "customer", "traced_f")
        rows = [row("t1", ago(minutes=1), traced_f=f64(1.5))]
        metadata = (("traceparent", TRACEPARENT),)
        client.store.WriteFeatures(fs.WriteFeaturesRequest(entity_type="customer", rows=rows), metadata=metadata)
    read = b'{"entity_type": "customer", "entity_id": "t1", "feature_names": ["traced_f"]}'
    assert b'"PRESENT"' in _post(http_port, "/api/feature-store/features", read)
    url = f"http://127.0.0.1:{http_port}/api/feature-registry/features/traced_f"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"traceparent": TRACEPARENT}), timeout=10):
        pass

    with FeatureStoreClient(f"127.0.0.1:{server.app.port}") as client:
        history = fs.GetHistoricalFeaturesRequest(entity_type="customer", entity_id="t1", feature_names=["traced_f"])
        history.start_time.FromDatetime(ago(hours=1))
        history.end_time.FromDatetime(ago(minutes=0))
        pages = list(client.store.StreamHistoricalFeatures(history, metadata=(("traceparent", TRACEPARENT),)))
        assert sum(len(p.values) for p in pages) == 1

    expected = {"GetFeaturesJson", "GetFeature", "StreamHistoricalFeatures"}
    eventually(lambda: expected <= {s.name for s in _in_trace(exporter)})
    spans = _in_trace(exporter)
    rpcs = {s.name: s for s in spans if s.parent is not None and format(s.parent.span_id, "016x") == PARENT_ID}
    assert {"WriteFeatures", "GetFeaturesJson", "GetFeature", "StreamHistoricalFeatures"} <= set(rpcs)
    children = {
        name: {c.name for c in spans if c.parent is not None and c.parent.span_id == rpc.context.span_id}
        for name, rpc in rpcs.items()
    }
    assert "redis read" in children["GetFeaturesJson"]
    assert "postgresql select" in children["GetFeature"]
    assert "postgresql select" in children["StreamHistoricalFeatures"]
    assert {"postgresql history_append", "redis write"} <= children["WriteFeatures"]
    assert rpcs["GetFeaturesJson"].attributes is not None
    assert rpcs["GetFeaturesJson"].attributes["rpc.method"] == "GetFeaturesJson"


def test_with_tracing_off_the_server_logs_json_lines_without_a_trace(
    processes: Processes, postgres_dsn: str, redis_url: str
) -> None:
    server = processes.server(postgres_dsn, redis_url)
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    assert any("serving gRPC" in line["message"] for line in lines)
    assert all("trace_id" not in line for line in lines)


def test_log_lines_are_json_with_the_current_trace_id() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    record = logging.LogRecord("server", logging.WARNING, __file__, 1, "redis: %s", ("timed out",), None)
    with provider.get_tracer("test").start_as_current_span("rpc") as span:
        line = JsonFormatter().format(record)
    parsed = json.loads(line)
    assert parsed["message"] == "redis: timed out"
    assert parsed["level"] == "WARNING"
    assert parsed["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert "trace_id" not in json.loads(JsonFormatter().format(record))


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint on loopback that keeps what it is sent (protobuf)."""

    def __init__(self) -> None:
        received: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.received = received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self._body()
                received.append(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length", "0")))
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[tuple[str, str, str, str, str]]:
        """(service, name, trace id, parent span id, span id) of every span received."""
        out = []
        for request in list(self.received):
            for resource in request.resource_spans:
                service = next(a.value.string_value for a in resource.resource.attributes if a.key == "service.name")
                for scope in resource.scope_spans:
                    out += [
                        (service, s.name, s.trace_id.hex(), s.parent_span_id.hex(), s.span_id.hex())
                        for s in scope.spans
                    ]
        return out


def test_envoy_emits_its_own_span_and_the_server_continues_from_it(
    processes: Processes, postgres_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    receiver = OtlpReceiver()
    exporter = InMemorySpanExporter()
    args = ["--port", "0", "--host", "127.0.0.1", "--metrics-port", "0"]
    server = InProcessServer(
        Settings.load([*args, "--postgres-dsn", postgres_dsn, "--redis-url", redis_url], {}), exporter
    )
    try:
        unlimited = RateLimit(route=10**9, client=10**9)
        envoy = processes.add(
            reaped(
                lambda: start_envoy(tmp_path, free_port(), server.app.port, rate_limit=unlimited, tracing=receiver.url)
            )
        )
        url = f"http://127.0.0.1:{envoy.port}/api/feature-registry/features?page_size=1"
        with urllib.request.urlopen(urllib.request.Request(url, headers={"traceparent": TRACEPARENT}), timeout=10):
            pass
        eventually(lambda: any(s[0] == "featurestore-envoy" and s[2] == TRACE_ID for s in receiver.spans()), timeout=30)
        [envoy_span] = [s for s in receiver.spans() if s[0] == "featurestore-envoy" and s[2] == TRACE_ID]
        assert envoy_span[3] == PARENT_ID
        eventually(lambda: bool(_in_trace(exporter)))
        [rpc] = [s for s in _in_trace(exporter) if s.name == "ListFeatures"]
        assert rpc.parent is not None
        assert (
            format(rpc.parent.span_id, "016x") == envoy_span[4]
        )  # Envoy's span sits between the caller and the server
    finally:
        server.stop()
        receiver.server.shutdown()

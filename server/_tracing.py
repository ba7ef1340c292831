"""Traces with OpenTelemetry: a span per RPC (continued from the caller's W3C `traceparent`),
per Redis call and per PostgreSQL statement.

Off by default: then `enabled` is False and the hot path pays one attribute check. On when
OTEL_TRACES_EXPORTER is `otlp` (OTLP over HTTP/protobuf to OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
else OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces, with OTEL_EXPORTER_OTLP_HEADERS) or `console`;
OTEL_SERVICE_NAME names the service, OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG choose the
sampler (default parentbased_traceidratio at 0.01: a caller's sampling decision is kept). These
variables are read once, by `TracingSettings.from_environ`, at the composition root.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

enabled = False  # read on the hot path: no span is made while False
_tracer: trace.Tracer = trace.NoOpTracer()
_propagator = TraceContextTextMapPropagator()
_EXPORTERS = ("otlp", "console")


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """What OTEL_* asks for; `exporter` empty means tracing is off."""

    exporter: str = ""
    endpoint: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    service_name: str = "featurestore-server"
    sampler: str = "parentbased_traceidratio"
    sampler_arg: float = 0.01

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], service_name: str = "featurestore-server") -> TracingSettings:
        exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
        if exporter in ("", "none"):
            return cls()
        if exporter not in _EXPORTERS:
            raise SystemExit(f"OTEL_TRACES_EXPORTER={exporter!r}: this server supports {', '.join(_EXPORTERS)}")
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
        if not endpoint:
            base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318").rstrip("/")
            endpoint = base + "/v1/traces"
        pairs = [p.split("=", 1) for p in environ.get("OTEL_EXPORTER_OTLP_HEADERS", "").split(",") if "=" in p]
        raw_arg = environ.get("OTEL_TRACES_SAMPLER_ARG", "")
        try:
            arg = float(raw_arg) if raw_arg else 0.01
        except ValueError:
            raise SystemExit(f"OTEL_TRACES_SAMPLER_ARG={raw_arg!r} is not a number") from None
        return cls(
            exporter=exporter,
            endpoint=endpoint,
            headers=tuple((k.strip(), v.strip()) for k, v in pairs),
            service_name=environ.get("OTEL_SERVICE_NAME", service_name),
            sampler=environ.get("OTEL_TRACES_SAMPLER", "parentbased_traceidratio").strip().lower(),
            sampler_arg=arg,
        )


def _sampler(name: str, arg: float) -> Sampler:
    base: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(arg),
    }
    if name in base:
        return base[name]
    if name.startswith("parentbased_") and name.removeprefix("parentbased_") in base:
        return ParentBased(base[name.removeprefix("parentbased_")])
    raise SystemExit(f"OTEL_TRACES_SAMPLER={name!r} is not one of {', '.join(base)} (or parentbased_ + one)")


def _exporter(settings: TracingSettings) -> SpanExporter:
    if settings.exporter == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=settings.endpoint, headers=dict(settings.headers))


def configure(
    settings: TracingSettings, exporter: SpanExporter | None = None, *, make_global: bool = False
) -> TracerProvider | None:
    """Turn tracing on as `settings` ask (or with `exporter`, synchronously: for tests); None if off.

    `make_global` also installs the provider as OpenTelemetry's global one (a pipeline's
    code uses the API's global tracer).
    """
    global enabled, _tracer  # one process-wide switch, read as a module attribute
    if not settings.exporter and exporter is None:
        return None
    resource = Resource.create({"service.name": settings.service_name})
    provider = TracerProvider(resource=resource, sampler=_sampler(settings.sampler, settings.sampler_arg))
    processor = SimpleSpanProcessor(exporter) if exporter is not None else BatchSpanProcessor(_exporter(settings))
    provider.add_span_processor(processor)
    if make_global:
        trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("featurestore.server")
    enabled = True
    return provider


def disable() -> None:
    global enabled, _tracer
    enabled, _tracer = False, trace.NoOpTracer()


def _metadata_getter(carrier: Any, key: str) -> list[str] | None:
    for k, v in carrier:
        if k == key:
            return [v if isinstance(v, str) else v.decode()]
    return None


class _Getter:
    def get(self, carrier: Any, key: str) -> list[str] | None:
        return _metadata_getter(carrier, key)

    def keys(self, carrier: Any) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _Getter()


def start_rpc(method: str, metadata: Any) -> tuple[trace.Span, object]:
    """A server span for `method`, child of the caller's traceparent (gRPC metadata), made current."""
    parent = _propagator.extract(metadata or (), getter=_GETTER)  # type: ignore[arg-type]
    span = _tracer.start_span(method, context=parent, kind=SpanKind.SERVER, attributes={"rpc.method": method})
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    return span, token


def end_rpc(span: trace.Span, token: object, code: str | None) -> None:
    """End the RPC's span (`code`: the gRPC code name of an error, None if it succeeded)."""
    if code is not None:
        span.set_attribute("rpc.grpc.status_code", code)
        span.set_status(Status(StatusCode.ERROR, code))
    span.end()
    otel_context.detach(token)  # type: ignore[arg-type]


def start_call(name: str, attributes: Mapping[str, str | int]) -> trace.Span:
    """A client span (a Redis or PostgreSQL call) under the current span; the caller ends it."""
    return _tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)


class StoreCall:
    """`with StoreCall(...):` around one awaited store call: its duration observed, an error counted,
    and (tracing on) a client span around it. The one form of the Redis and history-append timers."""

    __slots__ = ("_failed", "_observe", "_span", "_started")

    def __init__(
        self,
        name: str,
        attributes: Callable[[], Mapping[str, str | int]],
        observe: Callable[[float], None],
        failed: Callable[[], None],
    ) -> None:
        self._observe, self._failed = observe, failed
        self._span = start_call(name, attributes()) if enabled else None
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        if isinstance(error, Exception):
            self._failed()
            if self._span is not None:
                failed(self._span, error)
        self._observe(time.perf_counter() - self._started)
        if self._span is not None:
            self._span.end()


def record_call(name: str, seconds: float, error: BaseException | None, attributes: Mapping[str, str]) -> None:
    """A client span for a call that just ended after `seconds` (asyncpg reports statements afterwards)."""
    end = time.time_ns()
    span = _tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes, start_time=end - int(seconds * 1e9))
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end(end_time=end)


def record_postgres(query: str, seconds: float, error: BaseException | None) -> None:
    """A span for a PostgreSQL statement that just ended (an asyncpg query logger)."""
    if enabled:
        words = query.split(None, 1)
        name = "postgresql " + (words[0].lower() if words else "")
        record_call(name, seconds, error, {"db.system": "postgresql", "db.statement": query[:500]})


def failed(span: trace.Span, error: BaseException) -> None:
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))


class JsonFormatter(logging.Formatter):
    """Log records as JSON lines: time, level, logger, message, and the current trace and span ids."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            line["trace_id"] = format(span.trace_id, "032x")
            line["span_id"] = format(span.span_id, "016x")
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)

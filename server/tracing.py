"""Tracing for the server and the pipelines (OpenTelemetry; off unless OTEL_TRACES_EXPORTER is set).

See server._tracing: `TracingSettings.from_environ` reads the standard OTEL_* variables
(call it at a composition root), `configure_tracing` turns tracing on, `JsonFormatter`
writes log records as JSON lines carrying the current trace id.
"""

from server._tracing import JsonFormatter, TracingSettings
from server._tracing import configure as configure_tracing
from server._tracing import disable as disable_tracing

__all__ = ["JsonFormatter", "TracingSettings", "configure_tracing", "disable_tracing"]

"""A pipeline's metrics for Prometheus: pushed to a Pushgateway after a run, or served while running.

Any pipeline uses the same few gauges, labelled by `pipeline` (batch, streaming, ...):
call `started()` when a run (or a micro-batch) begins and `finished(...)` when it ends
(a streaming micro-batch also counts its events by outcome with `events(...)`),
then `push(url)` (a batch job that exits) or `serve(port)` once at start (a long-running
job). docs/operations.md lists the metrics.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, pushadd_to_gateway, start_http_server

JOB = "featurestore_pipeline"  # the Pushgateway job the runs are pushed under
_LAST_SUCCESS = "featurestore_pipeline_last_success_timestamp_seconds"


class PipelineMetrics:
    """The gauges of one pipeline's latest run."""

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        self.registry = CollectorRegistry()

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ["pipeline"], registry=self.registry)

        self._start = gauge("featurestore_pipeline_run_start_timestamp_seconds", "When the latest run started.")
        self._end = gauge("featurestore_pipeline_run_end_timestamp_seconds", "When the latest run ended.")
        self._duration = gauge("featurestore_pipeline_run_duration_seconds", "How long the latest run took.")
        self._rows = gauge("featurestore_pipeline_rows_read", "Source rows the latest run read.")
        self._values = gauge("featurestore_pipeline_values_written", "Feature values the latest run wrote.")
        self._failed = gauge("featurestore_pipeline_failed_features", "Features the latest run could not compute.")
        self._success = gauge("featurestore_pipeline_run_success", "1 if the latest run wrote every feature, else 0.")
        self._last_success = gauge(_LAST_SUCCESS, "When the latest run that wrote every feature ended.")
        self._events = Counter(
            "featurestore_pipeline_events",
            "Events a streaming pipeline read, by outcome: applied, dead_lettered (malformed), late_dropped.",
            ["pipeline", "outcome"],
            registry=self.registry,
        )
        self._started_at = 0.0
        self._succeeded = False

    def started(self) -> None:
        self._started_at = time.time()
        self._start.labels(self.pipeline).set(self._started_at)

    def finished(self, *, rows_read: int, values_written: int, failed_features: int) -> None:
        """The run ended; it succeeded if no feature failed."""
        now, name = time.time(), self.pipeline
        self._end.labels(name).set(now)
        self._duration.labels(name).set(now - self._started_at)
        self._rows.labels(name).set(rows_read)
        self._values.labels(name).set(values_written)
        self._failed.labels(name).set(failed_features)
        self._succeeded = failed_features == 0
        self._success.labels(name).set(1 if self._succeeded else 0)
        if self._succeeded:
            self._last_success.labels(name).set(now)

    def events(self, *, applied: int, dead_lettered: int, late_dropped: int) -> None:
        """Count a streaming micro-batch's events by outcome (the `featurestore_pipeline_events_total` counter)."""
        for outcome, n in (("applied", applied), ("dead_lettered", dead_lettered), ("late_dropped", late_dropped)):
            self._events.labels(self.pipeline, outcome).inc(n)

    def push(self, url: str, timeout: float = 10.0) -> None:
        """Push the latest run to a Pushgateway at `url` (job featurestore_pipeline, grouped by pipeline).

        A failed run does not push the last-success time, so the gateway keeps the previous one.
        """
        names = {m.name for m in self.registry.collect()}
        if not self._succeeded:
            names.discard(_LAST_SUCCESS)
        registry = self.registry.restricted_registry(sorted(names))
        pushadd_to_gateway(url, JOB, registry, grouping_key={"pipeline": self.pipeline}, timeout=timeout)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve the gauges on http://host:port/metrics from a background thread (long-running pipelines)."""
        start_http_server(port, addr=host, registry=self.registry)

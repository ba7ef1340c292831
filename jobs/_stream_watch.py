"""Keep the streaming queries in step with the registry while they run.

Every `poll` seconds the STREAMING definitions are read again: a new or changed
feature on a stream that already has a query joins that query at its next
micro-batch (no restart; its windows fill from the events read from then on); a
new stream gets a query of its own; a stream whose declared events changed
(fields, entity, event time, watermark) has its query stopped and restarted
from the same checkpoint, which keeps exactly-once. A query that fails (such as
a source that lost data) stops the pipeline with an error: it fails loudly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from pyspark.sql import SparkSession
from pyspark.sql.streaming.query import StreamingQuery

from featurestore.registry.v1 import feature_pb2 as pb
from jobs._metrics import PipelineMetrics
from jobs._stream_plan import StreamPlan, plan_streams
from jobs._stream_run import MicroBatch, StreamConfig, guard_problems, start_query


class QueryFailed(RuntimeError):
    """A streaming query stopped with an error."""


@dataclass
class _Running:
    query: StreamingQuery
    batch: MicroBatch


def _guarded(spark: SparkSession, plan: StreamPlan, failed: dict[str, str]) -> StreamPlan | None:
    refused = guard_problems(spark, plan)
    failed.update(refused)
    features = tuple(f for f in plan.features if f.name not in refused)
    if not features:
        return None
    return StreamPlan(plan.entity_type, plan.stream, plan.schema, plan.watermark_seconds, features)


class Streams:
    """The running queries of a pipeline."""

    def __init__(
        self,
        spark: SparkSession,
        config: StreamConfig,
        progress: Callable[[str], None] = print,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self.spark, self.config, self.progress, self.metrics = spark, config, progress, metrics
        self.running: dict[str, _Running] = {}
        self.failed: dict[str, str] = {}

    def sync(self, features: Sequence[pb.Feature]) -> None:
        """Start, update, restart or stop queries so that they compute `features`."""
        plans, failed = plan_streams(features)
        wanted = {}
        for plan in plans:
            guarded = _guarded(self.spark, plan, failed)
            if guarded is not None:
                wanted[guarded.query_name] = guarded
        for name, why in failed.items():
            if self.failed.get(name) != why:
                self.progress(f"streaming: FAILED {name}: {why}")
        self.failed = failed
        for name in list(self.running):
            if name not in wanted:
                self.progress(f"streaming {name}: no features left; stopping its query")
                self.running.pop(name).query.stop()
        for name, plan in wanted.items():
            running = self.running.get(name)
            if running is None:
                self._start(plan)
            elif running.batch.plan.source_key != plan.source_key:
                self.progress(f"streaming {name}: the stream's declared events changed; restarting from its checkpoint")
                running.query.stop()
                self._start(plan)
            elif running.batch.plan.features != plan.features:
                self.progress(f"streaming {name}: features now {', '.join(f.name for f in plan.features)}")
                running.batch.update(plan)

    def _start(self, plan: StreamPlan) -> None:
        checkpoint = Path(self.config.checkpoint_dir).resolve() / plan.query_name
        batch = MicroBatch(plan, self.config, checkpoint, self.progress, metrics=self.metrics)
        self.progress(
            f"streaming {plan.query_name}: {plan.stream} -> {', '.join(f.name for f in plan.features)} "
            f"(checkpoint {checkpoint})"
        )
        self.running[plan.query_name] = _Running(start_query(self.spark, batch), batch)

    def check(self) -> None:
        """QueryFailed when a query stopped with an error."""
        for name, running in self.running.items():
            error = running.query.exception()
            if error is not None:
                raise QueryFailed(f"streaming query {name} failed: {str(error).strip().splitlines()[0]}")

    def stop(self) -> None:
        for running in self.running.values():
            running.query.stop()
        self.running.clear()


def watch_streams(
    streams: Streams,
    list_features: Callable[[], Sequence[pb.Feature]],
    *,
    poll: float = 5.0,
    stop: threading.Event | None = None,
    heartbeat: Path | None = None,
) -> None:
    """Run until `stop` is set (or a query fails: QueryFailed), re-reading the definitions every `poll` s.

    `heartbeat`: a file touched after every round in which every query was running (a liveness probe
    checks its age).
    """
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            streams.sync(list_features())
        except grpc.RpcError as err:
            streams.progress(f"streaming: registry unavailable ({err.code().name}); retrying")
        streams.check()
        if heartbeat is not None:
            heartbeat.touch()
        stop.wait(poll)

"""One pipeline run: plan, compute per source, materialize, report."""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from opentelemetry import trace
from py4j.protocol import Py4JError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession

from featurestore.registry.v1 import feature_pb2 as pb
from jobs import _transform
from jobs._freshness import note_freshness
from jobs._guard import disallowed_expressions
from jobs._metrics import PipelineMetrics
from jobs._plan import FeatureSpec, SourcePlan, plan
from jobs._session import DEFAULT_NAMESPACE, read_table, source_problem
from jobs._sink import RESULT_SCHEMA, SinkConfig, partition_writer

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FRESHNESS_WRITER = "batch_pipeline"
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunConfig:
    """What one run computes and where it writes."""

    as_of: datetime
    lookback: timedelta
    redis_url: str
    redis_cluster: bool
    postgres_dsn: str
    online_ttl: int = 0
    dry_run: bool = False
    progress_every: float = 10.0  # seconds between progress lines while a source is written
    source_namespaces: tuple[str, ...] = (DEFAULT_NAMESPACE,)  # catalog or catalog.schema source tables may be in


@dataclass(slots=True)
class RunReport:
    """What a run did: written counts, and the features that failed with why."""

    features: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    values: int = 0
    entities: int = 0
    rows: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        status = "ok" if not self.failed else f"{len(self.failed)} feature(s) FAILED"
        return (
            f"batch pipeline {status}: {len(self.features)} features x {self.entities} entities -> "
            f"{self.values} values written, {self.rows} source rows read, {self.seconds:.1f}s"
        )


def worker_error(err: Exception) -> str:
    """The Python exception a Spark worker raised (the last line of its traceback), else the first line."""
    lines = [line.strip() for line in str(err).splitlines()]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    return raised[-1] if raised else _one_message(err)


def _one_message(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _checked(
    windowed: DataFrame, source: SourcePlan, ts_column: str, config: RunConfig, report: RunReport
) -> list[FeatureSpec]:
    """The features of `source` whose computation Spark accepts; the others go to report.failed."""
    good = []
    for spec in source.features:
        try:  # analysis is eager: unknown columns, functions and bad syntax fail here
            df = _transform.transform_features(windowed, source.entity_column, ts_column, [spec], config.as_of)
        except (PySparkException, ValueError) as err:
            report.failed[spec.name] = _one_message(err)
            _log.debug("%s: %s", spec.name, err)
            continue
        refused = disallowed_expressions(df)
        if refused:
            report.failed[spec.name] = (
                f"refused: its computation uses {', '.join(refused)}, which the pipeline does not run"
            )
            continue
        good.append(spec)
    return good


@dataclass(frozen=True, slots=True)
class _Computation:
    df: DataFrame
    specs: list[FeatureSpec]
    sql: str  # the same computation as Spark SQL, for --dry-run


def _compute(spark: SparkSession, source: SourcePlan, config: RunConfig, report: RunReport) -> _Computation | None:
    try:
        problem = source_problem(spark, source.table, config.source_namespaces, config.postgres_dsn)
        if problem:
            raise ValueError(problem)
        table = read_table(spark, source.table)
        ts_column = _transform.timestamp_column(table, source.timestamp_column)
        windowed = _transform.transform_window(table, ts_column, config.as_of, config.lookback)
        if source.entity_column not in table.columns:
            raise ValueError(f"no entity column {source.entity_column!r} in {source.table}")
    except (PySparkException, ValueError) as err:
        for spec in source.features:
            report.failed[spec.name] = f"source {source.table}: {_one_message(err)}"
        _log.debug("source %s: %s", source.table, err)
        return None
    specs = _checked(windowed, source, ts_column, config, report)
    if not specs:
        return None
    df = _transform.transform_features(windowed, source.entity_column, ts_column, specs, config.as_of)
    args = (source.table, source.entity_column, ts_column, specs, config.as_of, config.lookback)
    return _Computation(df, specs, _transform.describe_query(*args))


def _materialize(df: DataFrame, entity_type: str, specs: Sequence[FeatureSpec], config: RunConfig) -> tuple[int, ...]:
    sink = SinkConfig(
        redis_url=config.redis_url,
        redis_cluster=config.redis_cluster,
        postgres_dsn=config.postgres_dsn,
        entity_type=entity_type,
        features=tuple((s.name, s.value_kind) for s in specs),
        event_micros=(config.as_of - _EPOCH) // timedelta(microseconds=1),  # exact, unlike a float
        online_ttl=config.online_ttl,
    )
    results = df.mapInArrow(partition_writer(sink), RESULT_SCHEMA).collect()
    return tuple(sum(r[i] for r in results) for i in range(3))


def describe(df: DataFrame) -> str:
    """The optimized logical plan Spark will run (for --dry-run)."""
    plan_text: str = df._jdf.queryExecution().optimizedPlan().toString()
    return plan_text


@contextlib.contextmanager
def _heartbeat(spark: SparkSession, say: Callable[[str], None], every: float) -> Iterator[None]:
    """Report the running stages' task counts every `every` seconds while the body runs."""
    done = threading.Event()

    def beat() -> None:
        tracker = spark.sparkContext.statusTracker()
        while not done.wait(every):
            stages = [tracker.getStageInfo(i) for i in tracker.getActiveStageIds()]
            parts = [f"stage {s.stageId}: {s.numCompletedTasks}/{s.numTasks} tasks" for s in stages if s]
            if parts:
                say("running, " + ", ".join(parts))

    thread = threading.Thread(target=beat, name="pipeline-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _run_source(
    spark: SparkSession, source: SourcePlan, config: RunConfig, report: RunReport, say: Callable[[str], None]
) -> None:
    computed = _compute(spark, source, config, report)
    if computed is None:
        return
    names = [s.name for s in computed.specs]
    if config.dry_run:
        say(f"{computed.sql}\n-- Spark's optimized plan:\n{describe(computed.df)}")
        report.features += names
        return
    try:
        with _heartbeat(spark, say, config.progress_every):
            values, entities, rows = _materialize(computed.df, source.entity_type, computed.specs, config)
    except (PySparkException, Py4JError) as err:
        report.failed |= {name: f"writing failed: {worker_error(err)}" for name in names}
        return
    report.features += names
    report.values += values
    report.entities += entities
    report.rows += rows
    say(f"{values} values for {entities} entities from {rows} rows")


def _prefixed(progress: Callable[[str], None], prefix: str, line: str) -> None:
    progress(f"{prefix} {line}")


def run(
    spark: SparkSession,
    features: Sequence[pb.Feature],
    config: RunConfig,
    progress: Callable[[str], None] = print,
    metrics: PipelineMetrics | None = None,
    tracer: trace.Tracer | None = None,
) -> RunReport:
    """Compute `features` as of config.as_of and write them (unless dry_run).

    The features written are recorded in the freshness summary (newest event time: the
    as-of time); `metrics`, if given, get the run's start, end and counts. The run is one
    trace (OpenTelemetry's global tracer unless `tracer` is given; a no-op unless tracing
    was configured) with a span per source.
    """
    started = time.monotonic()
    if metrics is not None:
        metrics.started()
    tracer = tracer or trace.get_tracer("featurestore.pipeline")
    attributes: dict[str, str | int | bool] = {
        "as_of": config.as_of.isoformat(),
        "features": len(features),
        "dry_run": config.dry_run,
    }
    with tracer.start_as_current_span("batch pipeline run", attributes=attributes) as run_span:
        sources, failed = plan(features)
        report = RunReport(failed=dict(failed))
        for n, source in enumerate(sources, 1):
            say = functools.partial(_prefixed, progress, f"[{n}/{len(sources)}] {source.table}:")
            say(", ".join(s.name for s in source.features))
            with tracer.start_as_current_span(f"source {source.table}") as span:
                before = (report.rows, report.values, len(report.failed))
                _run_source(spark, source, config, report, say)
                span.set_attribute("rows_read", report.rows - before[0])
                span.set_attribute("values_written", report.values - before[1])
                span.set_attribute("failed_features", len(report.failed) - before[2])
        for name, why in report.failed.items():
            progress(f"FAILED {name}: {why}")
        if report.features and not config.dry_run:
            _record_freshness(config, {f.name: f.entity_type for f in features}, report.features, progress)
        run_span.set_attribute("values_written", report.values)
        run_span.set_attribute("failed_features", len(report.failed))
    report.seconds = time.monotonic() - started
    if metrics is not None:
        metrics.finished(rows_read=report.rows, values_written=report.values, failed_features=len(report.failed))
    return report


def _record_freshness(
    config: RunConfig, entity_types: dict[str, str], written: Sequence[str], progress: Callable[[str], None]
) -> None:
    """Note in the freshness summary that `written` now hold values as of config.as_of (a failure is reported)."""
    newest = {name: (config.as_of, entity_types[name]) for name in written}
    if problem := note_freshness(config.postgres_dsn, newest, FRESHNESS_WRITER):
        progress(f"freshness summary not updated: {problem}")

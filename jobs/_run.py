"""One pipeline run: plan, compute per source, materialize, report."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from py4j.protocol import Py4JError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession

from featurestore.registry.v1 import feature_pb2 as pb
from jobs import _transform
from jobs._plan import FeatureSpec, SourcePlan, plan
from jobs._session import read_table
from jobs._sink import RESULT_SCHEMA, SinkConfig, partition_writer

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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


def _worker_error(err: Exception) -> str:
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
            _transform.transform_features(windowed, source.entity_column, ts_column, [spec], config.as_of)
        except (PySparkException, ValueError) as err:
            report.failed[spec.name] = _one_message(err)
            continue
        good.append(spec)
    return good


def _compute(spark: SparkSession, source: SourcePlan, config: RunConfig, report: RunReport) -> DataFrame | None:
    try:
        table = read_table(spark, source.table)
        ts_column = _transform.timestamp_column(table, source.timestamp_column)
        windowed = _transform.transform_window(table, ts_column, config.as_of, config.lookback)
        if source.entity_column not in table.columns:
            raise ValueError(f"no entity column {source.entity_column!r} in {source.table}")
    except (PySparkException, ValueError) as err:
        for spec in source.features:
            report.failed[spec.name] = f"source {source.table}: {_one_message(err)}"
        return None
    specs = _checked(windowed, source, ts_column, config, report)
    if not specs:
        return None
    return _transform.transform_features(windowed, source.entity_column, ts_column, specs, config.as_of)


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


def run(
    spark: SparkSession,
    features: Sequence[pb.Feature],
    config: RunConfig,
    progress: Callable[[str], None] = print,
) -> RunReport:
    """Compute `features` as of config.as_of and write them (unless dry_run)."""
    started = time.monotonic()
    sources, failed = plan(features)
    report = RunReport(failed=dict(failed))
    for n, source in enumerate(sources, 1):
        names = ", ".join(s.name for s in source.features)
        progress(f"[{n}/{len(sources)}] {source.table}: {names}")
        df = _compute(spark, source, config, report)
        specs = [s for s in source.features if s.name not in report.failed]
        if df is None or not specs:
            continue
        if config.dry_run:
            progress(describe(df))
            report.features += [s.name for s in specs]
            continue
        try:
            values, entities, rows = _materialize(df, source.entity_type, specs, config)
        except (PySparkException, Py4JError) as err:
            report.failed |= {s.name: f"writing failed: {_worker_error(err)}" for s in specs}
            continue
        report.features += [s.name for s in specs]
        report.values += values
        report.entities += entities
        report.rows += rows
        progress(f"[{n}/{len(sources)}] {source.table}: {values} values for {entities} entities from {rows} rows")
    for name, why in report.failed.items():
        progress(f"FAILED {name}: {why}")
    report.seconds = time.monotonic() - started
    return report

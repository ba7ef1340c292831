"""Bulk ingest of precomputed features: a table of (entity, event time, feature columns) -> both stores.

The table's columns are named after registered features of one entity type; each
column's Spark type must hold that feature's value type (VALUE_COLUMN_TYPES). The rows
are checked as a whole before anything is written (entity ids as WriteFeatures checks
them, event times within the server's window, no null list items, embedding items that a
32-bit float holds); then every row goes
to history and each entity's newest value of each feature online, through the batch
pipeline's sink (jobs._sink, server.core.WriteBatch): the same bytes WriteFeatures
stores for the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from featurestore.registry.v1 import feature_pb2 as pb
from jobs._session import read_table, source_problem
from jobs._sink import ENTITY_COLUMN, EVENT_MICROS_COLUMN, RESULT_SCHEMA, SinkConfig, partition_writer
from server.core import ENTITY_ID_MAX_BYTES, VALUE_KINDS

_INTEGRAL = ("tinyint", "smallint", "int", "bigint")
# Spark column types (simpleString) each value type is read from, and the type it is cast to.
VALUE_COLUMN_TYPES: dict[str, tuple[tuple[str, ...], str]] = {
    "FLOAT": (("double", "float"), "double"),
    "INT64": (_INTEGRAL, "bigint"),
    "STRING": (("string",), "string"),
    "BOOL": (("boolean",), "boolean"),
    "BYTES": (("binary",), "binary"),
    "TIMESTAMP": (("timestamp", "timestamp_ntz", "date"), "timestamp"),
    "FLOAT_LIST": (("array<double>", "array<float>"), "array<double>"),
    "INT64_LIST": (tuple(f"array<{t}>" for t in _INTEGRAL), "array<bigint>"),
    "STRING_LIST": (("array<string>",), "array<string>"),
    "BOOL_LIST": (("array<boolean>",), "array<boolean>"),
    "EMBEDDING": (("array<float>", "array<double>"), "array<double>"),
}
_ENTITY_TYPES = ("string", *_INTEGRAL)
_FLOAT32_MAX = 3.4028234663852886e38
_TIME_TYPES = ("timestamp", "timestamp_ntz", "date")


class IngestError(ValueError):
    """A table that cannot be ingested as given; the message names every problem found."""


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """What one ingest reads and where it writes."""

    entity_type: str
    entity_column: str
    event_time_column: str
    redis_url: str
    redis_cluster: bool
    postgres_dsn: str
    features: tuple[str, ...] = ()  # feature columns; () = every column but the entity and event-time ones
    online_ttl: int = 0
    max_clock_skew: float = 300.0  # the server's window for event times (Settings)
    min_event_time: datetime = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class IngestReport:
    values: int  # values written to history (every non-null cell)
    rows: int


def read_source(
    spark: SparkSession, *, parquet: str = "", table: str = "", namespaces: Sequence[str], store_dsn: str
) -> DataFrame:
    """A Parquet file or folder, or a catalog table from an allowed namespace (never the store's own database)."""
    if parquet:
        return spark.read.parquet(parquet)
    problem = source_problem(spark, table, namespaces, store_dsn)
    if problem:
        raise IngestError(problem)
    return read_table(spark, table)


def feature_columns(df: DataFrame, config: IngestConfig, registered: Mapping[str, pb.Feature]) -> list[tuple[str, str]]:
    """(feature name, value type) per feature column, checked against the registry; IngestError names each problem."""
    types = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    problems = []
    key_columns: tuple[tuple[str, tuple[str, ...]], ...] = (
        (config.entity_column, _ENTITY_TYPES),
        (config.event_time_column, _TIME_TYPES),
    )
    for column, allowed in key_columns:
        if column not in types:
            problems.append(f"no column {column!r} in the table (columns: {', '.join(types)})")
        elif types[column] not in allowed:
            problems.append(f"column {column!r} is {types[column]}; it must be one of {', '.join(allowed)}")
    names = list(config.features) or [c for c in types if c not in (config.entity_column, config.event_time_column)]
    if not names:
        problems.append("no feature columns: the table holds only the entity and event-time columns")
    out = []
    for name in names:
        feature = registered.get(name)
        if name not in types:
            problems.append(f"no column {name!r} in the table")
        elif feature is None or feature.entity_type != config.entity_type:
            where = f" (it is a feature of {feature.entity_type!r})" if feature is not None else ""
            problems.append(f"column {name!r} is not a registered feature of entity type {config.entity_type!r}{where}")
        else:
            value_type = pb.ValueType.Name(feature.value_type)
            readable = VALUE_COLUMN_TYPES.get(value_type, ((), ""))[0]
            if types[name] not in readable:
                want = ", ".join(readable) or "nothing a table holds"
                problems.append(f"column {name!r} is {types[name]}, but feature {name!r} is {value_type}: use {want}")
            else:
                out.append((name, value_type))
    if problems:
        raise IngestError("; ".join(problems))
    return out


def transform_ingest(
    df: DataFrame, entity_column: str, event_time_column: str, features: Sequence[tuple[str, str]]
) -> DataFrame:
    """The sink's input: `entity_id` (string), `__event_micros` (the event time, µs since the epoch) and each
    feature column cast to the type its value type is stored from."""
    return df.select(
        F.col(entity_column).cast("string").alias(ENTITY_COLUMN),
        F.unix_micros(F.col(event_time_column).cast("timestamp")).alias(EVENT_MICROS_COLUMN),
        *(F.col(name).cast(VALUE_COLUMN_TYPES[value_type][1]).alias(name) for name, value_type in features),
    )


def _problems(features: Sequence[tuple[str, str]], config: IngestConfig, now: datetime) -> list[Column]:
    """(description, condition) of every way a row can be refused, as named count columns."""
    entity, micros = F.col(ENTITY_COLUMN), F.col(EVENT_MICROS_COLUMN)
    latest = int((now + timedelta(seconds=config.max_clock_skew)).timestamp()) * 1_000_000 + 999_999
    earliest = (config.min_event_time - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    checks: dict[str, Column] = {
        "a null entity id": entity.isNull(),
        "an empty entity id": entity == F.lit(""),
        f"an entity id over {ENTITY_ID_MAX_BYTES} bytes": F.octet_length(entity) > ENTITY_ID_MAX_BYTES,
        "an entity id with a NUL character": F.instr(entity, "\x00") > 0,
        "a null event time": micros.isNull(),
        f"an event time after {datetime.fromtimestamp(latest // 1_000_000, UTC).isoformat()} (now + clock skew)": micros
        > latest,
        f"an event time before {config.min_event_time.isoformat()}, the earliest the store accepts": micros < earliest,
    }
    for name, value_type in features:
        if value_type.endswith("_LIST") or value_type == "EMBEDDING":
            checks[f"a null item in list column {name!r}"] = F.exists(F.col(name), lambda x: x.isNull())
        if value_type == "EMBEDDING":  # stored as 32-bit floats: a finite double beyond them would become infinity
            checks[f"an item beyond a 32-bit float's range in embedding column {name!r}"] = F.exists(
                F.col(name),
                lambda x: (F.abs(x) > F.lit(_FLOAT32_MAX)) & (F.abs(x) != F.lit(float("inf"))) & ~F.isnan(x),
            )  # (Spark orders NaN above every number)
    return [F.sum(F.coalesce(condition, F.lit(False)).cast("int")).alias(what) for what, condition in checks.items()]


def check_rows(prepared: DataFrame, features: Sequence[tuple[str, str]], config: IngestConfig, now: datetime) -> None:
    """IngestError counting each kind of bad row (one pass over the table), before anything is written."""
    counts = prepared.agg(*_problems(features, config, now)).first()
    assert counts is not None
    found = [f"{n} rows with {what}" for what, n in counts.asDict().items() if n]
    if found:
        raise IngestError("refused, nothing written: " + "; ".join(found))


def bulk_ingest(
    df: DataFrame, config: IngestConfig, registered: Mapping[str, pb.Feature], now: datetime | None = None
) -> IngestReport:
    """Check `df` and write it: every row to history, each entity's newest values online."""
    features = feature_columns(df, config, registered)
    prepared = transform_ingest(df, config.entity_column, config.event_time_column, features)
    check_rows(prepared, features, config, now or datetime.now(UTC))
    sink = SinkConfig(
        redis_url=config.redis_url,
        redis_cluster=config.redis_cluster,
        postgres_dsn=config.postgres_dsn,
        entity_type=config.entity_type,
        features=tuple((name, VALUE_KINDS[value_type]) for name, value_type in features),
        event_micros=None,
        online_ttl=config.online_ttl,
        latest_online=True,
    )
    results = prepared.mapInArrow(partition_writer(sink), RESULT_SCHEMA).collect()
    return IngestReport(values=sum(r[0] for r in results), rows=sum(r[2] for r in results))

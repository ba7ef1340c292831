"""The pipeline's computations as pure DataFrame -> DataFrame functions.

Each takes the rows it needs and returns a new DataFrame; none reads or
writes anything, so the tests run them on small frames and compare the
actual output.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs._asof import pin_clock, timestamp_literal
from jobs._plan import VALUE_TYPES, FeatureSpec

ENTITY_ID = "entity_id"
ROWS = "__rows"  # the number of source rows behind each entity's values
_MICROS_PER_DAY = 86_400_000_000


def timestamp_column(df: DataFrame, configured: str) -> str:
    """The configured event-time column, else the first timestamp or date column of `df`."""
    if configured:
        return configured
    for field in df.schema.fields:
        if isinstance(field.dataType, T.TimestampType | T.TimestampNTZType | T.DateType):
            return field.name
    raise ValueError(f"no timestamp column among {', '.join(df.columns)}: set source_config.timestamp_column")


def transform_window(df: DataFrame, ts_column: str, as_of: datetime, lookback: timedelta) -> DataFrame:
    """The rows with as_of - lookback <= event time < as_of: only data from before the as-of time."""
    ts = F.col(ts_column).cast("timestamp")
    return df.where((ts >= F.lit(as_of - lookback)) & (ts < F.lit(as_of)))


def _condition(spec: FeatureSpec, as_of: datetime) -> Column | None:
    predicates = [F.expr(pin_clock(text, as_of)) for text in spec.filters]
    if not predicates:
        return None
    # A NULL predicate keeps nothing, as in a WHERE clause.
    return F.coalesce(reduce(lambda a, b: a & b, predicates), F.lit(False))


def _days_before(as_of: datetime, ts: Column) -> Column:
    return F.floor((F.unix_micros(F.lit(as_of)) - F.unix_micros(ts.cast("timestamp"))) / _MICROS_PER_DAY)


def _aggregate(function: str, x: Column, ts: Column, as_of: datetime) -> Column:
    simple = {"avg": F.avg, "mean": F.avg, "min": F.min, "max": F.max, "stddev": F.stddev_samp}
    if function in simple:
        return simple[function](x)
    if function == "sum":
        return F.coalesce(F.sum(x), F.lit(0))
    if function == "count":
        return F.count(x)
    if function == "count_distinct":
        return F.count_distinct(x)
    if function in ("first", "last"):
        return (F.min_by if function == "first" else F.max_by)(x, ts)
    if function in ("days_since_last", "days_since_first"):
        return _days_before(as_of, (F.max if function == "days_since_last" else F.min)(ts))
    raise ValueError(f"unknown aggregation function {function!r}")


def aggregate_column(spec: FeatureSpec, ts_column: str, as_of: datetime) -> Column:
    """The aggregate of one feature over an entity's rows (raises when an expression does not parse)."""
    condition = _condition(spec, as_of)
    x = F.expr(pin_clock(spec.column, as_of)) if spec.column else F.lit(1)
    ts = F.col(ts_column)
    if condition is not None:
        x, ts = F.when(condition, x), F.when(condition, ts)
    return _aggregate(spec.function, x, ts, as_of)


def _finish(df: DataFrame, spec: FeatureSpec, as_of: datetime) -> DataFrame:
    """The post-aggregation expressions (over `value`) and the cast to the feature's type, in place."""
    if spec.post:
        if "value" in df.columns:
            raise ValueError(f"{spec.name}: expression steps need no other feature named 'value' on the same source")
        df = df.withColumnRenamed(spec.name, "value")
        for expression in spec.post:
            df = df.withColumn("value", F.expr(pin_clock(expression, as_of)))
        df = df.withColumnRenamed("value", spec.name)
    return df.withColumn(spec.name, F.col(spec.name).cast(VALUE_TYPES[spec.value_type]))


def transform_features(
    df: DataFrame, entity_column: str, ts_column: str, specs: Sequence[FeatureSpec], as_of: datetime
) -> DataFrame:
    """One row per entity: `entity_id` (a string), each feature's typed value, and `__rows`.

    Rows without an entity id are ignored. A feature is NULL where its entity has
    no value (e.g. `avg` when no row passes the feature's filters).
    """
    rows = df.where(F.col(entity_column).isNotNull())
    aggregates = [aggregate_column(spec, ts_column, as_of).alias(spec.name) for spec in specs]
    out = rows.groupBy(F.col(entity_column).cast("string").alias(ENTITY_ID)).agg(
        *aggregates, F.count(F.lit(1)).alias(ROWS)
    )
    for spec in specs:
        out = _finish(out, spec, as_of)
    return out


def _quoted(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


_SQL_AGGREGATES = {
    "sum": "coalesce(sum({x}), 0)",
    "avg": "avg({x})",
    "mean": "avg({x})",
    "count": "count({x})",
    "count_distinct": "count(DISTINCT {x})",
    "min": "min({x})",
    "max": "max({x})",
    "stddev": "stddev_samp({x})",
    "first": "min_by({x}, {ts})",
    "last": "max_by({x}, {ts})",
    "days_since_last": "floor(({as_of} - unix_micros(CAST(max({ts}) AS TIMESTAMP))) / {day})",
    "days_since_first": "floor(({as_of} - unix_micros(CAST(min({ts}) AS TIMESTAMP))) / {day})",
}


def _sql_aggregate(spec: FeatureSpec, ts_column: str, as_of: datetime) -> str:
    x, ts = f"({pin_clock(spec.column, as_of)})" if spec.column else "1", _quoted(ts_column)
    if spec.filters:
        condition = "coalesce(" + " AND ".join(f"({pin_clock(f, as_of)})" for f in spec.filters) + ", false)"
        x, ts = f"CASE WHEN {condition} THEN {x} END", f"CASE WHEN {condition} THEN {ts} END"
    as_of_micros = f"unix_micros({timestamp_literal(as_of)})"
    return _SQL_AGGREGATES[spec.function].format(x=x, ts=ts, as_of=as_of_micros, day=_MICROS_PER_DAY)


def describe_query(
    table: str, entity_column: str, ts_column: str, specs: Sequence[FeatureSpec], as_of: datetime, lookback: timedelta
) -> str:
    """The computation as Spark SQL, for people (--dry-run). It computes what transform_features
    does (a test runs both); expression steps after the aggregation are shown as comments."""
    entity, ts = _quoted(entity_column), _quoted(ts_column)
    lines = [f"CAST({entity} AS STRING) AS {ENTITY_ID}"]
    for spec in specs:
        then = "".join(f" -- then value := {pin_clock(expression, as_of)}" for expression in spec.post)
        value = f"CAST({_sql_aggregate(spec, ts_column, as_of)} AS {VALUE_TYPES[spec.value_type]})"
        lines[-1] += ","
        lines.append(f"{value} AS {_quoted(spec.name)}{then}")
    window = f"{timestamp_literal(as_of - lookback)} <= {ts} AND {ts} < {timestamp_literal(as_of)}"
    return (
        "SELECT "
        + "\n       ".join(lines)
        + f"\nFROM {table}\nWHERE {window} AND {entity} IS NOT NULL\nGROUP BY {entity}"
    )

"""Windowed aggregations from time tiles: partial aggregates per entity per minute, combined per window.

A micro-batch's events become one partial aggregate per (entity, tile, feature)
(`transform_tiles`): the count of values, their sum, min and max, the latest
(event time, value) and the set of distinct values, as each function needs.
The tiles are merged into the tile store (one Valkey hash per entity, beside the
online values; `merge_partition`), and the tiles of the entities the batch
touched are combined into every feature's window (`transform_windows`), so a
24 h window costs at most 1,440 tiles per entity, never a rescan of 24 h of
events. Windows are tile-aligned: a value as of stream time A covers the events
from the start of the tile `window / tile - 1` tiles before A's tile up to A.

Exactly once: a merge is skipped for an entity whose hash already records this
batch id (a replayed batch), and the merged tiles are written in one MULTI per
entity, so a batch applies to every entity once whatever is killed when.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import reduce
from typing import Any

import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs._asof import pin_clock
from jobs._plan import VALUE_TYPES
from jobs._stream_plan import StreamFeature, StreamPlan
from server import core

ENTITY_ID, ROWS = "entity_id", "__rows"
TILE_MICROS = core.TILE_SECONDS * 1_000_000
TILE_SCHEMA = pa.schema(
    [
        ("entity_id", pa.string()),
        ("tile", pa.int64()),
        ("feature", pa.string()),
        ("n", pa.int64()),
        ("s", pa.float64()),
        ("lo", pa.float64()),
        ("hi", pa.float64()),
        ("lt", pa.int64()),
        ("lv", pa.string()),
        ("d", pa.list_(pa.string())),
    ]
)
TILE_DDL = (
    "entity_id string, tile bigint, feature string, n bigint, s double, lo double, hi double, "
    "lt bigint, lv string, d array<string>"
)
_NUMERIC = ("count", "sum", "avg", "min", "max")
BATCH_FIELD = b"__batch"


def tile_of(micros: int) -> int:
    return micros // TILE_MICROS


def _condition(feature: StreamFeature, as_of: datetime) -> Column:
    predicates = [F.expr(pin_clock(text, as_of)) for text in feature.filters]
    # A NULL predicate keeps nothing, as in a WHERE clause.
    return F.coalesce(reduce(lambda a, b: a & b, predicates), F.lit(False)) if predicates else F.lit(True)


def feature_inputs(feature: StreamFeature, as_of: datetime) -> tuple[Column, Column, Column]:
    """(condition, numeric input, string input) of one feature over the event rows."""
    x = F.expr(pin_clock(feature.column, as_of)) if feature.column else F.lit(1)
    numeric, text = F.lit(None).cast("double"), F.lit(None).cast("string")
    if feature.function == "count":
        numeric = F.when(x.isNotNull(), F.lit(1.0))
    elif feature.function in _NUMERIC:
        numeric = x.cast("double")
    else:
        text = x.cast("string")
    return _condition(feature, as_of), numeric, text


def transform_tiles(events: DataFrame, plan: StreamPlan, as_of: datetime) -> DataFrame:
    """The partial aggregates of a batch's events: one row per (entity_id, tile, feature)."""
    entity, ts = F.col(plan.schema.entity).cast("string"), F.unix_micros(F.col(plan.schema.time))
    parts = []
    for feature in plan.features:
        condition, numeric, text = feature_inputs(feature, as_of)
        parts.append(
            events.where(condition & entity.isNotNull()).select(
                entity.alias("entity_id"),
                F.floor(ts / TILE_MICROS).cast("bigint").alias("tile"),
                F.lit(feature.name).alias("feature"),
                numeric.alias("x"),
                text.alias("t"),
                ts.alias("ts"),
            )
        )
    rows = reduce(DataFrame.unionByName, parts)
    text_ts = F.when(F.col("t").isNotNull(), F.col("ts"))
    return rows.groupBy("entity_id", "tile", "feature").agg(
        (F.count("x") + F.count("t")).alias("n"),
        F.sum("x").alias("s"),
        F.min("x").alias("lo"),
        F.max("x").alias("hi"),
        F.max(text_ts).alias("lt"),
        F.max_by("t", F.when(F.col("t").isNotNull(), F.struct(F.col("ts"), F.col("t")))).alias("lv"),
        F.collect_set("t").alias("d"),
    )


def transform_windows(tiles: DataFrame, plan: StreamPlan, as_of_micros: int) -> DataFrame:
    """Each entity's features over their windows ending at `as_of_micros`, from its tiles.

    One row per entity: `entity_id`, `__rows` (0: values of windows, not of rows), each feature typed.
    """
    last = tile_of(as_of_micros)
    aggregates = []
    for feature in plan.features:
        mine = (F.col("feature") == feature.name) & (F.col("tile") > last - feature.window_tiles)
        mine = mine & (F.col("tile") <= last)

        def pick(name: str, mine: Column = mine) -> Column:
            return F.when(mine, F.col(name))

        function = feature.function
        if function in ("count", "sum"):
            value = F.coalesce(F.sum(pick("n" if function == "count" else "s")), F.lit(0))
        elif function == "avg":
            value = F.try_divide(F.sum(pick("s")), F.sum(pick("n")).cast("double"))
        elif function in ("min", "max"):
            value = (F.min if function == "min" else F.max)(pick("lo" if function == "min" else "hi"))
        elif function == "last":
            value = F.max_by(pick("lv"), F.when(mine & F.col("lv").isNotNull(), F.struct("lt", "lv")))
        else:  # count_distinct
            value = F.size(F.array_distinct(F.flatten(F.collect_list(pick("d")))))
        aggregates.append(value.alias(feature.name))
    return tiles.groupBy(ENTITY_ID).agg(*aggregates, F.lit(0).cast("bigint").alias(ROWS))


def finish(df: DataFrame, plan: StreamPlan, as_of: datetime) -> DataFrame:
    """Each feature's expression steps over `value`, then the cast to its value type."""
    for feature in plan.features:
        if feature.post:
            df = df.withColumnRenamed(feature.name, "value")
            for expression in feature.post:
                df = df.withColumn("value", F.expr(pin_clock(expression, as_of)))
            df = df.withColumnRenamed("value", feature.name)
        df = df.withColumn(feature.name, F.col(feature.name).cast(VALUE_TYPES[feature.value_type]))
    return df


# --- the tile store, on the executors ----------------------------------------------------------


def tile_key(query_id: str, entity_id: str) -> bytes:
    return f"fs:tiles:{query_id}:{entity_id}".encode()


Partial = list[Any]  # [n, s, lo, hi, lt, lv, d]


def _lesser(a: Any, b: Any, pick: Callable[[Any, Any], Any]) -> Any:
    return b if a is None else a if b is None else pick(a, b)


def merge(a: Partial, b: Partial) -> Partial:
    """Two partial aggregates of the same tile and feature as one."""
    n = a[0] + b[0]
    s = _lesser(a[1], b[1], lambda x, y: x + y)
    lo, hi = _lesser(a[2], b[2], min), _lesser(a[3], b[3], max)
    latest = max(((a[4], a[5]), (b[4], b[5])), key=lambda p: (p[0] is not None, p[0] or 0, p[1] or ""))
    d = sorted(set(a[6] or ()) | set(b[6] or ())) if a[6] is not None or b[6] is not None else None
    return [n, s, lo, hi, latest[0], latest[1], d]


def _rows(entity_id: str, fields: dict[bytes, bytes], oldest: int) -> Iterator[tuple[Any, ...]]:
    for name, raw in fields.items():
        if name == BATCH_FIELD:
            continue
        tile_text, _, feature = name.decode().partition(":")
        if int(tile_text) >= oldest:
            yield (entity_id, int(tile_text), feature, *json.loads(raw))


def _merged(
    stored: dict[bytes, bytes], partials: list[tuple[Any, ...]], oldest: int
) -> tuple[dict[bytes, bytes], list[bytes]]:
    """(fields to set, fields to delete) of one entity's hash."""
    fields = {k: v for k, v in stored.items() if k != BATCH_FIELD}
    for _, tile, feature, *partial in partials:
        name = f"{tile}:{feature}".encode()
        old = fields.get(name)
        fields[name] = json.dumps(merge(json.loads(old), list(partial)) if old else list(partial)).encode()
    gone = [k for k in fields if int(k.split(b":", 1)[0]) < oldest]
    for k in gone:
        del fields[k]
    return fields, gone


def merge_partition(
    url: str, query_id: str, batch_id: int, oldest: int
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The mapInArrow function: merge a partition's partial tiles into the store (once per batch id) and
    yield every tile (from `oldest` on) of the entities it touched, after the merge."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import redis

        by_entity: dict[str, list[tuple[Any, ...]]] = {}
        for batch in batches:
            for row in zip(*(batch.column(i).to_pylist() for i in range(batch.num_columns)), strict=True):
                by_entity.setdefault(row[0], []).append(row)
        client = redis.Redis.from_url(url, socket_timeout=60)
        out: list[tuple[Any, ...]] = []
        try:
            entities = list(by_entity)
            for start in range(0, len(entities), 500):
                chunk = entities[start : start + 500]
                read = client.pipeline(transaction=False)
                for entity_id in chunk:
                    read.hgetall(tile_key(query_id, entity_id))
                write = client.pipeline(transaction=True)  # one MULTI/EXEC: the chunk merges whole or not at all
                for entity_id, stored in zip(chunk, read.execute(), strict=True):
                    if int(stored.get(BATCH_FIELD, b"-1")) >= batch_id:  # this batch was merged: a replay
                        out += _rows(entity_id, stored, oldest)
                        continue
                    fields, gone = _merged(stored, by_entity[entity_id], oldest)
                    key = tile_key(query_id, entity_id)
                    if gone:
                        write.hdel(key, *gone)
                    write.hset(key, mapping={**fields, BATCH_FIELD: str(batch_id).encode()})  # type: ignore[dict-item]
                    out += _rows(entity_id, fields, oldest)
                write.execute()
        finally:
            client.close()
        columns: list[Any] = list(zip(*out, strict=True)) if out else [[] for _ in TILE_SCHEMA]
        yield pa.RecordBatch.from_arrays(
            [pa.array(list(c), type=f.type) for c, f in zip(columns, TILE_SCHEMA, strict=True)], schema=TILE_SCHEMA
        )

    return run

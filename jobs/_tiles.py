"""Windowed aggregations from time tiles: partial aggregates per entity per minute, combined per window.

Spark evaluates each feature's (allow-listed) expressions over a micro-batch's
events (`transform_inputs`: its filter as a boolean, its aggregated column) and
sends each entity's rows to one partition. There (`window_partition`), the rows
become one partial aggregate per (tile = minute of event time, feature): the
count of values, their sum, min and max, the latest (event time, value) and
the set of distinct values, as the function needs. The partials are merged
into the tile store (one Valkey hash per entity, beside the online values), and
the entity's tiles are combined into each feature's window as of the stream
time A, so a 24 h window costs at most 1,440 tiles per entity, never a rescan
of 24 h of events. Windows are tile-aligned: a value as of A covers the events
from the start of the tile `window / tile - 1` tiles before A's tile up to A.

Exactly once: a merge is skipped for an entity whose hash already records this
batch id (a replayed batch), and a chunk of entities' hashes is written in one
MULTI/EXEC, so a batch applies to every entity once whatever is killed when.
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

ENTITY_ID, ROWS, TILE, TS = "entity_id", "__rows", "__tile", "__ts"
TILE_MICROS = core.TILE_SECONDS * 1_000_000
_NUMERIC = ("count", "sum", "avg", "min", "max")
BATCH_FIELD = b"__batch"
_CHUNK = 500  # entities per read pipeline and per MULTI/EXEC


def tile_of(micros: int) -> int:
    return micros // TILE_MICROS


def _condition(feature: StreamFeature, as_of: datetime) -> Column:
    predicates = [F.expr(pin_clock(text, as_of)) for text in feature.filters]
    # A NULL predicate keeps nothing, as in a WHERE clause.
    return F.coalesce(reduce(lambda a, b: a & b, predicates), F.lit(False)) if predicates else F.lit(True)


def feature_input(feature: StreamFeature, as_of: datetime) -> Column:
    """The value a feature aggregates from each event: NULL where its filters drop the event.

    A double for the numeric functions (1.0 per counted event for `count`), a string for `last`
    and `count_distinct`.
    """
    x = F.expr(pin_clock(feature.column, as_of)) if feature.column else F.lit(1)
    if feature.function == "count":
        x = F.when(x.isNotNull(), F.lit(1.0))
    else:
        x = x.cast("double" if feature.function in _NUMERIC else "string")
    return F.when(_condition(feature, as_of), x)


def _input(i: int) -> str:
    return f"__x{i}"


def transform_inputs(events: DataFrame, plan: StreamPlan, as_of: datetime) -> DataFrame:
    """Per event with an entity: `entity_id`, its tile, its event time (micros) and each feature's input."""
    ts = F.unix_micros(F.col(plan.schema.time))
    entity = F.col(plan.schema.entity).cast("string")
    inputs = [feature_input(f, as_of).alias(_input(i)) for i, f in enumerate(plan.features)]
    return events.where(entity.isNotNull()).select(
        entity.alias(ENTITY_ID), F.floor(ts / TILE_MICROS).cast("bigint").alias(TILE), ts.alias(TS), *inputs
    )


def output_ddl(plan: StreamPlan) -> str:
    """The schema of `window_partition`'s rows: each feature's raw window value."""
    kinds = {"count": "bigint", "count_distinct": "bigint", "last": "string"}
    columns = [f"`{f.name}` {kinds.get(f.function, 'double')}" for f in plan.features]
    return ", ".join([f"{ENTITY_ID} string", f"{ROWS} bigint", *columns])


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


# --- partial aggregates, the tile store and windows, on the executors -------------------------

Partial = list[Any]  # [n, s, lo, hi, lt, lv, d]: count, sum, min, max, latest (time, value), distinct values


def tile_key(query_id: str, entity_id: str) -> bytes:
    return f"fs:tiles:{query_id}:{entity_id}".encode()


def _either(a: Any, b: Any, pick: Callable[[Any, Any], Any]) -> Any:
    return b if a is None else a if b is None else pick(a, b)


def _later(a: tuple[Any, Any], b: tuple[Any, Any]) -> tuple[Any, Any]:
    """The latest (event time, value); on equal times the greatest value (deterministic)."""
    if a[0] is None:
        return b
    if b[0] is None:
        return a
    return max(a, b)


def merge(a: Partial, b: Partial) -> Partial:
    """Two partial aggregates of the same tile and feature as one."""
    latest = _later((a[4], a[5]), (b[4], b[5]))
    distinct = None if a[6] is None and b[6] is None else sorted(set(a[6] or ()) | set(b[6] or ()))
    return [
        a[0] + b[0],
        _either(a[1], b[1], lambda x, y: x + y),
        _either(a[2], b[2], min),
        _either(a[3], b[3], max),
        latest[0],
        latest[1],
        distinct,
    ]


def partial_of(function: str, ts: int, x: Any) -> Partial:
    """The partial aggregate of one value."""
    if function in _NUMERIC:
        return [1, x, x, x, None, None, None]
    if function == "last":
        return [1, None, None, None, ts, x, None]
    return [1, None, None, None, None, None, [x]]


def window_value(function: str, partials: list[Partial]) -> Any:
    """A feature's value from the partials of the tiles in its window (in tile order)."""
    if function == "count":
        return sum(p[0] for p in partials)
    if function == "sum":
        return sum((p[1] for p in partials if p[1] is not None), 0.0)
    if function == "avg":
        n = sum(p[0] for p in partials)
        return sum(p[1] for p in partials if p[1] is not None) / n if n else None
    if function in ("min", "max"):
        xs = [p[2 if function == "min" else 3] for p in partials if p[0]]
        return (min if function == "min" else max)(xs) if xs else None
    if function == "last":
        latest: tuple[Any, Any] = (None, None)
        for p in partials:
            latest = _later(latest, (p[4], p[5]))
        return latest[1]
    return len({x for p in partials for x in p[6] or ()})


class _Entity:
    """One entity's partials of a batch, by (tile, feature index)."""

    __slots__ = ("partials", "rows")

    def __init__(self) -> None:
        self.partials: dict[tuple[int, int], Partial] = {}
        self.rows = 0


def _collect(batches: Iterator[pa.RecordBatch], plan: StreamPlan) -> dict[str, _Entity]:
    functions = [f.function for f in plan.features]
    entities: dict[str, _Entity] = {}
    for batch in batches:
        columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        ids, tiles, times, inputs = columns[0], columns[1], columns[2], columns[3:]
        for row, entity_id in enumerate(ids):
            entity = entities.get(entity_id)
            if entity is None:
                entity = entities[entity_id] = _Entity()
            entity.rows += 1
            for i, function in enumerate(functions):
                x = inputs[i][row]
                if x is None:
                    continue
                one = partial_of(function, times[row], x)
                key = (tiles[row], i)
                old = entity.partials.get(key)
                entity.partials[key] = merge(old, one) if old else one
    return entities


def _merged(
    stored: dict[bytes, bytes], entity: _Entity, plan: StreamPlan, oldest: int
) -> tuple[dict[bytes, bytes], list[bytes]]:
    """(every field after the merge, fields to delete) of one entity's hash."""
    fields = {k: v for k, v in stored.items() if k != BATCH_FIELD}
    for (tile, i), partial in entity.partials.items():
        name = f"{tile}:{plan.features[i].name}".encode()
        old = fields.get(name)
        fields[name] = json.dumps(merge(json.loads(old), partial) if old else partial).encode()
    gone = [k for k in fields if int(k.split(b":", 1)[0]) < oldest]
    for k in gone:
        del fields[k]
    return fields, gone


def _windows(fields: dict[bytes, bytes], plan: StreamPlan, last: int) -> list[Any]:
    """Each feature's window value as of tile `last` from an entity's stored tiles."""
    tiles: dict[str, list[tuple[int, Partial]]] = {}
    for name, raw in fields.items():
        if name == BATCH_FIELD:
            continue
        tile, _, feature = name.decode().partition(":")
        tiles.setdefault(feature, []).append((int(tile), json.loads(raw)))
    out = []
    for f in plan.features:
        mine = sorted((t, p) for t, p in tiles.get(f.name, ()) if last - f.window_tiles < t <= last)
        out.append(window_value(f.function, [p for _, p in mine]))
    return out


def window_partition(
    url: str, query_id: str, batch_id: int, plan: StreamPlan, as_of_micros: int
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The mapInArrow function over `transform_inputs` rows, an entity's rows all in one partition:
    merge the partials into the tile store (once per batch id) and yield each entity's window values."""
    last = tile_of(as_of_micros)
    oldest = last - max(f.window_tiles for f in plan.features) + 1
    names = [f.name for f in plan.features]

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import redis

        entities = _collect(batches, plan)
        ids = list(entities)
        out: list[list[Any]] = [[] for _ in range(2 + len(names))]
        client = redis.Redis.from_url(url, socket_timeout=60)
        try:
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                read = client.pipeline(transaction=False)
                for entity_id in chunk:
                    read.hgetall(tile_key(query_id, entity_id))
                write = client.pipeline(transaction=True)  # one MULTI/EXEC: the chunk merges whole or not at all
                for entity_id, stored in zip(chunk, read.execute(), strict=True):
                    if int(stored.get(BATCH_FIELD, b"-1")) >= batch_id:  # merged before: this is a replay
                        fields = stored
                    else:
                        fields, gone = _merged(stored, entities[entity_id], plan, oldest)
                        key = tile_key(query_id, entity_id)
                        if gone:
                            write.hdel(key, *gone)
                        write.hset(key, mapping={**fields, BATCH_FIELD: str(batch_id).encode()})  # type: ignore[dict-item]
                    for column, x in zip(
                        out, [entity_id, entities[entity_id].rows, *_windows(fields, plan, last)], strict=True
                    ):
                        column.append(x)
                write.execute()
        finally:
            client.close()
        kinds = {"count": pa.int64(), "count_distinct": pa.int64(), "last": pa.string()}
        types = [pa.string(), pa.int64(), *(kinds.get(f.function, pa.float64()) for f in plan.features)]
        schema = pa.schema(list(zip([ENTITY_ID, ROWS, *names], types, strict=True)))
        yield pa.RecordBatch.from_arrays([pa.array(c, type=t) for c, t in zip(out, types, strict=True)], schema=schema)

    return run

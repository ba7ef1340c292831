"""Windowed aggregations from time tiles: partial aggregates per entity per minute, combined per window.

Spark evaluates each feature's (allow-listed) expressions over a micro-batch's
events (`transform_inputs`, or `with_inputs` in the pass that reads them: its
filter as a boolean, its aggregated column). On the driver (`merge_windows`),
the rows become one partial aggregate per (tile = minute of event time,
feature): the count of values, their sum, min and max, the latest (event time,
value) and the set of distinct values, as the function needs. The partials are
merged into the tile store (one Valkey hash per entity, beside the online
values, one field per feature holding its tiles in order), and the entity's
tiles are combined into each feature's window as of the stream time A, so a
24 h window costs at most 1,440 tiles per entity, never a rescan of 24 h of
events. Windows are tile-aligned: a value as of A covers the events from the
start of the tile `window / tile - 1` tiles before A's tile up to A.

Exactly once: a merge is skipped for an entity whose hash already records this
batch id (a replayed batch), and a chunk of entities' hashes is written in one
MULTI/EXEC, so a batch applies to every entity once whatever is killed when.
"""

from __future__ import annotations

import json
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
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


def _input_columns(plan: StreamPlan, as_of: datetime) -> list[tuple[str, Column]]:
    ts = F.unix_micros(F.col(plan.schema.time))
    return [
        (ENTITY_ID, F.col(plan.schema.entity).cast("string")),
        (TILE, F.floor(ts / TILE_MICROS).cast("bigint")),
        (TS, ts),
        *((_input(i), feature_input(f, as_of)) for i, f in enumerate(plan.features)),
    ]


def transform_inputs(events: DataFrame, plan: StreamPlan, as_of: datetime) -> DataFrame:
    """Per event with an entity: `entity_id`, its tile, its event time (micros) and each feature's input."""
    entity = F.col(plan.schema.entity).cast("string")
    return events.where(entity.isNotNull()).select(*(c.alias(name) for name, c in _input_columns(plan, as_of)))


_ADDED = "__in"  # prefix of the input columns `with_inputs` adds beside the event fields


def uses_clock(plan: StreamPlan) -> bool:
    """Whether an input expression of the plan reads the clock (pinned to each batch's stream time)."""
    moment = datetime(1970, 1, 1, tzinfo=UTC)
    texts = [t for f in plan.features for t in (f.column, *f.filters) if t]
    return any(pin_clock(t, moment) != t for t in texts)


def with_inputs(events: DataFrame, plan: StreamPlan, well_formed: Column) -> DataFrame:
    """The events with `transform_inputs`' columns added, computed for the `well_formed` ones only
    (NULL elsewhere), for a plan whose inputs do not read the clock."""
    if uses_clock(plan):
        raise ValueError("the plan's inputs read the clock: use transform_inputs with the batch's stream time")
    moment = datetime(1970, 1, 1, tzinfo=UTC)
    columns = _input_columns(plan, moment)
    return events.select("*", *(F.when(well_formed, c).alias(f"{_ADDED}{name}") for name, c in columns))


def added_inputs(events: pa.Table, plan: StreamPlan) -> pa.Table:
    """`transform_inputs`' columns of a `with_inputs` table, under their own names."""
    names = [ENTITY_ID, TILE, TS, *(_input(i) for i in range(len(plan.features)))]
    return events.select([f"{_ADDED}{name}" for name in names]).rename_columns(names)


_RAW_KINDS = {"count": "bigint", "count_distinct": "bigint", "last": "string"}  # else double


def needs_finish(plan: StreamPlan) -> bool:
    """Whether `finish` changes `merge_windows`' values: a post step or a cast to another type."""
    return any(f.post or VALUE_TYPES[f.value_type] != _RAW_KINDS.get(f.function, "double") for f in plan.features)


def output_ddl(plan: StreamPlan) -> str:
    """The schema of `window_partition`'s rows: each feature's raw window value."""
    columns = [f"`{f.name}` {_RAW_KINDS.get(f.function, 'double')}" for f in plan.features]
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
    return f"fs:tiles:v2:{query_id}:{entity_id}".encode()


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


class _Entity:
    """One entity's partials of a batch: per feature (plan order), by tile."""

    __slots__ = ("partials", "rows")

    def __init__(self, features: int) -> None:
        self.partials: list[dict[int, Partial]] = [{} for _ in range(features)]
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
                entity = entities[entity_id] = _Entity(len(functions))
            entity.rows += 1
            tile = tiles[row]
            for i, function in enumerate(functions):
                x = inputs[i][row]
                if x is None:
                    continue
                one = partial_of(function, times[row], x)
                mine = entity.partials[i]
                old = mine.get(tile)
                mine[tile] = merge(old, one) if old else one
    return entities


# The tile store: one Valkey hash per entity (and query), one field per feature holding the
# feature's tiles in tile order, those older than its window dropped. The numeric functions'
# tiles are packed doubles, (tile, count, sum, min, max) each, so reading, merging and
# combining them is C-level array work; `last` and `count_distinct` keep JSON lists of
# [tile, time, value] and [tile, [values]].
_WIDTH = 5


def _numeric(raw: bytes | None, new: dict[int, Partial], first: int) -> array[float]:
    """The stored tiles merged with the batch's partials, tiles before `first` dropped."""
    packed = array("d", raw or b"")
    tiles = packed[0::_WIDTH]
    if (cut := bisect_left(tiles, first)) > 0:
        del packed[: cut * _WIDTH], tiles[:cut]
    for tile, (n, total, lo, hi, *_) in sorted(new.items()):
        if tile < first:
            continue
        i = bisect_left(tiles, tile)
        if i < len(tiles) and tiles[i] == tile:
            at = i * _WIDTH
            packed[at + 1] += n
            packed[at + 2] += total
            packed[at + 3] = min(packed[at + 3], lo)
            packed[at + 4] = max(packed[at + 4], hi)
        else:
            packed[i * _WIDTH : i * _WIDTH] = array("d", (tile, n, total, lo, hi))
            tiles.insert(i, tile)
    return packed


def _numeric_value(function: str, packed: array[float], first: int, last: int) -> Any:
    tiles = packed[0::_WIDTH]
    part = packed[bisect_left(tiles, first) * _WIDTH : bisect_right(tiles, last) * _WIDTH]
    if function == "count":
        return int(sum(part[1::_WIDTH]))
    if function == "sum":
        return sum(part[2::_WIDTH], 0.0)
    if function == "avg":
        n = sum(part[1::_WIDTH])
        return sum(part[2::_WIDTH]) / n if n else None
    if not part:
        return None
    return min(part[3::_WIDTH]) if function == "min" else max(part[4::_WIDTH])


def _listed(raw: bytes | None, new: dict[int, Partial], first: int, function: str) -> list[Any]:
    """`last` / `count_distinct` tiles, merged and trimmed: [[tile, time, value] | [tile, values]]."""
    stored: dict[int, Partial] = {}
    for item in json.loads(raw) if raw else ():
        if item[0] >= first:
            stored[item[0]] = (
                [1, None, None, None, item[1], item[2], None]
                if function == "last"
                else [1, None, None, None, None, None, item[1]]
            )
    for tile, partial in new.items():
        if tile >= first:
            old = stored.get(tile)
            stored[tile] = merge(old, partial) if old else partial
    if function == "last":
        return [[t, p[4], p[5]] for t, p in sorted(stored.items())]
    return [[t, p[6]] for t, p in sorted(stored.items())]


def _listed_value(function: str, tiles: list[Any], first: int, last: int) -> Any:
    mine = [t for t in tiles if first <= t[0] <= last]
    if function == "last":
        latest: tuple[Any, Any] = (None, None)
        for _, at, value in mine:
            latest = _later(latest, (at, value))
        return latest[1]
    return len({x for _, values in mine for x in values})


def _feature_tiles(feature: StreamFeature, raw: bytes | None, new: dict[int, Partial], last: int) -> tuple[bytes, Any]:
    """(the feature's stored tiles after the merge, its window value as of tile `last`)."""
    first = last - feature.window_tiles + 1
    if feature.function in _NUMERIC:
        packed = _numeric(raw, new, first)
        return packed.tobytes(), _numeric_value(feature.function, packed, first, last)
    tiles = _listed(raw, new, first, feature.function)
    return json.dumps(tiles, separators=(",", ":")).encode(), _listed_value(feature.function, tiles, first, last)


def _entity_windows(
    stored: dict[bytes, bytes], entity: _Entity | None, plan: StreamPlan, last: int
) -> tuple[dict[bytes, bytes], list[Any]]:
    """(the fields to store, each feature's window value); `entity` None: read only (a replay)."""
    fields, values = {}, []
    for i, feature in enumerate(plan.features):
        name = feature.name.encode()
        new = entity.partials[i] if entity is not None else {}
        fields[name], value = _feature_tiles(feature, stored.get(name), new, last)
        values.append(value)
    return fields, values


def merge_windows(
    client: Any, query_id: str, batch_id: int, plan: StreamPlan, as_of_micros: int, batches: Iterable[pa.RecordBatch]
) -> pa.RecordBatch:
    """Merge the partials of `transform_inputs` rows into the tile store (once per batch id per entity)
    and return each entity's window values as of `as_of_micros` (rows of `output_ddl`).

    Entities are merged in chunks of _CHUNK: one pipelined read of their hashes, then one
    MULTI/EXEC writing them, so a chunk applies whole or not at all."""
    last = tile_of(as_of_micros)
    names = [f.name for f in plan.features]
    kept = {n.encode() for n in names} | {BATCH_FIELD}
    entities = _collect(iter(batches), plan)
    ids = list(entities)
    out: list[list[Any]] = [[] for _ in range(2 + len(names))]
    marker = str(batch_id).encode()
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        read = client.pipeline(transaction=False)
        for entity_id in chunk:
            read.hgetall(tile_key(query_id, entity_id))
        write = client.pipeline(transaction=True)  # one MULTI/EXEC: the chunk merges whole or not at all
        for entity_id, stored in zip(chunk, read.execute(), strict=True):
            entity = entities[entity_id]
            replay = int(stored.get(BATCH_FIELD, b"-1")) >= batch_id  # merged before: read, change nothing
            fields, values = _entity_windows(stored, None if replay else entity, plan, last)
            if not replay:
                key = tile_key(query_id, entity_id)
                if gone := [k for k in stored if k not in kept]:  # features no longer in the plan
                    write.hdel(key, *gone)
                write.hset(key, mapping={**fields, BATCH_FIELD: marker})
            for column, x in zip(out, [entity_id, entity.rows, *values], strict=True):
                column.append(x)
        write.execute()
    kinds = {"count": pa.int64(), "count_distinct": pa.int64(), "last": pa.string()}
    types = [pa.string(), pa.int64(), *(kinds.get(f.function, pa.float64()) for f in plan.features)]
    schema = pa.schema(list(zip([ENTITY_ID, ROWS, *names], types, strict=True)))
    return pa.RecordBatch.from_arrays([pa.array(c, type=t) for c, t in zip(out, types, strict=True)], schema=schema)

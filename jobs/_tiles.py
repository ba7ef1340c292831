"""Windowed aggregations from time tiles: partial aggregates per entity per minute, combined per window.

Spark evaluates each feature's (allow-listed) expressions over a micro-batch's
events (`transform_inputs`, or `with_inputs` in the pass that reads them: its
filter as a boolean, its aggregated column). On the driver (`merge_windows`),
the rows become one partial aggregate per (tile = minute of event time,
feature): the count of values, their sum, min and max, the latest (event time,
value) and the set of distinct values, as the function needs. The partials are
merged into the tile store (one Valkey record per entity, beside the online
values, holding each feature's tiles in order), and the entity's
tiles are combined into each feature's window as of the stream time A, so a
24 h window costs at most 1,440 tiles per entity, never a rescan of 24 h of
events. Windows are tile-aligned: a value as of A covers the events from the
start of the tile `window / tile - 1` tiles before A's tile up to A.

Exactly once: a merge is skipped for an entity whose record already holds this
batch id (a replayed batch), and a chunk of entities' records is written in one
MSET, so a batch applies to every entity once whatever is killed when.
"""

from __future__ import annotations

import json
import struct
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import reduce
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs._asof import pin_clock
from jobs._plan import VALUE_TYPES
from jobs._stream_plan import StreamFeature, StreamPlan
from server import core

ENTITY_ID, ROWS, TILE, TS = "entity_id", "__rows", "__tile", "__ts"
TILE_MICROS = core.TILE_SECONDS * 1_000_000
_NUMERIC = ("count", "sum", "avg", "min", "max")
_CHUNK = 500  # entities per MGET and per MSET


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
_ANY_TIME = datetime(1970, 1, 1, tzinfo=UTC)  # the as-of time of inputs that do not read the clock


def uses_clock(plan: StreamPlan) -> bool:
    """Whether an input expression of the plan reads the clock (pinned to each batch's stream time)."""
    texts = [t for f in plan.features for t in (f.column, *f.filters) if t]
    return any(pin_clock(t, _ANY_TIME) != t for t in texts)


def with_inputs(events: DataFrame, plan: StreamPlan, well_formed: Column) -> DataFrame:
    """The events with `transform_inputs`' columns added, computed for the `well_formed` ones only
    (NULL elsewhere), for a plan whose inputs do not read the clock."""
    if uses_clock(plan):
        raise ValueError("the plan's inputs read the clock: use transform_inputs with the batch's stream time")
    columns = _input_columns(plan, _ANY_TIME)
    return events.select("*", *(F.when(well_formed, c).alias(f"{_ADDED}{name}") for name, c in columns))


def added_inputs(events: pa.Table, plan: StreamPlan) -> pa.Table:
    """`transform_inputs`' columns of a `with_inputs` table, under their own names."""
    names = [ENTITY_ID, TILE, TS, *(_input(i) for i in range(len(plan.features)))]
    return events.select([f"{_ADDED}{name}" for name in names]).rename_columns(names)


def _input_schema(plan: StreamPlan) -> pa.Schema:
    kinds = [pa.float64() if f.function in _NUMERIC else pa.string() for f in plan.features]
    inputs = [(_input(i), kind) for i, kind in enumerate(kinds)]
    return pa.schema([(ENTITY_ID, pa.string()), (TILE, pa.int64()), (TS, pa.int64()), *inputs])


_RAW_KINDS = {"count": "bigint", "count_distinct": "bigint", "last": "string"}  # else double


def needs_finish(plan: StreamPlan) -> bool:
    """Whether `finish` changes `merge_windows`' values: a post step or a cast to another type."""
    return any(f.post or VALUE_TYPES[f.value_type] != _RAW_KINDS.get(f.function, "double") for f in plan.features)


def _output_schema(plan: StreamPlan) -> pa.Schema:
    """The schema of `merge_windows`' rows: each feature's raw window value."""
    arrow = {"bigint": pa.int64(), "double": pa.float64(), "string": pa.string()}
    columns = [(f.name, arrow[_RAW_KINDS.get(f.function, "double")]) for f in plan.features]
    return pa.schema([(ENTITY_ID, pa.string()), (ROWS, pa.int64()), *columns])


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


# --- partial aggregates, the tile store and windows, on the driver ----------------------------

Partial = Sequence[Any]  # [n, s, lo, hi, lt, lv, d]: count, sum, min, max, latest (time, value), distinct values


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


def merge(a: Partial, b: Partial) -> list[Any]:
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


def partial_of(function: str, ts: int, x: Any) -> list[Any]:
    """The partial aggregate of one value."""
    if function in _NUMERIC:
        return [1, x, x, x, None, None, None]
    if function == "last":
        return [1, None, None, None, ts, x, None]
    return [1, None, None, None, None, None, [x]]


@dataclass(frozen=True, slots=True)
class _Collected:
    """A batch's partials: each entity's event count, and per feature (plan order) entity -> tile -> partial."""

    rows: dict[str, int]
    partials: list[dict[str, dict[int, Partial]]]


def _by_entity(ids: list[str], tiles: list[int], parts: Iterable[Partial]) -> dict[str, dict[int, Partial]]:
    """entity -> tile -> partial, from group rows (entity, tile, partial)."""
    rows = list(zip(ids, tiles, parts, strict=True))
    by = {entity_id: {tile: part} for entity_id, tile, part in rows}
    if len(by) < len(rows):  # some entity has events in several tiles: gather them
        for entity_id, tile, part in rows:
            by[entity_id][tile] = part
    return by


def _collect(table: pa.Table, plan: StreamPlan) -> _Collected:
    """Each entity's partials per feature and tile, aggregated by Arrow (group by entity and tile).
    Numeric partials are (count, sum, min, max) tuples, built by zip in C rather than one by one."""
    rows = table.group_by(ENTITY_ID, use_threads=False).aggregate([(ENTITY_ID, "count")])
    counts = dict(zip(rows.column(0).to_pylist(), rows.column(1).to_pylist(), strict=True))
    partials = []
    for i, feature in enumerate(plan.features):
        x = _input(i)
        present = table.filter(pc.is_valid(table.column(x)))
        if feature.function in _NUMERIC:
            aggregates = [(x, "count"), (x, "sum"), (x, "min"), (x, "max")]
            groups = present.group_by([ENTITY_ID, TILE], use_threads=False).aggregate(aggregates)
            ids, tiles, *parts = (
                groups.column(c).to_pylist() for c in (ENTITY_ID, TILE, *(f"{x}_{a}" for _, a in aggregates))
            )
            partials.append(_by_entity(ids, tiles, zip(*parts, strict=True)))
        elif feature.function == "last":  # the latest time's greatest value: the last in (time, value) order
            ordered = present.sort_by([(TS, "ascending"), (x, "ascending")])
            groups = ordered.group_by([ENTITY_ID, TILE], use_threads=False).aggregate([(TS, "last"), (x, "last")])
            ids, tiles, ats, values = (
                groups.column(c).to_pylist() for c in (ENTITY_ID, TILE, f"{TS}_last", f"{x}_last")
            )
            last = ([1, None, None, None, at, value, None] for at, value in zip(ats, values, strict=True))
            partials.append(_by_entity(ids, tiles, last))
        else:
            groups = present.group_by([ENTITY_ID, TILE], use_threads=False).aggregate([(x, "distinct")])
            ids, tiles, sets = (groups.column(c).to_pylist() for c in (ENTITY_ID, TILE, f"{x}_distinct"))
            distinct = ([len(v), None, None, None, None, None, sorted(v)] for v in sets)
            partials.append(_by_entity(ids, tiles, distinct))
    return _Collected(counts, partials)


# The tile store: one Valkey string per entity (and query), `pack_tiles`: the batch id that
# last merged it and, per feature, the feature's tiles in tile order, those older than its
# window dropped. The numeric functions' tiles are packed doubles, (tile, count, sum, min,
# max) each, so reading, merging and combining them is C-level array work; `last` and
# `count_distinct` keep JSON lists of [tile, time, value] and [tile, [values]].
_WIDTH = 5


def _numeric(raw: bytes | None, new: Mapping[int, Partial], first: int) -> array[float]:
    """The stored tiles merged with the batch's partials, tiles before `first` dropped. A tile after the
    stored ones (the common case: the current minute) is appended without searching."""
    packed = array("d", raw or b"")
    if packed and packed[0] < first:
        del packed[: bisect_left(packed[0::_WIDTH], first) * _WIDTH]
    for tile, (n, total, lo, hi, *_) in sorted(new.items()) if len(new) > 1 else new.items():
        if tile < first:
            continue
        if not packed or tile > packed[-_WIDTH]:
            packed.extend((tile, n, total, lo, hi))
            continue
        i = bisect_left(packed[0::_WIDTH], tile)
        at = i * _WIDTH
        if packed[at] == tile:
            packed[at + 1] += n
            packed[at + 2] += total
            packed[at + 3] = min(packed[at + 3], lo)
            packed[at + 4] = max(packed[at + 4], hi)
        else:
            packed[at:at] = array("d", (tile, n, total, lo, hi))
    return packed


def _numeric_value(function: str, packed: array[float], first: int, last: int) -> Any:
    part = packed
    if packed and (packed[0] < first or packed[-_WIDTH] > last):
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


def _listed(raw: bytes | None, new: Mapping[int, Partial], first: int, function: str) -> list[Any]:
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


def _feature_tiles(
    feature: StreamFeature, raw: bytes | None, new: Mapping[int, Partial], last: int
) -> tuple[bytes, Any]:
    """(the feature's stored tiles after the merge, its window value as of tile `last`)."""
    first = last - feature.window_tiles + 1
    if feature.function in _NUMERIC:
        packed = _numeric(raw, new, first)
        return packed.tobytes(), _numeric_value(feature.function, packed, first, last)
    tiles = _listed(raw, new, first, feature.function)
    return json.dumps(tiles, separators=(",", ":")).encode(), _listed_value(feature.function, tiles, first, last)


_HEAD = struct.Struct(">HI")  # a section of an entity's tiles: name length, payload length
_MAGIC = b"T2"


def pack_tiles(batch_id: int, features: dict[bytes, bytes]) -> bytes:
    """An entity's stored tiles: the batch that last merged them, then (name, tiles) per feature."""
    parts = [_MAGIC, batch_id.to_bytes(8, "big", signed=True)]
    for name, tiles in features.items():
        parts += (_HEAD.pack(len(name), len(tiles)), name, tiles)
    return b"".join(parts)


def unpack_tiles(blob: bytes | None) -> tuple[int, dict[bytes, bytes]]:
    """(the batch that last merged the tiles, -1 for none; the tiles per feature) of `pack_tiles`."""
    if not blob:
        return -1, {}
    if blob[:2] != _MAGIC:
        raise ValueError("not a tile record of this version")
    features, pos = {}, 10
    while pos < len(blob):
        n, m = _HEAD.unpack_from(blob, pos)
        pos += _HEAD.size
        features[blob[pos : pos + n]] = blob[pos + n : pos + n + m]
        pos += n + m
    return int.from_bytes(blob[2:10], "big", signed=True), features


_NOTHING: dict[int, Partial] = {}


def _entity_windows(
    stored: dict[bytes, bytes], news: list[dict[int, Partial]] | None, plan: StreamPlan, last: int
) -> tuple[dict[bytes, bytes], list[Any]]:
    """(each feature's tiles to store, its window value); `news` (the batch's partials per feature)
    None: read only (a replay)."""
    fields, values = {}, []
    for i, feature in enumerate(plan.features):
        name = feature.name.encode()
        new = news[i] if news is not None else _NOTHING
        fields[name], value = _feature_tiles(feature, stored.get(name), new, last)
        values.append(value)
    return fields, values


def merge_windows(
    client: Any, query_id: str, batch_id: int, plan: StreamPlan, as_of_micros: int, batches: Iterable[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """Merge the partials of `transform_inputs` rows into the tile store (once per batch id per entity)
    and yield each entity's window values as of `as_of_micros` (rows of `_output_schema`).

    Entities go in chunks of _CHUNK: one MGET of their records, one MSET (atomic) writing them,
    then the chunk's window values are yielded, so a chunk applies whole or not at all and a
    consumer can write one chunk's values while the next is merged."""
    last = tile_of(as_of_micros)
    schema = _output_schema(plan)
    collected = _collect(pa.Table.from_batches(list(batches), schema=_input_schema(plan)), plan)
    ids = list(collected.rows)
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        keys = [tile_key(query_id, entity_id) for entity_id in chunk]
        out: list[list[Any]] = [[] for _ in schema]
        merged = {}
        for key, entity_id, blob in zip(keys, chunk, client.mget(keys), strict=True):
            merged_by, stored = unpack_tiles(blob)
            replay = merged_by >= batch_id  # merged before: read, change nothing
            news = None if replay else [by.get(entity_id, _NOTHING) for by in collected.partials]
            features, values = _entity_windows(stored, news, plan, last)
            if not replay:  # (features no longer in the plan are left out)
                merged[key] = pack_tiles(batch_id, features)
            for column, x in zip(out, [entity_id, collected.rows[entity_id], *values], strict=True):
                column.append(x)
        if merged:
            client.mset(merged)
        arrays = [pa.array(column, type=f.type) for column, f in zip(out, schema, strict=True)]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)

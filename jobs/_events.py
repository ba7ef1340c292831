"""Events are data: a stream's JSON events parsed against the fields its definitions declare.

Every source (Valkey Streams, Kafka) turns its records into the same rows: the
declared fields, typed, plus `__error` (why the event is malformed, else NULL)
and `__raw` (the original bytes of a malformed event, for the dead-letter
stream). A malformed event is unparsable JSON, not an object, lacks the entity
or the event time, or has a field of the wrong type; it never stops the query.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

ERROR, RAW, KEY, OFFSET = "__error", "__raw", "__key", "__offset"
# The Spark SQL and Arrow type of each event field type.
SQL_TYPES = {"FLOAT": "double", "INT64": "bigint", "STRING": "string", "BOOL": "boolean", "TIMESTAMP": "timestamp"}
_ARROW = {
    "FLOAT": pa.float64(),
    "INT64": pa.int64(),
    "STRING": pa.string(),
    "BOOL": pa.bool_(),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_EVENT_BYTES = 64 * 1024
_MICROS_MIN, _MICROS_MAX = -62_135_596_800 * 10**6, 253_402_300_799 * 10**6
_READ_OPTIONS = pj.ReadOptions(use_threads=False, block_size=1 << 24)
_ARROW_MAX_EVENT_BYTES = 1024  # longer events are parsed by `parse` (and so their whole batch)


@dataclass(frozen=True, slots=True)
class EventSchema:
    """The declared fields of a stream's events, and which are the entity and the event time."""

    fields: tuple[tuple[str, str], ...]  # (name, ValueType name)
    entity: str
    time: str

    def sql(self) -> str:
        """The rows' Spark SQL schema (a DDL string)."""
        cols = [f"`{KEY}` string", f"`{OFFSET}` string"]
        cols += [f"`{name}` {SQL_TYPES[kind]}" for name, kind in self.fields]
        return ", ".join([*cols, f"`{ERROR}` string", f"`{RAW}` binary"])

    def arrow(self) -> pa.Schema:
        cols = [(KEY, pa.string()), (OFFSET, pa.string())]
        cols += [(name, _ARROW[kind]) for name, kind in self.fields]
        return pa.schema([*cols, (ERROR, pa.string()), (RAW, pa.binary())])

    def to_json(self) -> str:
        return json.dumps({"fields": self.fields, "entity": self.entity, "time": self.time})

    @classmethod
    def from_json(cls, text: str) -> EventSchema:
        d = json.loads(text)
        return cls(tuple((str(n), str(k)) for n, k in d["fields"]), str(d["entity"]), str(d["time"]))


def _micros(x: Any) -> int:
    """Event time: an ISO 8601 string (UTC when it has no offset) or seconds since the epoch."""
    if isinstance(x, bool):
        raise TypeError
    if isinstance(x, int | float):
        if not math.isfinite(x):
            raise ValueError
        micros = round(x * 1_000_000)
    elif isinstance(x, str):
        moment = datetime.fromisoformat(x.replace("Z", "+00:00"))
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
        delta = moment - _EPOCH
        micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    else:
        raise TypeError
    if not _MICROS_MIN <= micros <= _MICROS_MAX:
        raise ValueError
    return micros


def _utf8(x: str) -> bool:
    """Whether `x` can be stored as UTF-8 (JSON's "\\ud800" escape decodes to a lone surrogate, which cannot)."""
    try:
        x.encode()
    except UnicodeEncodeError:
        return False
    return True


def _typed(kind: str, x: Any) -> Any:
    if kind == "FLOAT" and isinstance(x, int | float) and not isinstance(x, bool):
        return float(x)
    if kind == "INT64" and isinstance(x, int) and not isinstance(x, bool) and -(2**63) <= x < 2**63:
        return x
    if kind == "STRING" and isinstance(x, str) and (x.isascii() or _utf8(x)):
        return x
    if kind == "BOOL" and isinstance(x, bool):
        return x
    if kind == "TIMESTAMP":
        return _micros(x)
    raise TypeError


def parse(schema: EventSchema, raw: bytes) -> tuple[list[Any], str | None]:
    """(the typed field values, None) or (Nones, why the event is malformed)."""
    nothing = [None] * len(schema.fields)
    if len(raw) > _MAX_EVENT_BYTES:
        return nothing, f"larger than {_MAX_EVENT_BYTES} bytes"
    try:
        event = json.loads(raw)
    except (ValueError, RecursionError):
        return nothing, "not JSON"
    if not isinstance(event, dict):
        return nothing, "not a JSON object"
    values: list[Any] = []
    for name, kind in schema.fields:
        x = event.get(name)
        if x is None:
            if name in (schema.entity, schema.time):
                return nothing, f"missing {name}"
            values.append(None)
            continue
        try:
            values.append(_typed(kind, x))
        except (TypeError, ValueError, OverflowError):
            return nothing, f"{name} is not a {kind}"
    return values, None


def to_batch(schema: EventSchema, records: Iterable[tuple[str, str, bytes]]) -> pa.RecordBatch:
    """One Arrow batch of rows from (source key, offset, raw event) records.

    Well-formed batches are parsed by Arrow's JSON reader (C++, ~10x faster than `json` and a loop);
    a batch that it refuses, or whose values it would read differently than `parse`, is parsed event
    by event instead, so the result (values and reasons) is the same either way.
    """
    listed = records if isinstance(records, list) else list(records)
    return _arrow_batch(schema, listed) or _python_batch(schema, listed)


def _arrow_batch(schema: EventSchema, records: list[tuple[str, str, bytes]]) -> pa.RecordBatch | None:
    """The batch parsed by Arrow's JSON reader, or None when an event needs `parse`'s checks one by one."""
    raws = [raw for _, _, raw in records]
    if not raws or max(map(len, raws)) > _ARROW_MAX_EVENT_BYTES:
        return None  # (a long event may hold a number or a nesting depth `json` refuses and Arrow accepts)
    if not all(raw.lstrip(b" \t")[:1] == b"{" and raw.rstrip(b" \t")[-1:] == b"}" for raw in raws):
        return None  # each event must be one object: no blank event, no bare `null` (which crashes Arrow)
    text = b"\n".join(raws)
    if text.count(b"\n") != len(raws) - 1 or b"\r" in text:  # one line per event
        return None
    options = pj.ParseOptions(explicit_schema=_json_schema(schema), unexpected_field_behavior="ignore")
    try:
        text.decode()  # valid UTF-8 (Arrow does not check string values)
        table = pj.read_json(pa.BufferReader(text), read_options=_READ_OPTIONS, parse_options=options)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None
    if table.num_rows != len(raws) or table.column(schema.entity).null_count or table.column(schema.time).null_count:
        return None
    columns = []
    for name, kind in schema.fields:
        column = table.column(name)
        if kind == "FLOAT" and (pc.all(pc.is_finite(column)).as_py() not in (True, None) or _negative_zero(column)):
            return None  # NaN, a number too large, or -0 (`json` reads the integer -0 as 0): `parse` decides
        if kind == "TIMESTAMP":
            try:
                column = pa.array([None if x is None else _micros(x) for x in column.to_pylist()], pa.int64())
            except (TypeError, ValueError, OverflowError):
                return None
        columns.append(column.cast(_ARROW[kind]) if kind == "TIMESTAMP" else column)
    keys, offsets = [key for key, _, _ in records], [offset for _, offset, _ in records]
    nothing = pa.nulls(len(raws))
    arrays = [pa.array(keys, pa.string()), pa.array(offsets, pa.string()), *columns, nothing, nothing]
    return pa.RecordBatch.from_arrays(
        [a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in arrays], schema=schema.arrow()
    )


def _negative_zero(column: pa.ChunkedArray) -> bool:
    values = column.to_numpy()
    return bool(np.any((values == 0) & np.signbit(values)))


def _json_schema(schema: EventSchema) -> pa.Schema:
    """The fields as Arrow's JSON reader takes them: timestamps as text, parsed by `_micros`."""
    return pa.schema([(name, pa.string() if kind == "TIMESTAMP" else _ARROW[kind]) for name, kind in schema.fields])


def _python_batch(schema: EventSchema, records: list[tuple[str, str, bytes]]) -> pa.RecordBatch:
    names = [name for name, _ in schema.fields]
    columns: list[list[Any]] = [[] for _ in names]
    keys, offsets, errors, raws = [], [], [], []
    for key, offset, raw in records:
        values, error = parse(schema, raw)
        keys.append(key)
        offsets.append(offset)
        errors.append(error)
        raws.append(raw if error else None)
        for column, x in zip(columns, values, strict=True):
            column.append(x)
    arrays: Sequence[Any] = [keys, offsets, *columns, errors, raws]
    return pa.RecordBatch.from_arrays(
        [pa.array(a, type=f.type) for a, f in zip(arrays, schema.arrow(), strict=True)], schema=schema.arrow()
    )

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

import pyarrow as pa

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


def _typed(kind: str, x: Any) -> Any:
    if kind == "FLOAT" and isinstance(x, int | float) and not isinstance(x, bool):
        return float(x)
    if kind == "INT64" and isinstance(x, int) and not isinstance(x, bool) and -(2**63) <= x < 2**63:
        return x
    if kind == "STRING" and isinstance(x, str):
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
    """One Arrow batch of rows from (source key, offset, raw event) records."""
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

"""A BatchGetFeatures response decoded into typed columns straight from its wire bytes, with numpy.

Parsing the response into protobuf messages and reading them costs a Python wrapper object per
FeatureValue and per Value (about 0.5 µs a value: most of the time of a 1,000 x 10 DataFrame).
Here the fields of every message of one level are read together: one numpy step reads the
first field of every message, the next step the second field, and so on. The cost grows with
the number of fields of a message (a FeatureValue has four), not with the number of values.
The top level (one message holding the repeated entities) is split by protobuf itself, into
the entities' bytes, through a private message type with the same field numbers. The Values
(one field each, the oneof) are read a column at a time: when a column's all hold the same
field, one step over the column's rows; else every Value in one walk. Event times are read
only when asked for, and a field every message holds in the same place is used as read, not
scattered into a new array.

This reader only takes what the protobuf encoding spec allows and what it can check: fields
in any order, unknown fields skipped, lists packed in one piece. Anything else it meets
(a field number above 15, a group, a singular field sent twice, an entity with another number
of features, an unpacked or split list, a timestamp past what nanoseconds in int64 hold)
raises `Irregular`, and the caller decodes the response with protobuf instead: both paths
give the same frame (tests/test_client_wire.py compares them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from featurestore._frames import Column, Dense, to_arrow, to_pandas
from featurestore._values import KIND_TYPES, TYPE_KINDS
from featurestore.serving.v1 import value_pb2

# Field numbers (value.proto, feature_store_service.proto).
_ENTITY_ID, _FEATURES = 1, 3  # EntityFeatures
_NAME, _VALUE, _EVENT_TIME, _STATUS = 1, 2, 3, 4  # FeatureValue
_KIND_NUMBERS = {f.name: f.number for f in value_pb2.Value.DESCRIPTOR.oneofs_by_name["kind"].fields}
_KIND_OF_NUMBER = {number: KIND_TYPES[name] for name, number in _KIND_NUMBERS.items()}
_HAS_VALUE = (1, 3)  # PRESENT, EXPIRED
_STATUS_NAMES = [None, "PRESENT", "NOT_FOUND", "EXPIRED"]
_PACKED = {"FLOAT_LIST": "<f8", "EMBEDDING": "<f4", "BOOL_LIST": "u1"}
_MAX_SECONDS = 9_223_372_035  # the last whole second that nanoseconds since the epoch hold in an int64
_PAD = 16  # zero bytes after the data, so that reading 10 bytes at any position inside it is safe
# The wire type of each Value field (FLOAT: a double; INT64, BOOL: varints; the others length-delimited).
_KIND_WIRE = {
    f.number: {f.TYPE_DOUBLE: 1, f.TYPE_INT64: 0, f.TYPE_BOOL: 0}.get(f.type, 2)
    for f in value_pb2.Value.DESCRIPTOR.oneofs_by_name["kind"].fields
}


class Irregular(Exception):
    """The response uses an encoding this reader does not decode (protobuf will)."""


def _batch_type() -> Any:
    """A message type with BatchGetFeaturesResponse's field 2 (entities) as bytes: protobuf splits them."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="featurestore/_client_wire.proto", package="featurestore.client_wire", syntax="proto3"
    )
    message = proto.message_type.add(name="EntitiesAsBytes")
    message.field.add(
        name="entities",
        number=2,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("featurestore.client_wire.EntitiesAsBytes"))


_ENTITIES_AS_BYTES = _batch_type()


class _Step(NamedTuple):
    """The n-th field of every message that has one (see _walk).

    `msg`: the messages' indexes; `tag`: the tag when every one has the same, else -1 and
    `tags` per message; `start`/`end`: each payload (for a length-delimited field after its
    length, for a varint the varint itself); `varint`: its value as uint64 (0 for others);
    `full`: every message has an n-th field (`msg` is 0, 1, ... of all of them).
    """

    msg: Any
    tag: int
    tags: Any
    start: Any
    end: Any
    varint: Any
    full: bool


class _Field(NamedTuple):
    """One field number's occurrences over many messages: message index, payload, varint;
    `full`: once in every message, in message order (`msg` is 0, 1, ...)."""

    msg: Any
    start: Any
    end: Any
    varint: Any
    full: bool = False

    def dense(self, np: Any, values: Any, n: int) -> Any:
        """`values` (one per occurrence) by message: 0 where a message has none."""
        if self.full:
            return values
        out = np.zeros(n, dtype=values.dtype)
        out[self.msg] = values
        return out


def _walk(np: Any, buf: Any, starts: Any, ends: Any) -> list[_Step]:
    """The fields of the messages buf[starts[i]:ends[i]], step n holding each one's n-th field."""
    msg = np.arange(len(starts))
    pos, end = starts, ends
    steps: list[_Step] = []
    full = True
    while True:
        live = pos < end
        if not live.all():
            if (pos > end).any():
                raise Irregular("a field runs past its message")
            msg, pos, end, full = msg[live], pos[live], end[live], False
        if not len(msg):
            return steps
        tags = buf[pos]
        pos = pos + 1
        first = int(tags[0])
        if first < 0x80 and (tags == first).all():
            wire = first & 7
            if wire == 2 or wire == 0:
                varint, after = _varints(np, buf, pos)
                if wire == 2:
                    if (varint > len(buf)).any():
                        raise Irregular("a length past the data")
                    start, stop = after, after + varint.astype(np.int64)
                else:
                    start, stop = pos, after
            elif wire == 1 or wire == 5:
                varint, start, stop = None, pos, pos + (8 if wire == 1 else 4)
            else:
                raise Irregular("a group or an unknown wire type")
            step = _Step(msg, first, None, start, stop, varint, full)
        else:
            step = _mixed(np, buf, msg, tags, pos, full)
        if (step.end > end).any():
            raise Irregular("a field runs past its message")
        steps.append(step)
        pos = step.end


def _mixed(np: Any, buf: Any, msg: Any, tags: Any, pos: Any, full: bool) -> _Step:
    """A step whose messages have different tags here."""
    if (tags >= 0x80).any():
        raise Irregular("a field number above 15")
    wire = tags & 7
    if ((wire == 3) | (wire == 4) | (wire > 5)).any():
        raise Irregular("a group or an unknown wire type")
    varint = np.zeros(len(pos), dtype=np.uint64)
    after = pos.copy()
    rows = np.flatnonzero((wire == 0) | (wire == 2))
    if len(rows):
        varint[rows], after[rows] = _varints(np, buf, pos[rows])
    delimited = wire == 2
    if (varint[delimited] > len(buf)).any():
        raise Irregular("a length past the data")
    start = np.where(delimited, after, pos)
    stop = np.where(delimited, after + varint.astype(np.int64), after)
    stop = np.where(wire == 1, pos + 8, np.where(wire == 5, pos + 4, stop))
    return _Step(msg, -1, tags, start, stop, varint, full)


def _parts(np: Any, steps: list[_Step], number: int, wire: int) -> list[_Field]:
    """Field `number`'s occurrences, step by step (Irregular if one is not of wire type `wire`)."""
    parts = []
    for step in steps:
        if step.tag >= 0:
            if step.tag >> 3 != number:
                continue
            if step.tag & 7 != wire:
                raise Irregular(f"field {number} of an unexpected wire type")
            varint = step.varint if step.varint is not None else np.zeros(len(step.msg), dtype=np.uint64)
            parts.append(_Field(step.msg, step.start, step.end, varint, step.full))
            continue
        rows = np.flatnonzero((step.tags >> 3) == number)
        if not len(rows):
            continue
        if ((step.tags[rows] & 7) != wire).any():
            raise Irregular(f"field {number} of an unexpected wire type")
        parts.append(_Field(step.msg[rows], step.start[rows], step.end[rows], step.varint[rows]))
    return parts


def _single(np: Any, steps: list[_Step], number: int, wire: int) -> _Field:
    """Field `number`, at most once per message."""
    parts = _parts(np, steps, number, wire)
    if len(parts) == 1:
        return parts[0]  # a step holds a message once
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return _Field(empty, empty, empty, empty.astype(np.uint64))
    field = _Field(
        *(np.concatenate([getattr(part, name) for part in parts]) for name in ("msg", "start", "end", "varint"))
    )
    if np.bincount(field.msg).max() > 1:
        raise Irregular(f"field {number} sent twice")
    return field


def _varints(np: Any, buf: Any, pos: Any) -> tuple[Any, Any]:
    """The varints at `pos` (uint64) and the positions after them.

    Byte by byte over the varints not finished yet: most are one byte, and a 5-byte one costs
    four small steps (a 10-column matrix of every long varint's bytes cost 4x more).
    """
    value = buf[pos].astype(np.uint64)
    after = pos + 1
    more = np.flatnonzero(value >= 0x80)
    if not len(more):
        return value, after
    value[more] &= np.uint64(0x7F)
    for k in range(1, 10):
        byte = buf[pos[more] + k].astype(np.uint64)
        value[more] |= (byte & np.uint64(0x7F)) << np.uint64(7 * k)
        after[more] += 1
        more = more[byte >= 0x80]
        if not len(more):
            return value, after
    raise Irregular("a varint longer than 10 bytes")


class _Values(NamedTuple):
    """A column's Values, each one field: its number (`kind`, 0 for no value), wire type (one for
    the column, or one per row), payload and varint (as in _Step)."""

    kind: Any
    wire: Any
    start: Any
    end: Any
    varint: Any


class BatchFrame:
    """A BatchGetFeatures response read into arrays; `output` builds the frame once the types are known.

    Raises Irregular when the response is not in the form this module reads.
    """

    def __init__(self, body: bytes, names: Sequence[str], include_status: bool, include_event_time: bool) -> None:
        import numpy as np

        self.include_status, self.include_event_time = include_status, include_event_time
        self._walked: list[_Values] | None = None
        entities = list(_ENTITIES_AS_BYTES.FromString(body).entities)
        lengths = np.fromiter(map(len, entities), dtype=np.int64, count=len(entities))
        data = b"".join(entities) + bytes(_PAD)
        self.data, self.buf = data, np.frombuffer(data, dtype=np.uint8)
        ends = np.cumsum(lengths)
        level = _walk(np, self.buf, ends - lengths, ends)
        self.rows = rows = len(entities)

        ids = _single(np, level, _ENTITY_ID, 2)
        entity_ids = [""] * rows
        for i, s, e in zip(ids.msg.tolist(), ids.start.tolist(), ids.end.tolist(), strict=True):
            entity_ids[i] = data[s:e].decode()
        self.first = Column("entity_id", "STRING", entity_ids)

        starts, ends = self._features(np, _parts(np, level, _FEATURES, 2), len(names))
        fv = _walk(np, self.buf, starts, ends)
        n = len(starts)
        self.names = self._names(np, fv, names)
        status = _single(np, fv, _STATUS, 0)
        self.status = status.dense(np, status.varint, n)
        if include_event_time:
            times = _single(np, fv, _EVENT_TIME, 2)
            self.has_time = times.dense(np, np.ones(len(times.msg), dtype=bool), n)
            self.time_start, self.time_end = times.dense(np, times.start, n), times.dense(np, times.end, n)
        value = _single(np, fv, _VALUE, 2)  # no value: an empty payload at 0
        self.value_start, self.value_end = value.dense(np, value.start, n), value.dense(np, value.end, n)
        # Each Value holds one field (the oneof): its number, wire type, payload and varint, column by column.
        self.values = [self._values(np, j) for j in range(len(self.names))]
        self.types: dict[str, str | None] = {}
        for name, column in zip(self.names, self.values, strict=True):
            seen = np.flatnonzero(column.kind)
            self.types[name] = _KIND_OF_NUMBER[int(column.kind[seen[0]])] if len(seen) else None
        self.missing = [name for name, vt in self.types.items() if vt is None]

    def _values(self, np: Any, j: int) -> _Values:
        """Column j's Values. When they all hold the same field, one step over the column; else
        (another kind, a Value of two fields: rare) every column's from one walk of all Values."""
        if self._walked is not None:
            return self._walked[j]
        width, buf = self.width, self.buf
        vs, ve = self.value_start[j::width], self.value_end[j::width]
        has = ve > vs
        if not has.any():
            zeros = np.zeros(self.rows, dtype=np.int64)
            return _Values(zeros, 0, zeros, zeros, zeros.view(np.uint64))
        at = np.where(has, vs, len(self.data) - _PAD)  # no value: a zero byte (a varint 0) of the padding
        tags = buf[at]
        tag = int(tags[int(np.argmax(has))])
        kind, wire = tag >> 3, tag & 7
        if tag >= 0x80 or _KIND_WIRE.get(kind) != wire or not ((tags == tag) | ~has).all():
            return self._walk_values(np)[j]
        pos = at + 1
        varint = None
        if wire == 1:
            start, end = pos, pos + 8
        elif wire == 0:
            varint, end = _varints(np, buf, pos)
            start = pos
        else:
            length, start = _varints(np, buf, pos)
            if (length > len(buf)).any():
                raise Irregular("a length past the data")
            end = start + length.astype(np.int64)
        if not ((end == ve) | ~has).all():  # more than the one field
            return self._walk_values(np)[j]
        if varint is None:
            varint = np.zeros(self.rows, dtype=np.uint64)
        return _Values(np.where(has, kind, 0), wire, start, end, varint)

    def _walk_values(self, np: Any) -> list[_Values]:
        """Every column's Values from one walk of all of them (Irregular for a Value of two fields)."""
        n = len(self.value_start)
        kind, wire = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        start, end = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        varint = np.zeros(n, dtype=np.uint64)
        present = np.flatnonzero(self.value_end > self.value_start)
        kinds = _walk(np, self.buf, self.value_start[present], self.value_end[present])
        if len(kinds) > 1:
            raise Irregular("a Value with more than one field")
        for step in kinds:
            at = present[step.msg]
            tags = step.tags if step.tag < 0 else np.full(len(at), step.tag)
            kind[at], wire[at] = tags >> 3, tags & 7
            start[at], end[at] = step.start, step.end
            if step.varint is not None:
                varint[at] = step.varint
        if (kind > 11).any():
            raise Irregular("a Value field this client does not know")
        w = self.width
        self._walked = [
            _Values(kind[j::w], wire[j::w], start[j::w], end[j::w], varint[j::w]) for j in range(len(self.names))
        ]
        return self._walked

    def _features(self, np: Any, parts: list[_Field], asked: int) -> tuple[Any, Any]:
        """Every entity's FeatureValues' payloads, entity by entity in wire order (all entities have `width`)."""
        rows = self.rows
        if not rows:
            self.width = asked
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        if all(len(part.msg) == rows for part in parts):  # step k holds every entity's k-th value
            self.width = len(parts)
            if not parts:
                return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
            starts = np.stack([part.start for part in parts], axis=1).ravel()
            return starts, np.stack([part.end for part in parts], axis=1).ravel()
        msg = np.concatenate([part.msg for part in parts])
        counts = np.bincount(msg, minlength=rows)
        self.width = int(counts[0])
        if (counts != self.width).any():
            raise Irregular("entities with different numbers of features")
        order = np.argsort(msg, kind="stable")
        return np.concatenate([p.start for p in parts])[order], np.concatenate([p.end for p in parts])[order]

    def _names(self, np: Any, fv: list[_Step], names: Sequence[str]) -> list[str]:
        """The columns' names: those of the first entity's values (the request's when there is none)."""
        if not self.rows:
            return list(names)
        name = _single(np, fv, _NAME, 2)
        first = np.flatnonzero(name.msg < self.width)
        found = [""] * self.width
        for j, s, e in zip(name.msg[first].tolist(), name.start[first].tolist(), name.end[first].tolist(), strict=True):
            found[j] = self.data[s:e].decode()
        return found

    def columns(self, registry_types: Mapping[str, str]) -> list[Column]:
        """`entity_id`, then per feature its column (and `__status`, `__event_time` when asked)."""
        import numpy as np

        types = {**self.types, **registry_types}
        columns = [self.first]
        for j, name in enumerate(self.names):
            columns.append(self._column(np, j, name, types.get(name)))
            if self.include_status:
                labels = [_STATUS_NAMES[s] if s < 4 else None for s in self.status[j :: self.width].tolist()]
                columns.append(Column(f"{name}__status", "STRING", labels))
            if self.include_event_time:
                w = self.width
                at = self.time_start[j::w], self.time_end[j::w], self.has_time[j::w]
                columns.append(Column(f"{name}__event_time", "TIMESTAMP", [], self._timestamps(np, *at)))
        return columns

    def _column(self, np: Any, j: int, name: str, value_type: str | None) -> Column:
        n, width = self.rows, self.width
        if value_type is None:
            return Column(name, None, [None] * n)
        number = _KIND_NUMBERS[TYPE_KINDS[value_type]]
        status = self.status[j::width]
        values = self.values[j]
        ok = (values.kind == number) & ((status == _HAS_VALUE[0]) | (status == _HAS_VALUE[1]))
        missing = ~ok
        start, end = values.start, values.end
        expected = {"FLOAT": 1, "INT64": 0, "BOOL": 0}.get(value_type, 2)
        if ((values.wire != expected) & ok).any():
            raise Irregular(f"{value_type} values of an unexpected wire type")
        if value_type == "FLOAT":
            at = np.where(ok, start, 0)
            data = self.buf[at[:, None] + np.arange(8)].view("<f8").reshape(n)
            return Column(name, value_type, [], Dense(data, missing))
        if value_type in ("INT64", "BOOL"):
            raw = np.where(ok, values.varint, 0)
            data = raw.view(np.int64) if value_type == "INT64" else raw != 0
            return Column(name, value_type, [], Dense(data, missing))
        rows = np.flatnonzero(ok)
        if value_type in ("STRING", "BYTES"):
            data, text = self.data, value_type == "STRING"
            out: list[Any] = [None] * n
            for i, s, e in zip(rows.tolist(), start[rows].tolist(), end[rows].tolist(), strict=True):
                out[i] = data[s:e].decode() if text else data[s:e]
            return Column(name, value_type, out)
        if value_type == "TIMESTAMP":
            return Column(name, value_type, [], self._timestamps(np, start, end, ok))
        if value_type in _PACKED:
            return Column(name, value_type, [], self._packed(np, value_type, start, end, ok))
        # INT64_LIST and STRING_LIST: protobuf decodes each Value.
        kind = TYPE_KINDS[value_type]
        vs, ve = self.value_start[j::width], self.value_end[j::width]
        lists: list[Any] = [None] * n
        for i, s, e in zip(rows.tolist(), vs[rows].tolist(), ve[rows].tolist(), strict=True):
            lists[i] = list(getattr(value_pb2.Value.FromString(self.data[s:e]), kind).values)
        return Column(name, value_type, lists)

    def _timestamps(self, np: Any, start: Any, end: Any, ok: Any) -> Dense:
        """Timestamp messages (seconds = 1, nanos = 2) as int64 nanoseconds since the epoch."""
        rows = np.flatnonzero(ok)
        fields = _walk(np, self.buf, start[rows], end[rows])
        seconds, nanos = np.zeros(len(rows), dtype=np.int64), np.zeros(len(rows), dtype=np.int64)
        for number, out in ((1, seconds), (2, nanos)):
            field = _single(np, fields, number, 0)
            out[field.msg] = field.varint.view(np.int64)
        if (np.abs(seconds) > _MAX_SECONDS).any():
            raise Irregular("a timestamp past what int64 nanoseconds hold")
        ns = np.zeros(len(ok), dtype=np.int64)
        ns[rows] = seconds * 1_000_000_000 + nanos
        return Dense(ns, ~ok)

    def _packed(self, np: Any, value_type: str, start: Any, end: Any, ok: Any) -> Dense:
        """A list message (field 1, packed in one piece) per value: all elements in one array, and offsets."""
        rows = np.flatnonzero(ok)
        fields = _walk(np, self.buf, start[rows], end[rows])
        if len(fields) > 1:
            raise Irregular("a list not packed in one piece")
        payload = _single(np, fields, 1, 2)
        starts, ends = np.zeros(len(rows), dtype=np.int64), np.zeros(len(rows), dtype=np.int64)
        starts[payload.msg], ends[payload.msg] = payload.start, payload.end
        lengths = ends - starts
        dtype = np.dtype(_PACKED[value_type])
        if (lengths % dtype.itemsize).any():
            raise Irregular("a packed list of a partial element")
        index = np.arange(lengths.sum()) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        flat = self.buf[index].view(dtype)
        if value_type == "BOOL_LIST":
            if (flat > 1).any():
                raise Irregular("a bool not encoded in one byte")
            flat = flat.astype(bool)
        counts = np.zeros(len(ok), dtype=np.int64)
        counts[rows] = lengths // dtype.itemsize
        offsets = np.zeros(len(ok) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return Dense(flat, ~ok, offsets)

    def output(self, registry_types: Mapping[str, str], output: str) -> Any:
        """The frame (`"pandas"` or `"arrow"`), with `registry_types` for the `missing` columns."""
        columns = self.columns(registry_types)
        return to_pandas(columns) if output == "pandas" else to_arrow(columns)

"""The stored form of an online feature value, and response framing.

A stored value is the 8-byte event time followed by the value *already
framed* as field 3 of GetFeaturesResponse / EntityFeatures:

    [event time: 8 bytes, big-endian, microseconds since the epoch + 2**63]
    [0x1a][varint length][FeatureValue{name, value, event_time, status=PRESENT}]

Serving then needs no protobuf work per value: a response is the
concatenation of the stored bytes minus their first 8, and expiry is a bytes
comparison of the stored value against an 8-byte cutoff (big-endian unsigned
integers order like byte strings). Writers compare the same 8 bytes to keep
the newest value.

Each value is stored a second time, under the field ``<feature>:j``, as its
JSON rendering (proto3 JSON mapping, original field names, ``status`` last)
behind the same 8-byte time, so REST responses are concatenations too and the
gateway passes them through (google.api.HttpBody) instead of re-encoding.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import struct
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any

from google.api import httpbody_pb2
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2
from server.core._copy import copy_text, copy_time

_BIAS = 1 << 63
_TIME = struct.Struct(">Q")
_WIRE_TYPES = {FieldDescriptor.TYPE_DOUBLE: 1, FieldDescriptor.TYPE_FLOAT: 5, FieldDescriptor.TYPE_FIXED64: 1}
_LENGTH_DELIMITED = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE)


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field_tag(message: type[Message], name: str) -> bytes:
    """The tag bytes of field `name` of `message`, from its descriptor (number and wire type)."""
    field = message.DESCRIPTOR.fields_by_name[name]
    wire = 2 if field.type in _LENGTH_DELIMITED else _WIRE_TYPES.get(field.type, 0)
    return varint(field.number << 3 | wire)


def _shared_tag(*fields: tuple[type[Message], str]) -> bytes:
    """One tag for fields of several messages that carry the same frames."""
    tags = {field_tag(message, name) for message, name in fields}
    if len(tags) != 1:
        raise RuntimeError(f"these fields must share one tag: {fields}")
    return tags.pop()


# A stored value is a framed FeatureValue: the same bytes are a `features` entry of both
# responses and a `values` entry of a history page.
FEATURES_TAG = _shared_tag(
    (fs.GetFeaturesResponse, "features"), (fs.EntityFeatures, "features"), (fs.GetHistoricalFeaturesResponse, "values")
)
ENTITY_ID_TAG = _shared_tag(
    (fs.GetFeaturesResponse, "entity_id"),
    (fs.EntityFeatures, "entity_id"),
    (fs.GetHistoricalFeaturesResponse, "entity_id"),
)
ENTITY_TYPE_TAG = _shared_tag(
    (fs.GetFeaturesResponse, "entity_type"), (fs.GetHistoricalFeaturesResponse, "entity_type")
)
BATCH_ENTITY_TYPE_TAG = field_tag(fs.BatchGetFeaturesResponse, "entity_type")
BATCH_ENTITIES_TAG = field_tag(fs.BatchGetFeaturesResponse, "entities")
NEXT_PAGE_TOKEN_TAG = field_tag(fs.GetHistoricalFeaturesResponse, "next_page_token")
EXAMPLES_TAG = field_tag(fs.GetTrainingDatasetResponse, "examples")
EXAMPLE_FEATURES_TAG = field_tag(fs.TrainingExample, "features")
_NAME_TAG = field_tag(fs.FeatureValue, "name")
_VALUE_TAG = field_tag(fs.FeatureValue, "value")
_EVENT_TIME_TAG = field_tag(fs.FeatureValue, "event_time")
_STATUS_TAG = field_tag(fs.FeatureValue, "status")
_SECONDS_TAG = field_tag(timestamp_pb2.Timestamp, "seconds")
_NANOS_TAG = field_tag(timestamp_pb2.Timestamp, "nanos")
_KIND_TAGS = {
    kind: field_tag(value_pb2.Value, kind) for kind in ("float_value", "int64_value", "string_value", "bool_value")
}
_HTTP_BODY_HEAD = field_tag(httpbody_pb2.HttpBody, "content_type") + varint(16) + b"application/json"
_HTTP_BODY_DATA_TAG = field_tag(httpbody_pb2.HttpBody, "data")
TIME_BYTES = _TIME.size
NEVER_EXPIRES = b""  # every stored value compares >= this cutoff
JSON_FIELD_SUFFIX = b":j"
FIELDS_PER_VALUE = 2  # the protobuf form and the JSON form
_PRESENT_TAIL = b'"PRESENT"}'
_EXPIRED_TAIL = b'"EXPIRED"}'


def timestamp_bytes(micros: int) -> bytes:
    """A serialized google.protobuf.Timestamp."""
    seconds, rest = divmod(micros, 1_000_000)
    out = _SECONDS_TAG + varint(seconds if seconds >= 0 else seconds + (1 << 64)) if seconds else b""
    return out + (_NANOS_TAG + varint(rest * 1000) if rest else b"")


_AFTER_TIME = operator.itemgetter(slice(TIME_BYTES, None))  # a stored value's frame
_SHORT_VARINTS = tuple(varint(n) for n in range(1 << 14))  # every length up to 16 KiB: two bytes at most


def frame(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    n = len(payload)
    return tag + (_SHORT_VARINTS[n] if n < 1 << 14 else varint(n)) + payload


def time_key(micros: int) -> bytes:
    """The 8 bytes that order event times (also before 1970)."""
    return _TIME.pack(micros + _BIAS)


def micros_of(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def to_json(message: Message) -> bytes:
    """Compact proto3 JSON with the original field names, as the gateway prints it."""
    as_dict = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return json.dumps(as_dict, ensure_ascii=False, separators=(",", ":")).encode()


def _float_json(x: float) -> str:
    if x != x or x in (math.inf, -math.inf):
        return '"NaN"' if x != x else ('"Infinity"' if x > 0 else '"-Infinity"')
    return repr(x)


_NONFINITE_JSON = {"nan": '"NaN"', "inf": '"Infinity"', "-inf": '"-Infinity"'}
_JSON_STRING: Callable[[str], str] = json.encoder.encode_basestring  # json.dumps(text, ensure_ascii=False)


_SCALAR_JSON: dict[str, Callable[[Any], str]] = {
    "float_value": _float_json,
    "int64_value": lambda n: f'"{n}"',
    "string_value": lambda text: json.dumps(text, ensure_ascii=False),
    "bool_value": lambda b: "true" if b else "false",
}


class EventTime:
    """What every value stored with one event time shares, prepared once (see ValueEncoder)."""

    __slots__ = ("copy_time", "json_tail", "key", "micros", "tail", "timestamp")

    def __init__(self, micros: int) -> None:
        seconds, rest = divmod(micros, 1_000_000)
        self.micros = micros
        self.timestamp = timestamp_pb2.Timestamp(seconds=seconds, nanos=rest * 1000)
        self.key = time_key(micros)
        self.tail = frame(_EVENT_TIME_TAG, timestamp_bytes(micros)) + _STATUS_TAG + varint(fs.PRESENT)
        self.json_tail = f'}},"event_time":"{self.timestamp.ToJsonString()}","status":"PRESENT"}}'.encode()
        self.copy_time = copy_time(micros)  # the history row's event_time in binary COPY

    @property
    def datetime(self) -> datetime:
        return _EPOCH + timedelta(microseconds=self.micros)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DOUBLE = struct.Struct("<d")
_VALUE_FRAME_HEADS = tuple(_VALUE_TAG + varint(n) for n in range(128))
_FEATURES_FRAME_HEADS = tuple(FEATURES_TAG + varint(n) for n in range(1 << 14))
Encoded = tuple[bytes, bytes, bytes]  # (protobuf form, JSON form, serialized Value)


def holds_list(kind: str) -> bool:
    """Whether the Value member named `kind` holds a list (its items under `.values`)."""
    return kind.endswith("_list_value") or kind == "embedding_value"


class ValueEncoder:
    """The one encoder of stored values: one feature's values, in both stored forms.

    `encode(x, at)` takes the plain Python value (float, int, str, bool; a datetime for
    timestamp_value, a list for the list kinds), `encode_value(value, at)` a Value message
    (the write path); both return (protobuf form, JSON form, serialized Value), where
    `at` is the event time's EventTime (default: the `event_micros` given here). The
    bytes are those of FeatureValue{name, value, event_time, PRESENT} serialized by
    protobuf and rendered by json_format (tests compare them). Everything but the value
    is prepared once per feature and per event time: a scalar costs ~1 µs.
    """

    def __init__(self, name: str, kind: str, event_micros: int | None = None) -> None:
        self.name, self.kind = name, kind
        self.field = name.encode()  # the hash fields a writer hands the online store (see server.core.KeyWrite)
        self.json_field = self.field + JSON_FIELD_SUFFIX
        self.copy_name = copy_text(name)  # the history row's feature_name in binary COPY
        self.at = EventTime(event_micros) if event_micros is not None else None
        self.event_time = self.at.timestamp if self.at is not None else None
        self._name = frame(_NAME_TAG, name.encode())
        self._json_head = f'{{"name":"{name}","value":{{"{kind}":'.encode()
        self._tag = _KIND_TAGS.get(kind, b"")
        self._scalar_json = _SCALAR_JSON.get(kind)
        fast: dict[str, Callable[[Any], tuple[bytes, str]]] = {
            "float_value": self._float,
            "int64_value": self._int64,
            "bool_value": self._bool,
            "string_value": self._str,
        }
        self._plain = fast.get(kind, self._other)
        wire: dict[str, Callable[[bytes, EventTime], Encoded | None]] = {
            "float_value": self._float_wire,
            "bool_value": self._bool_wire,
            "int64_value": self._int64_wire,
            "string_value": self._str_wire,
        }
        self.encode_wire: Callable[[bytes, EventTime], Encoded | None] = wire.get(kind, _not_canonical)
        """The stored forms of a serialized Value (`raw`, the bytes a write request carries) at `at`:
        the same bytes as `encode_value(Value.FromString(raw), at)` (tests compare them), read
        straight from `raw` when it is the canonical serialization of a value of this encoder's
        kind (what every protobuf library writes), else None: then parse it and use `encode_value`."""
        self._wire_heads: dict[int, bytes] = {}  # length of the event time's frame -> a fixed-size value's head

    def _stored(self, value: bytes, as_json: bytes, at: EventTime) -> Encoded:
        n = len(value)
        value_head = _VALUE_FRAME_HEADS[n] if n < 128 else _VALUE_TAG + varint(n)
        payload = self._name + value_head + value + at.tail
        m = len(payload)
        head = _FEATURES_FRAME_HEADS[m] if m < 1 << 14 else FEATURES_TAG + varint(m)
        return at.key + head + payload, at.key + self._json_head + as_json + at.json_tail, value

    def encode(self, x: Any, at: EventTime | None = None) -> Encoded:
        """The stored forms of the plain value `x` at `at`."""
        value, as_json = self._plain(x)
        return self._stored(value, as_json.encode(), at or self._default())

    def encode_many(self, xs: Sequence[Any], ats: EventTime | Sequence[EventTime]) -> list[Encoded | None]:
        """`encode` over a column: `xs[i]` at `ats[i]` (or every one at `ats`); None stays None.

        The same bytes as `encode` per value (tests compare them), in one pass per column
        with what the value does not change prepared once per event time: float and bool
        values have one length, so their frames' heads are known before the value.
        """
        times = repeat(ats) if isinstance(ats, EventTime) else ats
        if self.kind == "float_value" or self.kind == "bool_value":
            return self._fixed_many(xs, times)
        if self.kind == "int64_value" or self.kind == "string_value":
            return self._sized_many(xs, times)
        return [None if x is None else self.encode(x, at) for x, at in zip(xs, times, strict=False)]

    def _fixed_many(self, xs: Sequence[Any], times: Any) -> list[Encoded | None]:
        is_float = self.kind == "float_value"
        tag, name, json_head = self._tag, self._name, self._json_head
        value_head = _VALUE_FRAME_HEADS[len(tag) + (8 if is_float else 1)]
        pack, nonfinite = _DOUBLE.pack, _NONFINITE_JSON
        size = len(name) + len(value_head) + len(tag) + (8 if is_float else 1)
        heads: dict[int, bytes] = {}  # length of the event time's frame -> the protobuf form's head after the time
        out: list[Encoded | None] = []
        append = out.append
        for x, at in zip(xs, times, strict=False):
            if x is None:
                append(None)
                continue
            tail = at.tail
            head = heads.get(len(tail))
            if head is None:
                m = size + len(tail)
                features_head = _FEATURES_FRAME_HEADS[m] if m < 1 << 14 else FEATURES_TAG + varint(m)
                head = heads[len(tail)] = features_head + name + value_head + tag
            if is_float:
                raw = pack(x)
                text = repr(x)
                if text[-1] > "9":  # nan, inf, -inf: every finite repr ends in a digit
                    text = nonfinite[text]
            else:
                raw, text = (b"\x01", "true") if x else (b"\x00", "false")
            key = at.key
            append((key + head + raw + tail, key + json_head + text.encode() + at.json_tail, tag + raw))
        return out

    def _sized_many(self, xs: Sequence[Any], times: Any) -> list[Encoded | None]:
        is_int = self.kind == "int64_value"
        tag, name, json_head = self._tag, self._name, self._json_head
        value_heads, features_heads, short = _VALUE_FRAME_HEADS, _FEATURES_FRAME_HEADS, _SHORT_VARINTS
        json_string, wrap = _JSON_STRING, 1 << 64
        out: list[Encoded | None] = []
        append = out.append
        for x, at in zip(xs, times, strict=False):
            if x is None:
                append(None)
                continue
            if is_int:
                value = tag + varint(x if x >= 0 else x + wrap)
                text = f'"{x}"'
            else:
                raw = x.encode()
                n = len(raw)
                value = tag + (short[n] if n < 1 << 14 else varint(n)) + raw
                text = json_string(x)
            n = len(value)
            payload = name + (value_heads[n] if n < 128 else _VALUE_TAG + varint(n)) + value + at.tail
            m = len(payload)
            head = features_heads[m] if m < 1 << 14 else FEATURES_TAG + varint(m)
            append((at.key + head + payload, at.key + json_head + text.encode() + at.json_tail, value))
        return out

    def _wire_head(self, tail: int, size: int) -> bytes:
        """The protobuf form's bytes between the time and a serialized Value of `size` bytes."""
        value_head = _VALUE_FRAME_HEADS[size]
        m = len(self._name) + len(value_head) + size + tail
        head = _FEATURES_FRAME_HEADS[m] if m < 1 << 14 else FEATURES_TAG + varint(m)
        head = self._wire_heads[tail] = head + self._name + value_head
        return head

    def _float_wire(self, raw: bytes, at: EventTime) -> Encoded | None:
        if len(raw) != 9 or raw[0] != 0x09:  # the tag of float_value (field 1, 64-bit), 8 bytes
            return None
        text = repr(_DOUBLE.unpack_from(raw, 1)[0])
        if text[-1] > "9":  # nan, inf, -inf: every finite repr ends in a digit
            text = _NONFINITE_JSON[text]
        tail = at.tail
        head = self._wire_heads.get(len(tail)) or self._wire_head(len(tail), 9)
        key = at.key
        return key + head + raw + tail, key + self._json_head + text.encode() + at.json_tail, raw

    def _bool_wire(self, raw: bytes, at: EventTime) -> Encoded | None:
        if len(raw) != 2 or raw[0] != 0x20 or raw[1] > 1:  # bool_value (field 4, varint) 0 or 1
            return None
        tail = at.tail
        head = self._wire_heads.get(len(tail)) or self._wire_head(len(tail), 2)
        key = at.key
        text = b"true" if raw[1] else b"false"
        return key + head + raw + tail, key + self._json_head + text + at.json_tail, raw

    def _int64_wire(self, raw: bytes, at: EventTime) -> Encoded | None:
        n = _canonical_varint(raw, 0x10)  # int64_value: field 2, varint
        if n is None or n >= 1 << 64:
            return None
        return self._sized_wire(raw, f'"{n if n < _BIAS else n - (1 << 64)}"', at)

    def _str_wire(self, raw: bytes, at: EventTime) -> Encoded | None:
        n = _canonical_varint(raw, 0x1A)  # string_value: field 3, length-delimited: the length
        if n is None:
            return None
        start = len(raw) - n
        if start != 1 + (len(_SHORT_VARINTS[n]) if n < 1 << 14 else len(varint(n))):  # the string ends `raw`
            return None
        try:
            text = raw[start:].decode()
        except UnicodeDecodeError:
            return None
        return self._sized_wire(raw, _JSON_STRING(text), at)

    def _sized_wire(self, raw: bytes, text: str, at: EventTime) -> Encoded:
        n = len(raw)
        payload = self._name + (_VALUE_FRAME_HEADS[n] if n < 128 else _VALUE_TAG + varint(n)) + raw + at.tail
        m = len(payload)
        head = _FEATURES_FRAME_HEADS[m] if m < 1 << 14 else FEATURES_TAG + varint(m)
        return at.key + head + payload, at.key + self._json_head + text.encode() + at.json_tail, raw

    def encode_value(self, value: value_pb2.Value, at: EventTime | None = None) -> Encoded:
        """The stored forms of a Value message holding this encoder's kind."""
        render = self._scalar_json
        if render is not None:
            as_json = render(getattr(value, self.kind))
        else:
            as_dict = json_format.MessageToDict(value, preserving_proto_field_name=True)
            as_json = json.dumps(as_dict[self.kind], ensure_ascii=False, separators=(",", ":"))
        return self._stored(value.SerializeToString(), as_json.encode(), at or self._default())

    def _default(self) -> EventTime:
        if self.at is None:
            raise ValueError("no event time: pass one, or give event_micros to the encoder")
        return self.at

    def _float(self, x: float) -> tuple[bytes, str]:
        return self._tag + _DOUBLE.pack(x), _float_json(x)

    def _int64(self, n: int) -> tuple[bytes, str]:
        return self._tag + varint(n if n >= 0 else n + (1 << 64)), f'"{n}"'

    def _bool(self, b: bool) -> tuple[bytes, str]:
        return self._tag + (b"\x01" if b else b"\x00"), "true" if b else "false"

    def _str(self, text: str) -> tuple[bytes, str]:
        return frame(self._tag, text.encode()), json.dumps(text, ensure_ascii=False)

    def _other(self, x: Any) -> tuple[bytes, str]:
        message = value_pb2.Value()
        if self.kind == "timestamp_value":
            message.timestamp_value.FromDatetime(x)
        elif holds_list(self.kind):
            getattr(message, self.kind).values.extend(x)
        else:
            setattr(message, self.kind, x)
        as_dict = json_format.MessageToDict(message, preserving_proto_field_name=True)
        return message.SerializeToString(), json.dumps(as_dict[self.kind], ensure_ascii=False, separators=(",", ":"))


def _not_canonical(raw: bytes, at: EventTime) -> None:
    return None


def _canonical_varint(raw: bytes, tag: int) -> int | None:
    """The varint after the one-byte `tag` at the start of `raw` if it is written as protobuf writes it
    (fewest bytes, at most 10) and, for a varint field, ends `raw`; else None. For a length-delimited
    field the caller checks the rest."""
    if not raw or raw[0] != tag:
        return None
    n, shift, pos, end = 0, 0, 1, min(len(raw), 11)
    while pos < end:
        byte = raw[pos]
        n |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            if byte == 0 and pos > 2:  # a longer form than needed
                return None
            if tag & 7 == 0 and pos != len(raw):  # a varint field: nothing may follow
                return None
            return n
        shift += 7
    return None


@functools.lru_cache(maxsize=4096)
def encoder(name: str, kind: str) -> ValueEncoder:
    """The ValueEncoder of a feature (name and Value member), kept for reuse."""
    return ValueEncoder(name, kind)


def encode_stored(name: str, value: value_pb2.Value, event_time: timestamp_pb2.Timestamp) -> tuple[bytes, bytes]:
    """The stored bytes of one feature value: (protobuf form, JSON form). `name` is a feature name (an identifier)."""
    kind = value.WhichOneof("kind")
    if kind is None:
        raise ValueError("the value holds no kind")
    proto, as_json, _ = encoder(name, kind).encode_value(value, EventTime(micros_of(event_time)))
    return proto, as_json


def not_found_frame(name: str) -> bytes:
    """The framed FeatureValue for a feature with no stored value."""
    return frame(FEATURES_TAG, fs.FeatureValue(name=name, status=fs.NOT_FOUND).SerializeToString())


def not_found_json(name: str) -> bytes:
    """The JSON FeatureValue for a feature with no stored value."""
    return to_json(fs.FeatureValue(name=name, status=fs.NOT_FOUND))


def expired_json(stored: bytes) -> bytes:
    """A stored JSON value with its status (the last member) set to EXPIRED."""
    assert stored.endswith(_PRESENT_TAIL), stored[-40:]
    return stored[TIME_BYTES : -len(_PRESENT_TAIL)] + _EXPIRED_TAIL


def expired_frame(stored: bytes) -> bytes:
    """Re-frame a stored value with status EXPIRED (slow path: expired values are rare)."""
    payload = fs.FeatureValue.FromString(_payload(stored))
    payload.status = fs.EXPIRED
    return frame(FEATURES_TAG, payload.SerializeToString())


def _payload(stored: bytes) -> bytes:
    """The serialized FeatureValue inside a stored value."""
    pos, shift, length = TIME_BYTES + 1, 0, 0
    while True:
        byte = stored[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return stored[pos : pos + length]
        shift += 7


def cutoff(now_micros: int, max_age_micros: int | None) -> bytes:
    """Stored values comparing below this are expired."""
    return NEVER_EXPIRES if max_age_micros is None else time_key(now_micros - max_age_micros)


def now_micros() -> int:
    return time.time_ns() // 1000


def _served(
    stored: list[bytes | None],
    not_found: list[bytes],
    cutoffs: list[bytes],
    expired: Callable[[bytes], bytes],
    expired_seen: list[int] | None,
) -> list[bytes]:
    """Each feature's served form: the stored one, its expired variant, or the not-found one."""
    parts = []
    for value, missing, limit in zip(stored, not_found, cutoffs, strict=True):
        if value is None:
            parts.append(missing)
        elif value >= limit:
            parts.append(value[TIME_BYTES:])
        else:
            parts.append(expired(value))
            if expired_seen is not None:
                expired_seen[0] += 1
    return parts


def assemble(
    stored: list[bytes | None], not_found: list[bytes], cutoffs: list[bytes], expired_seen: list[int] | None = None
) -> bytes:
    """The framed FeatureValues of one entity, in request order; expired ones are counted in `expired_seen[0]`."""
    return b"".join(_served(stored, not_found, cutoffs, expired_frame, expired_seen))


def assemble_batch(
    entity_ids: Sequence[str],
    stored: list[bytes | None],
    not_found: list[bytes],
    cutoffs: list[bytes],
    expired_seen: list[int] | None = None,
) -> list[bytes]:
    """The framed EntityFeatures of many entities (`stored` key-major, `len(not_found)` values an entity),
    each an `entities` field of BatchGetFeaturesResponse; expired ones are counted in `expired_seen[0]`.

    The same bytes as framing `assemble` per entity, with the least Python per value: every value
    cut after its event time in one C-level `map` (a value not stored makes it fail and a
    comprehension take over), only the features with a max age compared with their cutoff, one
    join per entity (1,000 x 10: ~0.75 ms, against ~2.2 ms for `assemble` per entity).
    """
    width = len(not_found)
    try:
        served: list[bytes] = list(map(_AFTER_TIME, stored))  # type: ignore[arg-type]  # None fails: below
    except TypeError:  # some value is not stored
        served = [not_found[k % width] if v is None else v[TIME_BYTES:] for k, v in enumerate(stored)]
    for j, limit in enumerate(cutoffs):
        if limit == NEVER_EXPIRES:
            continue
        for k in range(j, len(stored), width):
            value = stored[k]
            if value is not None and value < limit:
                served[k] = expired_frame(value)
                if expired_seen is not None:
                    expired_seen[0] += 1
    short, entity_tag, id_tag, join = _SHORT_VARINTS, BATCH_ENTITIES_TAG, ENTITY_ID_TAG, b"".join
    out: list[bytes] = []
    append = out.append
    end = 0
    for entity_id in entity_ids:
        eid = entity_id.encode()
        start, end = end, end + width
        values = join(served[start:end])
        m = len(eid)
        size = short[m] if m < 1 << 14 else varint(m)
        n = len(id_tag) + len(size) + m + len(values)
        append(join((entity_tag, short[n] if n < 1 << 14 else varint(n), id_tag, size, eid, values)))
    return out


def assemble_json(
    stored: list[bytes | None], not_found: list[bytes], cutoffs: list[bytes], expired_seen: list[int] | None = None
) -> bytes:
    """The JSON FeatureValues of one entity, comma-separated, in request order (expired ones counted)."""
    return b",".join(_served(stored, not_found, cutoffs, expired_json, expired_seen))


def json_string(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode()


def http_body(data: bytes) -> bytes:
    """A serialized google.api.HttpBody holding JSON."""
    return _HTTP_BODY_HEAD + frame(_HTTP_BODY_DATA_TAG, data)

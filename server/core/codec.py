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

import json
import math
import struct
import time
from collections.abc import Callable
from typing import Any

from google.api import httpbody_pb2
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2

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


_SCALAR_JSON: dict[str, Callable[[Any], str]] = {
    "float_value": _float_json,
    "int64_value": lambda n: f'"{n}"',
    "string_value": lambda text: json.dumps(text, ensure_ascii=False),
    "bool_value": lambda b: "true" if b else "false",
}


def _scalar_json(value: value_pb2.Value) -> str | None:
    """The proto3 JSON of a scalar Value's member, as json_format prints it; None for other kinds."""
    kind = value.WhichOneof("kind")
    render = _SCALAR_JSON.get(kind or "")
    return render(getattr(value, kind)) if render and kind else None


def _value_json(fv: fs.FeatureValue) -> bytes:
    """FeatureValue JSON; scalars by string formatting (~1 µs), the rest through json_format (~9 µs)."""
    scalar = _scalar_json(fv.value)
    if scalar is None:
        return to_json(fv)
    kind = fv.value.WhichOneof("kind")
    when = fv.event_time.ToJsonString()
    return f'{{"name":"{fv.name}","value":{{"{kind}":{scalar}}},"event_time":"{when}","status":"PRESENT"}}'.encode()


def encode_stored(name: str, value: value_pb2.Value, event_time: timestamp_pb2.Timestamp) -> tuple[bytes, bytes]:
    """The stored bytes of one feature value: (protobuf form, JSON form). `name` is a feature name (an identifier)."""
    fv = fs.FeatureValue(name=name, value=value, event_time=event_time, status=fs.PRESENT)
    when = time_key(micros_of(event_time))
    return when + frame(FEATURES_TAG, fv.SerializeToString()), when + _value_json(fv)


_DOUBLE = struct.Struct("<d")


class ValueEncoder:
    """The stored forms of one feature's values that share one event time, as a batch run writes them.

    `encode(x)` takes the plain Python value (float, int, str, bool; a datetime for
    timestamp_value) and returns (protobuf form, JSON form, serialized Value), byte for
    byte what `encode_stored` makes of the same value. Everything but the value is
    prepared once, so a float or an int costs ~1 µs instead of ~5.
    """

    def __init__(self, name: str, kind: str, event_micros: int) -> None:
        self.name, self.kind = name, kind
        self.event_time = timestamp_pb2.Timestamp(
            seconds=event_micros // 1_000_000, nanos=event_micros % 1_000_000 * 1000
        )
        self._when = time_key(event_micros)
        self._head = frame(_NAME_TAG, name.encode())
        self._tail = frame(_EVENT_TIME_TAG, timestamp_bytes(event_micros)) + _STATUS_TAG + varint(fs.PRESENT)
        self._json_head = self._when + f'{{"name":"{name}","value":{{"{kind}":'.encode()
        self._json_tail = f'}},"event_time":"{self.event_time.ToJsonString()}","status":"PRESENT"}}'.encode()
        # The bytes before a value of each possible length: time, FeatureValue frame, name, Value frame.
        self._before = {n: self._prefix(n) for n in range(1, 12)}
        fast: dict[str, Callable[[Any], tuple[bytes, bytes, bytes]]] = {
            "float_value": self._float,
            "int64_value": self._int64,
            "bool_value": self._bool,
            "string_value": self._str,
        }
        self.encode: Callable[[Any], tuple[bytes, bytes, bytes]] = fast.get(kind, self._other)

    def _prefix(self, value_len: int) -> bytes:
        value_frame = _VALUE_TAG + varint(value_len)
        payload_len = len(self._head) + len(value_frame) + value_len + len(self._tail)
        return self._when + FEATURES_TAG + varint(payload_len) + self._head + value_frame

    def _stored(self, value: bytes, as_json: str) -> tuple[bytes, bytes, bytes]:
        before = self._before.get(len(value)) or self._prefix(len(value))
        return before + value + self._tail, self._json_head + as_json.encode() + self._json_tail, value

    def _float(self, x: float) -> tuple[bytes, bytes, bytes]:
        return self._stored(_KIND_TAGS["float_value"] + _DOUBLE.pack(x), _float_json(x))

    def _int64(self, n: int) -> tuple[bytes, bytes, bytes]:
        return self._stored(_KIND_TAGS["int64_value"] + varint(n if n >= 0 else n + (1 << 64)), f'"{n}"')

    def _bool(self, b: bool) -> tuple[bytes, bytes, bytes]:
        return self._stored(_KIND_TAGS["bool_value"] + (b"\x01" if b else b"\x00"), "true" if b else "false")

    def _str(self, text: str) -> tuple[bytes, bytes, bytes]:
        return self._stored(frame(_KIND_TAGS["string_value"], text.encode()), json.dumps(text, ensure_ascii=False))

    def _other(self, x: Any) -> tuple[bytes, bytes, bytes]:
        message = value_pb2.Value()
        if self.kind == "timestamp_value":
            message.timestamp_value.FromDatetime(x)
        else:
            setattr(message, self.kind, x)
        proto, as_json = encode_stored(self.name, message, self.event_time)
        return proto, as_json, message.SerializeToString()


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
    stored: list[bytes | None], not_found: list[bytes], cutoffs: list[bytes], expired: Callable[[bytes], bytes]
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
    return parts


def assemble(stored: list[bytes | None], not_found: list[bytes], cutoffs: list[bytes]) -> bytes:
    """The framed FeatureValues of one entity, in request order."""
    return b"".join(_served(stored, not_found, cutoffs, expired_frame))


def assemble_json(stored: list[bytes | None], not_found: list[bytes], cutoffs: list[bytes]) -> bytes:
    """The JSON FeatureValues of one entity, comma-separated, in request order."""
    return b",".join(_served(stored, not_found, cutoffs, expired_json))


def json_string(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode()


def http_body(data: bytes) -> bytes:
    """A serialized google.api.HttpBody holding JSON."""
    return _HTTP_BODY_HEAD + frame(_HTTP_BODY_DATA_TAG, data)

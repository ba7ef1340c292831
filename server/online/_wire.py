"""Write requests parsed with each value left as the bytes it was sent as.

A `map<string, Value>` entry and a `map<string, bytes>` entry are the same on the wire
(key: field 1, value: field 2, length-delimited), so WriteFeaturesRequest and
PushFeaturesRequest (the same fields, the same numbers) parse as `WireWriteRequest`, whose
rows' `values` map each feature name to its serialized Value. The write path then reads a
value's bytes (server.core.codec.ValueEncoder.encode_wire) instead of building a Value
message per value and serializing it again; a value not in the canonical form is parsed
as a Value there. A request whose bytes are not what it re-serializes to (`parse_write_request`)
is parsed as a WriteFeaturesRequest instead: protobuf merges a message field sent in pieces,
and a Value split across one map entry would otherwise keep its last piece only. The message
types are derived from the published descriptors at import, so they follow them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor

from featurestore.serving.v1 import feature_store_service_pb2 as fs

_PACKAGE = "featurestore.internal.wire"
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL


def _field(message: descriptor_pb2.DescriptorProto, source: FieldDescriptor, **changes: Any) -> None:
    kind = changes.get("type", source.type)
    label = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED if source.is_repeated else _OPTIONAL
    added = message.field.add(name=source.name, number=source.number, type=kind, label=label)
    if changes.get("type_name"):
        added.type_name = changes["type_name"]
    elif source.message_type is not None and kind == FieldDescriptor.TYPE_MESSAGE:
        added.type_name = "." + source.message_type.full_name


def _build() -> type[Any]:
    request, row = fs.WriteFeaturesRequest.DESCRIPTOR, fs.EntityRow.DESCRIPTOR
    for other in (fs.PushFeaturesRequest.DESCRIPTOR,):  # parsed with the same type
        if [(f.name, f.number, f.type) for f in other.fields] != [(f.name, f.number, f.type) for f in request.fields]:
            raise RuntimeError(f"{other.full_name} no longer has WriteFeaturesRequest's fields")
    values = row.fields_by_name["values"]
    entry = values.message_type
    assert entry is not None
    if not entry.GetOptions().map_entry:
        raise RuntimeError("EntityRow.values is no longer a map")
    file = descriptor_pb2.FileDescriptorProto(
        name="featurestore/internal/wire.proto",
        package=_PACKAGE,
        syntax="proto3",
        dependency=[timestamp_pb2.DESCRIPTOR.name],
    )
    wire_row = file.message_type.add(name="EntityRow")
    wire_entry = wire_row.nested_type.add(name=entry.name)
    wire_entry.options.map_entry = True
    _field(wire_entry, entry.fields_by_name["key"])
    _field(wire_entry, entry.fields_by_name["value"], type=FieldDescriptor.TYPE_BYTES)
    for field in row.fields:
        if field is values:
            _field(wire_row, field, type_name=f".{_PACKAGE}.EntityRow.{entry.name}")
        else:
            _field(wire_row, field)
    wire_request = file.message_type.add(name="WriteRequest")
    for field in request.fields:
        if field.message_type is row:
            _field(wire_request, field, type_name=f".{_PACKAGE}.EntityRow")
        else:
            _field(wire_request, field)
    pool = descriptor_pool.DescriptorPool()
    timestamp = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(timestamp)
    pool.Add(timestamp)
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.WriteRequest"))


WireWriteRequest = _build()
WireEntityRow = WireWriteRequest.DESCRIPTOR.fields_by_name["rows"].message_type


def wire_rows(rows: Sequence[Any]) -> Sequence[Any]:
    """`rows` as WireWriteRequest rows: as they are if they are, else (EntityRow messages, from
    callers in this process) serialized and parsed again."""
    if not rows or rows[0].DESCRIPTOR is WireEntityRow:
        return rows
    as_bytes = fs.WriteFeaturesRequest(rows=rows).SerializeToString()
    return WireWriteRequest.FromString(as_bytes).rows  # type: ignore[no-any-return]  # a message class built at run time


def parse_write_request(data: bytes) -> Any:
    """A WriteFeaturesRequest's or PushFeaturesRequest's bytes as WireWriteRequest, or, when parsing
    it so dropped anything, as a WriteFeaturesRequest (whose rows `wire_rows` re-reads).

    Parsed as bytes, a map entry whose Value was sent in pieces (protobuf merges them: a
    Timestamp's seconds, then its nanos; a list in two runs) keeps only its last piece. Anything
    dropped shows as a message that re-serializes shorter than it came (so do a key sent twice and
    non-minimal encodings, which both parses read alike); what protobuf libraries write never does.
    A map entry without its key or value re-serializes longer and can hide a drop, but such an entry
    names no feature or holds no value, which fails the whole request. Senders of non-canonical
    bytes pay for the second parse.
    """
    request = WireWriteRequest.FromString(data)
    if request.ByteSize() != len(data):
        return fs.WriteFeaturesRequest.FromString(data)
    return request

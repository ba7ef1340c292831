"""server.core.WriteBatch: the one rows -> writes conversion, and the write path's reading of requests (no servers)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2 as vpb
from server.core import HistoryRecord, KeyWrite, Limits, WriteBatch, codec, copy_tuples, entity_key
from server.core._copy import decode_tuples
from server.core.errors import ServiceError
from server.online import Catalog
from server.online._redis import stored_kind
from server.online._requests import RowsEncoding, encode_rows
from server.online._wire import WireWriteRequest, parse_write_request
from server.registry import Feature

X, S = codec.encoder("x", "int64_value"), codec.encoder("s", "string_value")


def test_a_row_is_one_key_write_with_both_forms_and_a_history_record_per_value() -> None:
    batch = WriteBatch("customer")
    at = batch.event_time(1_700_000_000_123_456)
    batch.add("c1", at, [(X, vpb.Value(int64_value=7)), (S, vpb.Value(string_value="é"))])
    batch.add("c2", at, [])  # no values: nothing to write
    x_proto, x_json, x_value = X.encode(7, at)
    s_proto, s_json, s_value = S.encode("é", at)
    assert batch.online() == [
        KeyWrite(entity_key("customer", "c1"), [(b"x", x_proto), (b"x:j", x_json), (b"s", s_proto), (b"s:j", s_json)])
    ]
    assert batch.history.records() == [
        ("customer", "c1", "x", at.datetime, x_value, x_proto[codec.TIME_BYTES :]),
        ("customer", "c1", "s", at.datetime, s_value, s_proto[codec.TIME_BYTES :]),
    ]
    assert batch.values == 2


def test_plain_values_give_the_same_writes_as_value_messages_and_none_is_no_value() -> None:
    by_message, by_plain = WriteBatch("t"), WriteBatch("t")
    at = by_message.event_time(5)
    by_message.add("e", at, [(X, vpb.Value(int64_value=-3))])
    by_plain.add_plain("e", by_plain.event_time(5), [(X, -3), (S, None)])
    assert (by_plain.online(), by_plain.history.tuples, by_plain.values) == (
        by_message.online(),
        by_message.history.tuples,
        by_message.values,
    )


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5), st.integers(0, 3)), max_size=40))
def test_latest_online_keeps_what_the_only_newer_script_would_after_every_row_in_order(
    rows: list[tuple[int, int, int]],
) -> None:
    """(entity, event time, value) rows: online, per entity the value of the newest time, the later
    row winning a tie; history keeps every row."""
    batch = WriteBatch("t", latest_online=True)
    want: dict[str, tuple[int, int]] = {}
    for entity, when, n in rows:
        batch.add_plain(f"e{entity}", batch.event_time(when), [(X, n)])
        if f"e{entity}" not in want or when >= want[f"e{entity}"][0]:
            want[f"e{entity}"] = (when, n)
    got = {w.key: w.values for w in batch.online()}
    assert got == {
        entity_key("t", e): [(b"x", X.encode(n, codec.EventTime(t))[0]), (b"x:j", X.encode(n, codec.EventTime(t))[1])]
        for e, (t, n) in want.items()
    }
    assert len(batch.history) == len(rows) == batch.values


_KIND_VALUES = {
    "float_value": st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([-0.0, 5e-324, 1e16, 1e300]),
    "int64_value": st.integers(-(2**63), 2**63 - 1) | st.sampled_from([-(2**63), 2**63 - 1, 0, -1]),
    "bool_value": st.booleans(),
    "string_value": st.text(max_size=300) | st.sampled_from(["", "é", "日本語", '"\\\n\u2028', "x" * 20_000]),
    "float_list_value": st.lists(st.floats(), max_size=5),
    "embedding_value": st.lists(st.floats(width=32), max_size=5),
    "int64_list_value": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5),
    "string_list_value": st.lists(st.text(max_size=10), max_size=5),
}
_TIMES = st.integers(-(2**40), 2**52) | st.sampled_from([0, 1_700_000_000_000_000, 1_700_000_000_123_000, -1])


@given(st.data(), st.sampled_from(sorted(_KIND_VALUES)), st.booleans(), st.booleans())
def test_columns_give_the_same_writes_as_plain_rows_for_every_kind(
    data: st.DataObject, kind: str, one_time: bool, latest_online: bool
) -> None:
    rows = data.draw(st.integers(0, 12))
    ids = data.draw(st.lists(st.sampled_from(["a", "b", "é"]), min_size=rows, max_size=rows))
    xs = data.draw(st.lists(st.none() | _KIND_VALUES[kind], min_size=rows, max_size=rows))
    ys = data.draw(st.lists(st.none() | _KIND_VALUES["float_value"], min_size=rows, max_size=rows))
    micros = data.draw(st.lists(_TIMES, min_size=rows, max_size=rows))
    x, y = codec.encoder("x", kind), codec.encoder("y", "float_value")
    columnar, plain = (WriteBatch("t", latest_online=latest_online) for _ in range(2))
    times = [columnar.event_time(m) for m in micros]
    columnar.add_columns(ids, times[0] if one_time and times else times, [(x, xs), (y, ys)])
    for i, entity_id in enumerate(ids):
        plain.add_plain(entity_id, times[0] if one_time else times[i], [(x, xs[i]), (y, ys[i])])
    assert columnar.online() == plain.online()
    assert columnar.history.tuples == plain.history.tuples
    assert columnar.values == plain.values
    stored = x.encode_many(xs, times)
    assert stored == [None if v is None else x.encode(v, at) for v, at in zip(xs, times, strict=True)]
    for v, at, forms in zip(xs, times, stored, strict=True):
        if v is not None and kind in ("float_value", "int64_value", "bool_value", "string_value"):
            value = vpb.Value()
            setattr(value, kind, v)
            assert forms == x.encode_value(value, at)  # what WriteFeatures stores


_WIRE_KINDS = ("float_value", "int64_value", "bool_value", "string_value")


def _value(kind: str, v: object) -> vpb.Value:
    value = vpb.Value()
    if kind.endswith("_list_value") or kind == "embedding_value":
        getattr(value, kind).values.extend(v)
    else:
        setattr(value, kind, v)
    return value


@given(st.data(), st.sampled_from(sorted(_KIND_VALUES)), _TIMES)
def test_a_value_from_its_bytes_is_stored_as_the_value_message_would_be(
    data: st.DataObject, kind: str, micros: int
) -> None:
    """encode_wire reads the canonical bytes of the fast kinds, the same bytes as encode_value; None for the rest."""
    value = _value(kind, data.draw(_KIND_VALUES[kind]))
    encoder, at = codec.encoder("x", kind), codec.EventTime(micros)
    forms = encoder.encode_wire(value.SerializeToString(), at)
    if kind in _WIRE_KINDS:
        assert forms == encoder.encode_value(value, at)
    else:
        assert forms is None


def _varint(n: int, extra: int = 0) -> bytes:
    """A varint, written with `extra` needless bytes if asked (not as protobuf writes it)."""
    out = bytearray(codec.varint(n))
    for _ in range(extra):
        out[-1] |= 0x80
        out.append(0)
    return bytes(out)


_ODD_BYTES = st.one_of(
    st.binary(max_size=24),
    st.builds(lambda n, extra: b"\x10" + _varint(n, extra), st.integers(0, 2**64 - 1), st.integers(0, 2)),
    st.builds(lambda n, extra: b"\x20" + _varint(n, extra), st.integers(0, 3), st.integers(0, 2)),
    st.builds(
        lambda s, extra, more: b"\x1a" + _varint(max(0, len(s) + more), extra) + s,
        st.binary(max_size=20) | st.text(max_size=20).map(str.encode),
        st.integers(0, 2),
        st.integers(-1, 1),
    ),
    st.builds(
        lambda a, b: a + b, st.sampled_from([b"\x09" + bytes(8), b"\x20\x01", b"\x10\x05"]), st.binary(max_size=10)
    ),
)


@given(_ODD_BYTES, st.sampled_from(_WIRE_KINDS))
def test_bytes_not_written_as_protobuf_writes_them_are_left_to_the_value_parser(raw: bytes, kind: str) -> None:
    """Whatever the bytes: encode_wire gives None, or exactly what parsing them as a Value would store."""
    encoder, at = codec.encoder("x", kind), codec.EventTime(1_700_000_000_000_000)
    forms = encoder.encode_wire(raw, at)
    if forms is None:
        return
    value = vpb.Value.FromString(raw)
    assert value.WhichOneof("kind") == kind
    assert forms == encoder.encode_value(value, at)


_FEATURES = {"f": "float_value", "n": "int64_value", "s": "string_value", "b": "bool_value", "l": "float_list_value"}
_TYPES = {"float_value": "FLOAT", "int64_value": "INT64", "string_value": "STRING", "bool_value": "BOOL"}


def _catalog() -> Catalog:
    catalog = Catalog()
    types = {**_TYPES, "float_list_value": "FLOAT_LIST"}
    catalog.replace(1, [Feature(name=n, entity_type="t", value_type=types[k]) for n, k in _FEATURES.items()], [])
    return catalog


@st.composite
def _raw_value(draw: st.DrawFn, kind: str) -> bytes:
    """A serialized Value of `kind`: canonical, or with an earlier value of it in front (the last one counts)."""
    raw = _value(kind, draw(_KIND_VALUES[kind])).SerializeToString()
    if draw(st.booleans()):
        raw = _value(kind, draw(_KIND_VALUES[kind])).SerializeToString() + raw
    return raw


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "é"]),
            st.integers(0, 1_700_000_000_000_000),
            st.dictionaries(st.sampled_from(sorted(_FEATURES)), st.none(), max_size=5),
        ),
        max_size=8,
    ),
    st.data(),
)
def test_a_write_request_read_as_bytes_gives_the_writes_its_value_messages_give(
    rows: list[tuple[str, int, dict[str, None]]], data: st.DataObject
) -> None:
    request = WireWriteRequest(entity_type="t")
    for entity_id, micros, names in rows:
        row = request.rows.add(entity_id=entity_id)
        row.event_time.seconds, row.event_time.nanos = divmod(micros, 1_000_000)
        row.event_time.nanos *= 1000
        for name in names:
            row.values[name] = data.draw(_raw_value(_FEATURES[name]))
    as_messages = fs.WriteFeaturesRequest.FromString(request.SerializeToString())
    want = WriteBatch("t")  # what the write path did with Value messages
    for row in as_messages.rows:
        values = [(codec.encoder(name, value.WhichOneof("kind")), value) for name, value in row.values.items()]
        want.add(row.entity_id, want.event_time(codec.micros_of(row.event_time)), values)
    sent = WireWriteRequest.FromString(request.SerializeToString())  # as the server parses it
    got = encode_rows(_catalog(), "t", sent.rows, Limits(max_values=1_000), now_seconds=2e9)
    assert (got.online, got.history.tuples, got.values) == (want.online(), want.history.tuples, want.values)
    again = encode_rows(_catalog(), "t", as_messages.rows, Limits(max_values=1_000), now_seconds=2e9)  # in-process
    assert (again.online, again.history.tuples) == (got.online, got.history.tuples)


def _frame(field: int, payload: bytes) -> bytes:
    return bytes([field << 3 | 2]) + codec.varint(len(payload)) + payload


def test_a_value_sent_in_pieces_in_one_map_entry_is_merged_as_protobuf_merges_it() -> None:
    first = vpb.Value(float_list_value=vpb.DoubleList(values=[1.5])).SerializeToString()
    second = vpb.Value(float_list_value=vpb.DoubleList(values=[2.5])).SerializeToString()
    entry = _frame(1, b"l") + _frame(2, first) + _frame(2, second)  # one entry, its Value in two pieces
    time = fs.EntityRow(event_time=Timestamp(seconds=1_700_000_000)).SerializeToString()
    data = _frame(1, b"t") + _frame(2, _frame(1, b"a") + _frame(3, entry) + time)
    as_messages = fs.WriteFeaturesRequest.FromString(data)
    assert list(as_messages.rows[0].values["l"].float_list_value.values) == [1.5, 2.5]
    assert len(WireWriteRequest.FromString(data).rows[0].values["l"]) == len(second)  # read as bytes: the last piece
    parsed = parse_write_request(data)
    assert not isinstance(parsed, WireWriteRequest)  # so the request is read as Value messages
    limits = Limits(max_values=1_000)
    got = encode_rows(_catalog(), "t", parsed.rows, limits, now_seconds=2e9)
    want = encode_rows(_catalog(), "t", as_messages.rows, limits, now_seconds=2e9)
    assert (got.online, got.history.tuples) == (want.online, want.history.tuples)
    canonical = as_messages.SerializeToString()
    assert isinstance(parse_write_request(canonical), WireWriteRequest)  # what protobuf writes: read as bytes


@pytest.mark.parametrize(
    "unknown",
    [
        b"\xf8\x06\x05",  # field 111, a varint
        b"\x7b" * 98 + b"\x7c" * 98,  # field 15 as 98 nested groups: parses alone, not inside a response
    ],
)
def test_fields_a_value_does_not_know_are_not_stored(unknown: bytes) -> None:
    """A Value with unknown fields is stored as the Value without them, so every read that holds it
    parses (nested groups stored and served would pass protobuf's nesting limit in a batch response)."""
    plain = vpb.Value(float_value=1.5).SerializeToString()
    sent, want = WireWriteRequest(entity_type="t"), WireWriteRequest(entity_type="t")
    for request, raw in ((sent, plain + unknown), (want, plain)):
        row = request.rows.add(entity_id="a")
        row.event_time.seconds = 1_700_000_000
        row.values["f"] = raw
    limits = Limits(max_values=1_000)
    got = encode_rows(_catalog(), "t", parse_write_request(sent.SerializeToString()).rows, limits, now_seconds=2e9)
    plain_write = encode_rows(_catalog(), "t", want.rows, limits, now_seconds=2e9)
    assert (got.online, got.history.tuples) == (plain_write.online, plain_write.history.tuples)
    stored = got.online[0].values[0][1]
    batch = codec.assemble_batch(["a"], [stored], [codec.not_found_frame("f")], [codec.NEVER_EXPIRES])
    response = fs.BatchGetFeaturesResponse.FromString(codec.frame(codec.BATCH_ENTITY_TYPE_TAG, b"t") + b"".join(batch))
    assert response.entities[0].features[0].value.float_value == 1.5


def test_a_value_of_another_kind_or_feature_is_named_and_a_malformed_one_fails_the_request() -> None:
    request = WireWriteRequest(entity_type="t")
    row = request.rows.add(entity_id="a")
    row.event_time.seconds = 1_700_000_000
    row.values["f"] = vpb.Value(int64_value=3).SerializeToString()
    row.values["zz"] = vpb.Value(float_value=1.0).SerializeToString()
    with pytest.raises(ServiceError) as info:
        encode_rows(_catalog(), "t", request.rows, Limits(max_values=1_000), now_seconds=2e9)
    paths = sorted(v.field for v in info.value.violations)
    assert paths == ["rows[0].values[f]", "rows[0].values[zz]"], paths
    row.values["s"] = b"\x1a\x02\xff\xfe"  # a string_value that is not UTF-8
    with pytest.raises(ServiceError) as info:
        encode_rows(_catalog(), "t", request.rows, Limits(max_values=1_000), now_seconds=2e9)
    assert [v.field for v in info.value.violations] == ["request"]
    assert "is not a valid featurestore.serving.v1.WriteFeaturesRequest" in info.value.violations[0].description


_RECORDS = st.tuples(
    st.text(max_size=20),
    st.text(max_size=20),
    st.text(max_size=20),
    st.datetimes(timezones=st.just(UTC)),
    st.binary(max_size=5000),
    st.binary(max_size=20),
)


@given(st.lists(_RECORDS, max_size=5))
def test_history_tuples_decode_to_their_records(records: list[HistoryRecord]) -> None:
    """A record's binary COPY tuple holds its fields (lengths past 4 KiB, times before 1970 and 2000)."""
    assert decode_tuples(copy_tuples(records)) == records


@given(st.lists(st.tuples(st.sampled_from(["a", "é"]), _TIMES, st.none() | _KIND_VALUES["string_value"]), max_size=6))
def test_a_batch_builds_the_tuples_of_its_records(rows: list[tuple[str, int, str | None]]) -> None:
    """WriteBatch's tuples, built from prepared parts, are those of its records built one by one."""
    batch = WriteBatch("t")
    for entity_id, micros, text in rows:
        batch.add_plain(entity_id, batch.event_time(micros), [(S, text), (X, micros)])
    records = batch.history.records()
    assert batch.history.tuples == copy_tuples(records)
    assert [(r[1], r[2], r[4]) for r in records] == [
        (e, name, enc.encode(v, codec.EventTime(m))[2])
        for e, m, text in rows
        for name, enc, v in (("s", S, text), ("x", X, m))
        if v is not None
    ]
    assert batch.history.months() == {datetime(r[3].year, r[3].month, 1, tzinfo=UTC).date() for r in records}


@given(st.data(), st.sampled_from(sorted(_KIND_VALUES)), st.integers(1, 300), _TIMES)
def test_the_online_store_reads_the_kind_a_stored_form_holds(
    data: st.DataObject, kind: str, name_length: int, micros: int
) -> None:
    """stored_kind, short frames and names (its fast path) or long ones."""
    encoder = codec.encoder("n" * name_length, kind)
    proto, _, _ = encoder.encode(data.draw(_KIND_VALUES[kind]), codec.EventTime(micros))
    assert stored_kind(proto) == vpb.Value.DESCRIPTOR.fields_by_name[kind].number


def _list_rows(items: list[int]) -> Any:  # a WireWriteRequest (a class built at run time)
    request = WireWriteRequest(entity_type="t")
    for i, n in enumerate(items):
        row = request.rows.add(entity_id=f"e{i}")
        row.event_time.seconds = 1_700_000_000
        row.values["l"] = vpb.Value(float_list_value=vpb.DoubleList(values=[0.5] * n)).SerializeToString()
    return request


def test_a_list_value_over_max_list_items_is_named_and_nothing_is_written() -> None:
    limits = Limits(max_values=1_000, max_list_items=100)
    written = encode_rows(_catalog(), "t", _list_rows([100]).rows, limits, now_seconds=2e9)
    assert written.values == 1
    with pytest.raises(ServiceError) as info:
        encode_rows(_catalog(), "t", _list_rows([3, 101]).rows, limits, now_seconds=2e9)
    assert info.value.code.name == "INVALID_ARGUMENT"
    assert [(v.field, v.description) for v in info.value.violations] == [
        ("rows[1].values[l]", "holds 101 items; a list value may hold at most 100 (max_list_items)")
    ]


def test_a_slice_of_encoding_counts_a_lists_items_toward_its_budget() -> None:
    """Rows of 1,600-item lists (100 values' worth each, +1 for the value): a budget of 500 stops after 5 rows;
    scalar rows spend one per value."""
    encoding = RowsEncoding(_catalog(), "t", _list_rows([1_600] * 12).rows, Limits(max_values=1_000), 2e9)
    assert encoding.encode(0, 12, 500) == 5
    assert encoding.encode(5, 12, 500) == 10
    assert encoding.encode(10, 12, 500) == 12
    assert encoding.result().values == 12
    scalars = WireWriteRequest(entity_type="t")
    for i in range(800):
        row = scalars.rows.add(entity_id=f"e{i}")
        row.event_time.seconds = 1_700_000_000
        row.values["f"] = vpb.Value(float_value=1.0).SerializeToString()
    assert RowsEncoding(_catalog(), "t", scalars.rows, Limits(max_values=1_000), 2e9).encode(0, 800, 500) == 500

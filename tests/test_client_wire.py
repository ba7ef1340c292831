"""The client's numpy reader of BatchGetFeatures responses (featurestore._wire) against protobuf.

Frames of a response are built two ways: from its bytes by `_wire` (what the client does)
and from the parsed message (the protobuf path, which `_wire` falls back to). They must be
equal for every value type, status, missing event time and encoding the protobuf spec allows;
responses in a form `_wire` does not read must take the fallback and still give the same frame.
The end-to-end dtypes against a real server are in test_client.py.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from featurestore import _common as c
from featurestore import _wire
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2 as vpb

INT_MIN, INT_MAX = -(2**63), 2**63 - 1
TYPES = {
    "f_float": "FLOAT",
    "f_int": "INT64",
    "f_string": "STRING",
    "f_bool": "BOOL",
    "f_bytes": "BYTES",
    "f_time": "TIMESTAMP",
    "f_floats": "FLOAT_LIST",
    "f_ints": "INT64_LIST",
    "f_strings": "STRING_LIST",
    "f_bools": "BOOL_LIST",
    "f_embedding": "EMBEDDING",
}


def _ts(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def _values(i: int) -> dict[str, vpb.Value]:
    """Entity i's values: varied signs, sizes, empty lists and non-ASCII text."""
    sign = -1 if i % 2 else 1
    return {
        "f_float": vpb.Value(float_value=[0.0, -1.5, math.nan, 1e300][i % 4]),
        "f_int": vpb.Value(int64_value=[0, INT_MIN, INT_MAX, sign * 300][i % 4]),
        "f_string": vpb.Value(string_value=["", "é漢", "x" * 200][i % 3]),
        "f_bool": vpb.Value(bool_value=i % 2 == 0),
        "f_bytes": vpb.Value(bytes_value=bytes(range(i % 5))),
        "f_time": vpb.Value(timestamp_value=_ts(sign * 1_700_000_000 * (i % 3), 123_456_789 * (i % 2))),
        "f_floats": vpb.Value(float_list_value=vpb.DoubleList(values=[i / 3] * (i % 3))),
        "f_ints": vpb.Value(int64_list_value=vpb.Int64List(values=[INT_MIN, i])),
        "f_strings": vpb.Value(string_list_value=vpb.StringList(values=["a", str(i)])),
        "f_bools": vpb.Value(bool_list_value=vpb.BoolList(values=[True, False][: i % 3])),
        "f_embedding": vpb.Value(embedding_value=vpb.FloatVector(values=[0.25 * i, -1.0] * 20)),
    }


def _response(entities: int = 7) -> fs.BatchGetFeaturesResponse:
    """Every type; entity 2 has no value at all, entity 3's are EXPIRED, entity 4's have no event time."""
    response = fs.BatchGetFeaturesResponse(entity_type="customer")
    for i in range(entities):
        entity = response.entities.add(entity_id=f"c{i}")
        for name, value in _values(i).items():
            if i == 2:
                entity.features.add(name=name, status=fs.NOT_FOUND)
                continue
            status = fs.EXPIRED if i == 3 else fs.PRESENT
            fv = entity.features.add(name=name, value=value, status=status)
            if i != 4:
                fv.event_time.CopyFrom(_ts(1_600_000_000 + i, i * 1000))
    return response


def _frames(body: bytes, output: c.Output, status: bool, times: bool, names: list[str]) -> tuple[Any, Any, Any]:
    """(the frame from the bytes, the frame through protobuf, the BytesFrame)."""
    read = c.BytesFrame(body, names, status, times)
    slow = c.batch_frame(fs.BatchGetFeaturesResponse.FromString(body), names, status, times)
    registry = {name: TYPES[name] for name in read.missing}
    assert sorted(read.missing) == sorted(slow.missing)
    return read.output(registry, output), slow.output(registry, output), read


def _assert_same(fast: Any, slow: Any) -> None:
    if isinstance(fast, pd.DataFrame):
        pd.testing.assert_frame_equal(fast, slow)
        for name in fast.columns:  # lists and embeddings: arrays of the same dtype
            for a, b in zip(fast[name], slow[name], strict=True):
                if hasattr(a, "dtype"):
                    assert a.dtype == b.dtype
                    assert a.tolist() == b.tolist()
    else:
        assert fast.schema == slow.schema
        for name in fast.column_names:  # NaN != NaN for Table.equals: compare with NaN spelled out
            assert _nan_spelled(fast.column(name).to_pylist()) == _nan_spelled(slow.column(name).to_pylist()), name


def _nan_spelled(values: list[Any]) -> list[Any]:
    return ["NaN" if isinstance(v, float) and math.isnan(v) else v for v in values]


@pytest.mark.parametrize("output", ["pandas", "arrow"])
@pytest.mark.parametrize(("status", "times"), [(False, False), (True, True)])
def test_every_type_and_status_reads_as_protobuf_does(output: c.Output, status: bool, times: bool) -> None:
    body = _response().SerializeToString()
    fast, slow, read = _frames(body, output, status, times, list(TYPES))
    assert read.reader == "numpy"  # no fallback
    _assert_same(fast, slow)
    if output == "pandas":
        assert fast["f_int"].tolist()[:3] == [0, INT_MIN, pd.NA]
        assert fast["entity_id"].tolist() == [f"c{i}" for i in range(7)]


def test_columns_without_any_value_take_the_registry_types() -> None:
    response = fs.BatchGetFeaturesResponse(entity_type="customer")
    for i in range(3):
        entity = response.entities.add(entity_id=f"n{i}")
        for name in TYPES:
            entity.features.add(name=name, status=fs.NOT_FOUND)
    fast, slow, read = _frames(response.SerializeToString(), "pandas", True, True, list(TYPES))
    assert read.reader == "numpy"
    assert sorted(read.missing) == sorted(TYPES)
    _assert_same(fast, slow)
    assert str(fast["f_int"].dtype) == "Int64"


def test_no_entities() -> None:
    body = fs.BatchGetFeaturesResponse(entity_type="customer").SerializeToString()
    fast, slow, _ = _frames(body, "pandas", False, False, ["f_int", "f_time"])
    _assert_same(fast, slow)
    assert list(fast.columns) == ["entity_id", "f_int", "f_time"]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (payloads here are under 128 bytes)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def test_fields_in_another_order_and_unknown_fields_are_read() -> None:
    """The spec lets a writer order fields freely and add fields an older reader skips."""
    value = vpb.Value(int64_value=-5).SerializeToString()
    unknown = bytes([15 << 3 | 0, 7]) + bytes([14 << 3 | 5]) + b"\x00" * 4 + bytes([13 << 3 | 1]) + b"\x00" * 8
    entities = b""
    for i in range(3):
        feature = bytes([4 << 3, fs.PRESENT]) + unknown + _field(2, value) + _field(1, b"f_int")
        if i == 1:
            feature = _field(1, b"f_int") + bytes([4 << 3, fs.NOT_FOUND])
        entities += _field(2, _field(3, feature) + unknown + _field(1, f"e{i}".encode()))
    body = _field(1, b"customer") + entities
    fast, slow, read = _frames(body, "pandas", True, True, ["f_int"])
    assert read.reader == "numpy"
    _assert_same(fast, slow)
    assert fast["f_int"].tolist() == [-5, pd.NA, -5]


@pytest.mark.parametrize("length", [8, 0])
def test_lists_all_of_one_length_read_as_protobuf_does(length: int) -> None:
    """Embeddings of one length and nothing missing take the pandas path for a matrix's rows."""
    response = fs.BatchGetFeaturesResponse(entity_type="customer")
    for i in range(4):
        value = vpb.Value(embedding_value=vpb.FloatVector(values=[i / 4] * length))
        response.entities.add(entity_id=f"c{i}").features.add(name="f_embedding", value=value, status=fs.PRESENT)
    fast, slow, read = _frames(response.SerializeToString(), "pandas", False, False, ["f_embedding"])
    assert read.reader == "numpy"
    _assert_same(fast, slow)
    assert [row.tolist() for row in fast["f_embedding"]] == [[i / 4] * length for i in range(4)]


def test_a_value_of_another_kind_is_missing() -> None:
    """A column's values are read one column at a time when all hold the same field; one of another
    kind (a feature re-registered with another type) makes the reader walk every Value instead."""
    entities = b""
    for i in range(3):
        value = vpb.Value(string_value="x") if i == 1 else vpb.Value(int64_value=i - 5)
        feature = _field(1, b"f_int") + _field(2, value.SerializeToString()) + bytes([4 << 3, fs.PRESENT])
        entities += _field(2, _field(1, f"e{i}".encode()) + _field(3, feature))
    read = c.BytesFrame(_field(1, b"customer") + entities, ["f_int"], False, False)
    frame = read.output({}, "pandas")
    assert read.reader == "numpy"
    assert str(frame["f_int"].dtype) == "Int64"
    assert frame["f_int"].tolist() == [-5, pd.NA, -3]


@pytest.mark.parametrize(
    "case",
    [
        "unpacked list",
        "split packed list",
        "two values",
        "a value of two fields",
        "uneven entities",
        "big field number",
        "far timestamp",
    ],
)
def test_forms_numpy_does_not_read_fall_back_to_protobuf(case: str) -> None:
    response = _response(3)
    body = response.SerializeToString()
    names = list(TYPES)
    if case == "unpacked list":  # repeated double, each element a field of its own
        elements = b"".join(
            bytes([1 << 3 | 1]) + vpb.DoubleList(values=[x]).SerializeToString()[2:] for x in (1.0, 2.0)
        )
        feature = _field(1, b"f_floats") + _field(2, _field(7, elements)) + bytes([4 << 3, fs.PRESENT])
        body = _field(2, _field(1, b"u") + _field(3, feature))
        names = ["f_floats"]
    elif case == "split packed list":
        packed = [vpb.DoubleList(values=[x]).SerializeToString() for x in (1.0, 2.0)]
        feature = _field(1, b"f_floats") + _field(2, _field(7, b"".join(packed))) + bytes([4 << 3, fs.PRESENT])
        body = _field(2, _field(1, b"u") + _field(3, feature))
        names = ["f_floats"]
    elif case == "two values":  # a singular field sent twice: the last one wins
        twice = _field(2, vpb.Value(int64_value=1).SerializeToString()) * 2
        body = _field(2, _field(1, b"u") + _field(3, _field(1, b"f_int") + twice + bytes([4 << 3, fs.PRESENT])))
        names = ["f_int"]
    elif case == "a value of two fields":  # a oneof set twice: the last one wins
        twice = vpb.Value(int64_value=1).SerializeToString() + vpb.Value(int64_value=2).SerializeToString()
        body = _field(2, _field(1, b"u") + _field(3, _field(1, b"f_int") + _field(2, twice) + bytes([4 << 3, 1])))
        names = ["f_int"]
    elif case == "uneven entities":
        del response.entities[1].features[-1]
        body = response.SerializeToString()
    elif case == "big field number":
        body = _field(2, _field(1, b"u") + bytes([0x80, 0x01, 1]))  # field 16, a varint: tag 128 in two bytes
        names = []
    elif case == "far timestamp":
        response.entities[0].features[5].value.timestamp_value.seconds = 253402300799  # 9999-12-31
        body = response.SerializeToString()
    registry = {name: TYPES[name] for name in names}
    with pytest.raises(_wire.Irregular):
        _wire.BatchFrame(body, names, True, True).output(registry, "arrow")
    if case == "uneven entities":
        return  # protobuf's path refuses it too (the server never sends one)
    read = c.BytesFrame(body, names, True, True)
    slow = c.batch_frame(fs.BatchGetFeaturesResponse.FromString(body), names, True, True)
    _assert_same(read.output(registry, "arrow"), slow.output(registry, "arrow"))
    assert read.reader == "protobuf"

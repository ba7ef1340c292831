"""The stored forms of values: JSON rendering and ordering of event times (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from featurestore import python_value
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2 as vpb
from server.core import codec

scalars = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(lambda x: vpb.Value(float_value=x)),
    st.integers(-(2**63), 2**63 - 1).map(lambda n: vpb.Value(int64_value=n)),
    st.text().map(lambda s: vpb.Value(string_value=s)),
    st.booleans().map(lambda b: vpb.Value(bool_value=b)),
)
times = st.integers(-(10**16), 10**17).map(
    lambda us: timestamp_pb2.Timestamp(seconds=us // 10**6, nanos=us % 10**6 * 1000)
)


@given(value=scalars, when=times)
def test_fast_json_is_byte_identical_to_json_format(value: vpb.Value, when: timestamp_pb2.Timestamp) -> None:
    _, stored = codec.encode_stored("some_feature", value, when)
    fv = fs.FeatureValue(name="some_feature", value=value, event_time=when, status=fs.PRESENT)
    assert stored[codec.TIME_BYTES :] == codec.to_json(fv)


@given(a=times, b=times)
def test_time_keys_order_like_the_times(a: timestamp_pb2.Timestamp, b: timestamp_pb2.Timestamp) -> None:
    ka, kb = codec.time_key(codec.micros_of(a)), codec.time_key(codec.micros_of(b))
    assert (ka < kb) == (codec.micros_of(a) < codec.micros_of(b))


@given(when=times)
def test_timestamp_bytes_parse_back(when: timestamp_pb2.Timestamp) -> None:
    assert timestamp_pb2.Timestamp.FromString(codec.timestamp_bytes(codec.micros_of(when))) == when


timestamp_values = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
).map(lambda d: vpb.Value(timestamp_value=_timestamp(d)))


def _timestamp(d: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(d)
    return out


@given(value=st.one_of(scalars, timestamp_values), when=times)
def test_the_pipeline_encoder_stores_what_the_write_path_stores(
    value: vpb.Value, when: timestamp_pb2.Timestamp
) -> None:
    kind = value.WhichOneof("kind")
    assert kind is not None
    plain = python_value(value)
    encoder = codec.ValueEncoder("some_feature", kind, codec.micros_of(when))
    assert encoder.encode(plain) == (*codec.encode_stored("some_feature", value, when), value.SerializeToString())


@given(value=st.one_of(scalars, timestamp_values), when=times)
def test_a_stored_frame_ends_with_its_status(value: vpb.Value, when: timestamp_pb2.Timestamp) -> None:
    # The point-in-time join (server/offline/_asof_sql.py) marks a value EXPIRED in SQL by
    # setting a stored frame's last byte, and serves it as TrainingExample.features by
    # changing its first (the field tag).
    proto, _ = codec.encode_stored("some_feature", value, when)
    frame = proto[codec.TIME_BYTES :]
    assert frame.endswith(b"\x20" + bytes([fs.PRESENT]))
    expired = frame[:-1] + bytes([fs.EXPIRED])
    assert expired == codec.expired_frame(proto)
    [served] = fs.TrainingExample.FromString(b"\x22" + expired[1:]).features
    want = fs.FeatureValue(name="some_feature", value=value, event_time=when, status=fs.EXPIRED)
    assert served.SerializeToString() == want.SerializeToString()  # bytes: a NaN value equals itself


@given(
    st.lists(st.tuples(st.text(min_size=1, max_size=200), st.lists(st.booleans(), min_size=3, max_size=3)), max_size=6),
    st.booleans(),
    st.integers(min_value=0, max_value=20_000),
    st.booleans(),
)
def test_batch_framing_is_that_of_each_entity(
    entities: list[tuple[str, list[bool]]], expire: bool, size: int, ages: bool
) -> None:
    # assemble_batch is the one-pass form of assemble + two frames per entity: the same bytes and
    # the same count of expired values (with ids past 127 bytes and entities past 16 KiB too),
    # whether values are missing or not, and with or without features that have a max age.
    micros = int(datetime(2026, 1, 2, tzinfo=UTC).timestamp() * 1_000_000)
    names = ["f_float", "f_text", "f_int"]
    values = [vpb.Value(float_value=0.5), vpb.Value(string_value="x" * size), vpb.Value(int64_value=-(2**63))]
    forms = [
        codec.encoder(n, v.WhichOneof("kind") or "").encode_value(v, codec.EventTime(micros))[0]
        for n, v in zip(names, values, strict=True)
    ]
    not_found = [codec.not_found_frame(n) for n in names]
    limit = codec.time_key(micros + 1 if expire else micros - 1)
    cutoffs = [limit, codec.NEVER_EXPIRES, limit] if ages else [codec.NEVER_EXPIRES] * 3
    stored = [forms[j] if present else None for _, states in entities for j, present in enumerate(states)]
    ids = [entity_id for entity_id, _ in entities]
    want_expired, got_expired = [0], [0]
    want = [
        codec.frame(
            codec.BATCH_ENTITIES_TAG,
            codec.frame(codec.ENTITY_ID_TAG, entity_id.encode())
            + codec.assemble(stored[i * 3 : (i + 1) * 3], not_found, cutoffs, want_expired),
        )
        for i, entity_id in enumerate(ids)
    ]
    assert codec.assemble_batch(ids, stored, not_found, cutoffs, got_expired) == want
    assert got_expired == want_expired
    assert [e.entity_id for e in fs.BatchGetFeaturesResponse.FromString(b"".join(want)).entities] == ids

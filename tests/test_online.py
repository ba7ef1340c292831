"""The online store: typed round trips, statuses, write ordering, limits, REST shapes."""

from __future__ import annotations

import math
import random
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import redis
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from featurestore import FeatureStoreClient, error_details
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2 as vpb
from tests._helpers import eventually
from tests._http import Rest
from tests._online import ago, f64, get, i64, now, register, row, ts, wait_servable, write

pytestmark = pytest.mark.usefixtures("empty_registry", "empty_online")

EMBEDDING = [random.Random(7).uniform(-1, 1) for _ in range(1536)]
TYPED_VALUES: list[tuple[str, int, vpb.Value]] = [
    ("v_int_max", pb.INT64, vpb.Value(int64_value=2**63 - 1)),
    ("v_int_min", pb.INT64, vpb.Value(int64_value=-(2**63))),
    ("v_int_zero", pb.INT64, vpb.Value(int64_value=0)),
    ("v_float", pb.FLOAT, vpb.Value(float_value=1234.5678)),
    ("v_nan", pb.FLOAT, vpb.Value(float_value=math.nan)),
    ("v_inf", pb.FLOAT, vpb.Value(float_value=-math.inf)),
    ("v_string", pb.STRING, vpb.Value(string_value='Grüße 売上 🚀 "q" ; --')),
    ("v_empty_string", pb.STRING, vpb.Value(string_value="")),
    ("v_bool", pb.BOOL, vpb.Value(bool_value=False)),
    ("v_bytes", pb.BYTES, vpb.Value(bytes_value=bytes(range(256)))),
    ("v_time", pb.TIMESTAMP, vpb.Value(timestamp_value=ts(datetime(1969, 7, 20, 20, 17, tzinfo=UTC)))),
    ("v_floats", pb.FLOAT_LIST, vpb.Value(float_list_value=vpb.DoubleList(values=[1.5, -0.0, 1e308]))),
    ("v_ints", pb.INT64_LIST, vpb.Value(int64_list_value=vpb.Int64List(values=[]))),
    ("v_strings", pb.STRING_LIST, vpb.Value(string_list_value=vpb.StringList(values=["a", "", "ü"]))),
    ("v_bools", pb.BOOL_LIST, vpb.Value(bool_list_value=vpb.BoolList(values=[True, False]))),
    ("v_embedding", pb.EMBEDDING, vpb.Value(embedding_value=vpb.FloatVector(values=EMBEDDING))),
]


def _same_value(a: vpb.Value, b: vpb.Value) -> bool:
    if a.WhichOneof("kind") == "float_value" and math.isnan(b.float_value):
        return math.isnan(a.float_value)
    return a == b


def test_every_value_type_round_trips(client: FeatureStoreClient) -> None:
    for name, value_type, _ in TYPED_VALUES:
        register(client, name, value_type)
    names = [name for name, _, _ in TYPED_VALUES]
    wait_servable(client, "customer", *names)
    when = ago(minutes=5)
    response = write(client, [row("c1", when, **{n: v for n, _, v in TYPED_VALUES})])
    assert (response.written_values, response.skipped_values) == (len(TYPED_VALUES), 0)
    got = get(client, "c1", *names)
    for name, _, value in TYPED_VALUES:
        assert got[name].status == fs.PRESENT, name
        assert got[name].event_time == ts(when)
        if name == "v_embedding":  # float32 on the wire
            assert got[name].value.embedding_value.values == pytest.approx(EMBEDDING, rel=1e-6)
        else:
            assert _same_value(got[name].value, value), name


def test_not_found_and_expired(client: FeatureStoreClient) -> None:
    register(client, "fresh", pb.FLOAT, max_age=timedelta(hours=1))
    register(client, "stale", pb.FLOAT, max_age=timedelta(hours=1))
    register(client, "never", pb.FLOAT)
    wait_servable(client, "customer", "fresh", "stale", "never")
    write(client, [row("c1", ago(minutes=59), fresh=f64(1.0)), row("c1", ago(minutes=61), stale=f64(2.0))])
    got = get(client, "c1", "fresh", "stale", "never")
    assert got["fresh"].status == fs.PRESENT
    assert got["stale"].status == fs.EXPIRED
    assert got["stale"].value.float_value == 2.0  # the value is returned, marked expired
    assert got["never"].status == fs.NOT_FOUND
    assert not got["never"].HasField("value")
    unknown_entity = get(client, "nobody", "fresh")
    assert unknown_entity["fresh"].status == fs.NOT_FOUND


def test_max_age_defaults_to_twice_the_frequency(client: FeatureStoreClient) -> None:
    feature = pb.Feature(name="daily", entity_type="customer", value_type=pb.FLOAT, frequency=pb.DAILY)
    client.registry.CreateFeature(rs.CreateFeatureRequest(feature=feature))
    wait_servable(client, "customer", "daily")
    write(client, [row("a", ago(hours=47), daily=f64(1)), row("b", ago(hours=49), daily=f64(1))])
    assert get(client, "a", "daily")["daily"].status == fs.PRESENT
    assert get(client, "b", "daily")["daily"].status == fs.EXPIRED


def test_older_event_never_overwrites_newer(client: FeatureStoreClient) -> None:
    register(client, "x", pb.INT64)
    wait_servable(client, "customer", "x")
    assert write(client, [row("c1", ago(minutes=1), x=i64(2))]).written_values == 1
    late = write(client, [row("c1", ago(minutes=2), x=i64(1))])
    assert (late.written_values, late.skipped_values) == (0, 1)
    assert get(client, "c1", "x")["x"].value.int64_value == 2
    same_time_again = write(client, [row("c1", ago(minutes=1), x=i64(2))])
    assert same_time_again.written_values == 1  # idempotent: rewriting the same event changes nothing
    assert get(client, "c1", "x")["x"].value.int64_value == 2
    assert write(client, [row("c1", now(), x=i64(3))]).written_values == 1
    assert get(client, "c1", "x")["x"].value.int64_value == 3


def test_concurrent_out_of_order_writers_converge_on_newest(client: FeatureStoreClient) -> None:
    register(client, "x", pb.INT64)
    wait_servable(client, "customer", "x")
    base = ago(hours=1)
    offsets = list(range(200))
    random.Random(1).shuffle(offsets)

    def put(offset: int) -> None:
        write(client, [row(f"e{k}", base + timedelta(seconds=offset), x=i64(offset)) for k in range(5)])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, offsets))
    for k in range(5):
        got = get(client, f"e{k}", "x")["x"]
        assert (got.value.int64_value, got.event_time) == (199, ts(base + timedelta(seconds=199)))


def test_groups_are_shorthand_for_their_features(client: FeatureStoreClient) -> None:
    for name in ("a", "b", "c"):
        register(client, name, pb.FLOAT)
    group = pb.FeatureGroup(name="grp", entity_type="customer", feature_names=["c", "a"])
    client.registry.CreateFeatureGroup(rs.CreateFeatureGroupRequest(feature_group=group))
    wait_servable(client, "customer", "a", "b", "c")
    eventually(lambda: _group_servable(client, "grp"))  # the group is committed after its features
    write(client, [row("c1", now(), a=f64(1), b=f64(2), c=f64(3))])
    response = client.store.GetFeatures(
        fs.GetFeaturesRequest(entity_type="customer", entity_id="c1", feature_names=["b"], feature_groups=["grp"])
    )
    assert [(f.name, f.value.float_value) for f in response.features] == [("b", 2), ("c", 3), ("a", 1)]


def _group_servable(client: FeatureStoreClient, group: str) -> bool:
    """Whether serving knows `group` (reads of it stop failing with 'does not exist')."""
    try:
        client.store.GetFeatures(
            fs.GetFeaturesRequest(entity_type="customer", entity_id="probe", feature_groups=[group])
        )
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        return False
    return True


def test_batch_keeps_order_duplicates_and_empty(client: FeatureStoreClient) -> None:
    register(client, "x", pb.INT64)
    wait_servable(client, "customer", "x")
    write(client, [row(f"e{i}", now(), x=i64(i)) for i in range(50)])
    ids = ["e3", "missing", "e3", "e49", "e0"]
    response = client.store.BatchGetFeatures(
        fs.BatchGetFeaturesRequest(entity_type="customer", entity_ids=ids, feature_names=["x"])
    )
    assert [e.entity_id for e in response.entities] == ids
    assert [e.features[0].value.int64_value for e in response.entities] == [3, 0, 3, 49, 0]
    assert [e.features[0].status for e in response.entities] == [fs.PRESENT, fs.NOT_FOUND] + [fs.PRESENT] * 3
    empty = client.store.BatchGetFeatures(fs.BatchGetFeaturesRequest(entity_type="customer", feature_names=["x"]))
    assert (empty.entity_type, list(empty.entities)) == ("customer", [])


def test_a_batch_larger_than_a_redis_chunk_is_read_in_order(client: FeatureStoreClient) -> None:
    """Reads are cut into pieces of 250 values (the chunk): script calls up to 1,000 values,
    pipelined HMGETs past that. Same answer either way, in order."""
    names = ["x", "y", "z"]
    for name in names:
        register(client, name, pb.INT64)
    wait_servable(client, "customer", *names)
    write(client, [row(f"big{i}", now(), x=i64(i), y=i64(-i), z=i64(i * 7)) for i in range(0, 700, 2)])
    missing = [(name, fs.NOT_FOUND, 0) for name in names]
    expected = [
        [("x", fs.PRESENT, i), ("y", fs.PRESENT, -i), ("z", fs.PRESENT, i * 7)] if i % 2 == 0 else missing
        for i in range(700)
    ]
    for count in (300, 700):  # 903 values: four script calls; 2,103 values: nine HMGET pipelines
        ids = [f"big{i}" for i in range(count)] + ["big4"]
        request = fs.BatchGetFeaturesRequest(entity_type="customer", entity_ids=ids, feature_names=names)
        response = client.store.BatchGetFeatures(request)
        assert [e.entity_id for e in response.entities] == ids
        got = [[(f.name, f.status, f.value.int64_value) for f in e.features] for e in response.entities]
        assert got == [*expected[:count], expected[4]], count
        # The REST rendering, piece by piece as well: the same answer.
        rendered = json_format.Parse(client.store.BatchGetFeaturesJson(request).data, fs.BatchGetFeaturesResponse())
        assert rendered == response, count


def _invalid(call: object, request: object) -> dict[str, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(request)  # type: ignore[operator]
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details
    return details.field_violations


def test_bad_reads_name_the_field(client: FeatureStoreClient) -> None:
    register(client, "x", pb.INT64)
    register(client, "p", pb.INT64, entity_type="product")
    wait_servable(client, "customer", "x")
    wait_servable(client, "product", "p")
    read = client.store.GetFeatures
    assert "feature_names[1]" in _invalid(
        read, fs.GetFeaturesRequest(entity_type="customer", entity_id="c", feature_names=["x", "nope"])
    )
    assert "feature_names[0]" in _invalid(
        read, fs.GetFeaturesRequest(entity_type="customer", entity_id="c", feature_names=["p"])
    )
    assert "feature_groups[0]" in _invalid(
        read, fs.GetFeaturesRequest(entity_type="customer", entity_id="c", feature_groups=["g"])
    )
    assert "entity_id" in _invalid(
        read, fs.GetFeaturesRequest(entity_type="customer", entity_id="", feature_names=["x"])
    )
    assert "entity_id" in _invalid(
        read, fs.GetFeaturesRequest(entity_type="customer", entity_id="x" * 300, feature_names=["x"])
    )
    assert "entity_type" in _invalid(read, fs.GetFeaturesRequest(entity_type="", entity_id="c", feature_names=["x"]))
    assert "feature_names" in _invalid(read, fs.GetFeaturesRequest(entity_type="customer", entity_id="c"))


def test_request_size_limit_is_enforced_with_the_limit_in_the_message(client: FeatureStoreClient) -> None:
    register(client, "x", pb.INT64)
    wait_servable(client, "customer", "x")
    ids = [f"e{i}" for i in range(100_001)]
    request = fs.BatchGetFeaturesRequest(entity_type="customer", entity_ids=ids, feature_names=["x"])
    with pytest.raises(grpc.RpcError) as info:
        client.store.BatchGetFeatures(request)
    assert "the limit is 100000" in error_details(info.value).message
    rows = [row(f"e{i}", now(), x=i64(i)) for i in range(100_001)]
    with pytest.raises(grpc.RpcError) as info:
        write(client, rows)
    assert "the limit is 100000" in error_details(info.value).message


def test_bad_writes_name_the_value_and_write_nothing(client: FeatureStoreClient, redis_url: str) -> None:
    register(client, "x", pb.INT64)
    register(client, "p", pb.INT64, entity_type="product")
    wait_servable(client, "customer", "x")
    wait_servable(client, "product", "p")
    good = row("ok", now(), x=i64(1))
    cases = {
        "rows[1].values[x]": row("c", now(), x=f64(1.0)),  # wrong type
        "rows[1].values[nope]": row("c", now(), nope=i64(1)),  # unknown feature
        "rows[1].values[p]": row("c", now(), p=i64(1)),  # other entity type
        "rows[1].entity_id": row("", now(), x=i64(1)),
        "rows[1].event_time": fs.EntityRow(entity_id="c", event_time=Timestamp(seconds=10**12), values={"x": i64(1)}),
    }
    for field, bad in cases.items():
        violations = _invalid(
            client.store.WriteFeatures, fs.WriteFeaturesRequest(entity_type="customer", rows=[good, bad])
        )
        assert field in violations, violations
    no_time = fs.EntityRow(entity_id="c", values={"x": i64(1)})
    violations = _invalid(client.store.WriteFeatures, fs.WriteFeaturesRequest(entity_type="customer", rows=[no_time]))
    assert violations == {"rows[0].event_time": "is required"}
    with redis.Redis.from_url(redis_url) as r:
        assert r.dbsize() == 0


def test_push_features_streams_batches(client: FeatureStoreClient) -> None:
    register(client, "x", pb.INT64)
    wait_servable(client, "customer", "x")
    batches = [
        fs.PushFeaturesRequest(
            entity_type="customer", rows=[row(f"e{i}", ago(seconds=10 - b), x=i64(b)) for i in range(10)]
        )
        for b in range(5)
    ]
    response = client.store.PushFeatures(iter(batches))
    assert (response.written_values, response.skipped_values, response.batches) == (50, 0, 5)
    assert get(client, "e7", "x")["x"].value.int64_value == 4


def test_registry_changes_reach_serving_within_a_second(client: FeatureStoreClient) -> None:
    register(client, "new_feature", pb.FLOAT)
    assert wait_servable(client, "customer", "new_feature") < 1.0


def test_rest_write_and_read_shapes(client: FeatureStoreClient, rest: Rest) -> None:
    register(client, "amount", pb.FLOAT)
    register(client, "visits", pb.INT64)
    wait_servable(client, "customer", "amount", "visits")
    body = {
        "entity_type": "customer",
        "rows": [
            {
                "entity_id": "customer123",
                "event_time": "2026-01-01T00:00:00Z",
                "values": {"amount": {"float_value": 12.5}, "visits": {"int64_value": "7"}},
            }
        ],
    }
    written = rest.post("/api/feature-store/write-features", body)
    assert written.status == 200, written.text
    assert written.json() == {"written_values": "2", "skipped_values": "0"}
    read = rest.post(
        "/api/feature-store/features",
        {"entity_id": "customer123", "entity_type": "customer", "feature_names": ["amount", "visits", "amount"]},
    )
    assert read.status == 200, read.text
    features = read.json()["features"]
    assert [f["name"] for f in features] == ["amount", "visits", "amount"]
    assert features[0]["value"] == {"float_value": 12.5}
    assert features[1]["value"] == {"int64_value": "7"}
    assert features[0]["event_time"] == "2026-01-01T00:00:00Z"
    assert features[0]["status"] in {"PRESENT", "EXPIRED"}


def test_rest_json_equals_the_grpc_response_rendered_as_json(client: FeatureStoreClient, rest: Rest) -> None:
    from google.protobuf import json_format

    for name, value_type, _ in TYPED_VALUES:
        register(client, name, value_type, max_age=timedelta(hours=1))
    register(client, "unwritten", pb.FLOAT)
    names = [name for name, _, _ in TYPED_VALUES] + ["unwritten"]
    wait_servable(client, "customer", *names)
    values = {n: v for n, _, v in TYPED_VALUES}
    write(client, [row("fresh", ago(minutes=5), **values), row("stale", ago(hours=2), **values)])
    for entity in ("fresh", "stale", "nobody"):
        request = fs.GetFeaturesRequest(entity_type="customer", entity_id=entity, feature_names=names)
        expected = json_format.MessageToDict(client.store.GetFeatures(request), preserving_proto_field_name=True)
        got = rest.post(
            "/api/feature-store/features", json_format.MessageToDict(request, preserving_proto_field_name=True)
        )
        assert got.status == 200, got.text
        assert got.headers["content-type"] == "application/json"
        assert got.json() == expected, entity
    batch = fs.BatchGetFeaturesRequest(
        entity_type="customer", entity_ids=["fresh", "nobody", "stale"], feature_names=names
    )
    expected = json_format.MessageToDict(client.store.BatchGetFeatures(batch), preserving_proto_field_name=True)
    got = rest.post(
        "/api/feature-store/batch-features", json_format.MessageToDict(batch, preserving_proto_field_name=True)
    )
    assert got.json() == expected


def test_the_write_script_keeps_the_newer_of_thousands_of_values_per_entity(redis_url: str) -> None:
    """More values than one command takes: each still compared on its own, both its forms kept or skipped."""
    import asyncio

    from server.core import KeyWrite, codec
    from server.online import RedisOnlineStore, connect
    from server.online._redis import value_field

    def forms(name: bytes, micros: int, n: int) -> list[tuple[bytes, bytes]]:
        proto, as_json, _ = codec.ValueEncoder(name.decode(), "int64_value", micros).encode(n)
        return [(name, proto), (name + b":j", as_json)]

    names = [f"f{n}".encode() for n in range(1200)]
    fields = [value_field(field, 2) for name in names for field in (name, name + b":j")]  # 2: int64_value

    async def go() -> tuple[int, int, list[bytes | None]]:
        store = RedisOnlineStore(connect(redis_url, cluster=False, connections=1, timeout=5.0))
        try:
            old = [pair for n, name in enumerate(names) for pair in forms(name, 100, n)]
            first = await store.write([KeyWrite(b"f:test:wide", old)])
            mixed = [pair for n, name in enumerate(names) for pair in forms(name, 200 if n % 3 == 0 else 50, n + 5000)]
            second = await store.write([KeyWrite(b"f:test:wide", mixed)])
            return first, second, await store.read([b"f:test:wide"], fields)
        finally:
            await store.close()

    first, second, values = asyncio.run(go())
    assert (first, second) == (1200, 400)
    want = [v for n, name in enumerate(names) for _, v in forms(name, *((200, n + 5000) if n % 3 == 0 else (100, n)))]
    assert values == want

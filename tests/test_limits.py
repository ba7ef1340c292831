"""Requests are bounded before work is done; writes cannot freeze or explode the store (issue 11).

Every case runs against the real servers: hostile requests are refused within a bound while
a concurrent small request stays responsive, and the server's memory does not grow with them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from devstack import Proc, free_port
from featurestore import FeatureStoreClient, error_details
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2 as vpb
from tests._helpers import CLEAR_REGISTRY, FAST_SERVER_ARGS, Processes, eventually, run_sql
from tests._online import get, i64, now, register, row, ts, wait_servable, write

ENTITY = "amp"
GROUP = "amp_wide"
WIDE = 1_000  # features in the group
RESPONSIVE = 1.0  # seconds a small concurrent request may take while a hostile one is refused (loaded 2 cores)
REFUSED = 1.0  # seconds a hostile request may take to be refused


@pytest.fixture(scope="module")
def wide_group(client: FeatureStoreClient, postgres_dsn: str) -> Iterator[None]:
    """A 1,000-feature group and one written value to read while hostile requests are refused."""
    run_sql(postgres_dsn, CLEAR_REGISTRY)
    names = [f"w{i}" for i in range(WIDE)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: register(client, n, pb.INT64, entity_type=ENTITY), names))
    group = pb.FeatureGroup(name=GROUP, entity_type=ENTITY, feature_names=names)
    client.registry.CreateFeatureGroup(rs.CreateFeatureGroupRequest(feature_group=group))
    wait_servable(client, ENTITY, "w0", "w999")
    write(client, [row("e1", now(), w0=i64(1))], entity_type=ENTITY)
    yield
    run_sql(postgres_dsn, CLEAR_REGISTRY)


def small_read(client: FeatureStoreClient) -> float:
    started = time.monotonic()
    assert get(client, "e1", "w0", entity_type=ENTITY)["w0"].value.int64_value == 1
    return time.monotonic() - started


def refused_while_responsive(client: FeatureStoreClient, hostile: Callable[[], Any]) -> grpc.RpcError:
    """Run `hostile` while timing small reads; it must fail fast, and the reads stay fast."""
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        pending = pool.submit(hostile)
        slowest = max(small_read(client) for _ in range(5))
        with pytest.raises(grpc.RpcError) as info:
            pending.result(timeout=30)
        took = time.monotonic() - started
    assert slowest < RESPONSIVE, f"a small read took {slowest:.2f}s while a hostile request was refused"
    assert took < REFUSED + RESPONSIVE * 5, f"the hostile request took {took:.2f}s to be refused"
    return info.value


def _group_named_many_times(client: FeatureStoreClient) -> Any:
    request = fs.GetFeaturesRequest(entity_type=ENTITY, entity_id="e1", feature_groups=[GROUP] * 1_000)
    return client.store.GetFeatures(request)


def _batch_of_a_million_ids(client: FeatureStoreClient) -> Any:
    request = fs.BatchGetFeaturesRequest(entity_type=ENTITY, entity_ids=[""] * 1_000_000, feature_names=["w0"])
    return client.store.BatchGetFeatures(request)


def _write_of_a_million_empty_rows(client: FeatureStoreClient) -> Any:
    rows = [fs.EntityRow()] * 1_000_000
    return client.store.WriteFeatures(fs.WriteFeaturesRequest(entity_type=ENTITY, rows=rows))


def _training_over_a_group_named_many_times(client: FeatureStoreClient) -> Any:
    request = fs.GetTrainingDatasetRequest(
        entity_type=ENTITY,
        feature_groups=[GROUP] * 1_000,
        rows=[fs.TrainingRow(entity_id="e1", timestamp=ts(now()))],
    )
    return list(client.store.GetTrainingDataset(request))


def _history_of_many_names(client: FeatureStoreClient) -> Any:
    request = fs.GetHistoricalFeaturesRequest(
        entity_type=ENTITY, entity_id="e1", feature_names=["w0"] * 200_000, limit=10
    )
    return client.store.GetHistoricalFeatures(request)


HOSTILE = {
    "group named 1,000 times": (_group_named_many_times, "feature_names", "limit"),
    "1,000,000 entity ids": (_batch_of_a_million_ids, "entity_ids", "limit"),
    "1,000,000 empty rows": (_write_of_a_million_empty_rows, "rows", "limit is 100000"),
    "training over a group named 1,000 times": (_training_over_a_group_named_many_times, "feature_names", "limit"),
    "history of 200,000 names": (_history_of_many_names, "feature_names", "limit is 10000"),
}


@pytest.mark.usefixtures("wide_group")
@pytest.mark.parametrize("case", list(HOSTILE))
def test_amplifying_requests_are_refused_at_once_while_others_are_served(client: FeatureStoreClient, case: str) -> None:
    call, field, words = HOSTILE[case]
    error = refused_while_responsive(client, lambda: call(client))
    details = error_details(error)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert field in details.field_violations, details
    assert words in details.field_violations[field], details


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.usefixtures("wide_group")
def test_memory_does_not_grow_across_a_hundred_hostile_requests(client: FeatureStoreClient, server: Proc) -> None:
    def hundred() -> None:
        for i in range(100):  # every shape different: nothing may be cached for any of them
            request = fs.GetFeaturesRequest(entity_type=ENTITY, entity_id="e1", feature_groups=[GROUP] * (200 + i))
            with pytest.raises(grpc.RpcError) as info:
                client.store.GetFeatures(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    hundred()  # warm up: allocator arenas, code paths
    before = _rss_kib(server.popen.pid)
    started = time.monotonic()
    hundred()
    took = time.monotonic() - started
    grown = _rss_kib(server.popen.pid) - before
    assert grown < 10 * 1024, f"the server grew by {grown} KiB over 100 refused requests"
    assert took < 5, f"100 refused requests took {took:.1f}s"


@pytest.mark.usefixtures("wide_group")
def test_a_request_within_the_limit_still_expands_its_group(client: FeatureStoreClient) -> None:
    request = fs.GetFeaturesRequest(entity_type=ENTITY, entity_id="e1", feature_groups=[GROUP] * 100)
    response = client.store.GetFeatures(request)
    assert len(response.features) == 100 * WIDE
    assert response.features[0].value.int64_value == 1


@pytest.mark.usefixtures("wide_group")
def test_violations_stop_after_twenty(client: FeatureStoreClient) -> None:
    rows = [fs.EntityRow(entity_id="", values={"nope": i64(1)}) for _ in range(5_000)]
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        client.store.WriteFeatures(fs.WriteFeaturesRequest(entity_type=ENTITY, rows=rows))
    assert time.monotonic() - started < 1
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert 0 < len(details.field_violations) <= 20
    assert len(info.value.details() or "") < 1_000


# -- event times ------------------------------------------------------------


@pytest.fixture
def x_feature(empty_registry: None, client: FeatureStoreClient) -> None:
    register(client, "x", pb.INT64)
    wait_servable(client, "customer", "x")


@pytest.mark.usefixtures("x_feature", "empty_online")
@pytest.mark.parametrize(
    ("when", "words"),
    [
        (datetime(2035, 1, 1, tzinfo=UTC), "in the future"),
        (timedelta(minutes=10), "in the future"),  # from now, when the test runs (not when it is collected)
        (datetime(1960, 1, 1, tzinfo=UTC), "before 1970-01-01"),
        (datetime(1, 1, 1, tzinfo=UTC), "before 1970-01-01"),
    ],
)
def test_future_dated_and_ancient_writes_are_rejected(
    client: FeatureStoreClient, when: datetime | timedelta, words: str
) -> None:
    if isinstance(when, timedelta):
        when = datetime.now(UTC) + when
    with pytest.raises(grpc.RpcError) as info:
        write(client, [row("c1", now(), x=i64(1)), row("c1", when, x=i64(2))])
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in details.field_violations["rows[1].event_time"], details
    assert get(client, "c1", "x")["x"].status == fs.NOT_FOUND  # nothing of the request was written
    assert write(client, [row("c1", now(), x=i64(3))]).written_values == 1  # today's value is not pinned
    assert get(client, "c1", "x")["x"].value.int64_value == 3


@pytest.mark.usefixtures("x_feature", "empty_online")
def test_event_times_within_the_clock_skew_are_accepted(client: FeatureStoreClient) -> None:
    soon = datetime.now(UTC) + timedelta(minutes=2)
    assert write(client, [row("c1", soon, x=i64(5))]).written_values == 1


@pytest.mark.usefixtures("x_feature")
def test_pushes_check_event_times_too(client: FeatureStoreClient) -> None:
    late = fs.PushFeaturesRequest(entity_type="customer", rows=[row("c1", datetime(2035, 1, 1, tzinfo=UTC), x=i64(1))])
    with pytest.raises(grpc.RpcError) as info:
        client.store.PushFeatures(iter([late]))
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "rows[0].event_time" in details.field_violations


# -- history partitions -------------------------------------------------------


def _partitions(dsn: str) -> set[str]:
    rows = run_sql(
        dsn,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'feature_history'::regclass",
    )
    return {r["relname"] for r in rows}


def test_partitions_of_this_and_next_month_exist_ahead(server: Proc, postgres_dsn: str) -> None:
    today = datetime.now(UTC)
    following = (today.replace(day=1) + timedelta(days=32)).replace(day=1)
    names = _partitions(postgres_dsn)
    assert f"feature_history_p{today:%Y%m}" in names
    assert f"feature_history_p{following:%Y%m}" in names


@pytest.mark.usefixtures("x_feature")
def test_one_write_cannot_create_many_partitions(client: FeatureStoreClient, postgres_dsn: str) -> None:
    before = _partitions(postgres_dsn)
    months = [datetime(1980 + i // 12, i % 12 + 1, 1, tzinfo=UTC) for i in range(40)]
    with pytest.raises(grpc.RpcError) as info:
        write(client, [row("c1", when, x=i64(1)) for when in months])
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 12" in details.field_violations["rows"]
    assert _partitions(postgres_dsn) == before
    assert write(client, [row("c_part", when, x=i64(1)) for when in months[:3]]).written_values == 3
    assert len(_partitions(postgres_dsn) - before) == 3


# -- a feature registered again with another type ---------------------------------


@pytest.mark.usefixtures("empty_registry", "empty_online")
def test_a_feature_recreated_with_another_type_never_serves_the_old_bytes(client: FeatureStoreClient) -> None:
    register(client, "y", pb.INT64)
    wait_servable(client, "customer", "y")
    write(client, [row("c1", now(), y=i64(7))])
    client.registry.DeleteFeature(rs.DeleteFeatureRequest(name="y"))
    register(client, "y", pb.STRING)
    # the old definition is served until the snapshot changes
    eventually(lambda: get(client, "c1", "y")["y"].value.WhichOneof("kind") != "int64_value", interval=0.02)
    assert get(client, "c1", "y")["y"].status == fs.NOT_FOUND
    batch = client.store.BatchGetFeatures(
        fs.BatchGetFeaturesRequest(entity_type="customer", entity_ids=["c1"], feature_names=["y"])
    )
    assert batch.entities[0].features[0].status == fs.NOT_FOUND
    older = now() - timedelta(days=1)  # older than the INT64 value: only-newer must not compare across types
    assert write(client, [row("c1", older, y=vpb.Value(string_value="seven"))]).written_values == 1
    assert get(client, "c1", "y")["y"].value.string_value == "seven"


# -- requests that cannot be parsed -----------------------------------------------

STORE = "/featurestore.serving.v1.FeatureStoreService/"
BAD_UTF8 = b"\x0a\x02\xff\xfe"  # field 1 (a string in every request below): not UTF-8


@pytest.mark.parametrize(
    ("method", "streaming"),
    [
        (STORE + "GetFeatures", False),
        (STORE + "BatchGetFeatures", False),
        (STORE + "GetFeaturesJson", False),
        (STORE + "WriteFeatures", False),
        (STORE + "GetHistoricalFeatures", False),
        (STORE + "StreamHistoricalFeatures", True),
        (STORE + "GetTrainingDataset", True),
        ("/featurestore.registry.v1.RegistryService/GetFeature", False),
        ("/featurestore.registry.v1.RegistryService/CreateFeature", False),
    ],
)
def test_bytes_that_are_not_a_request_are_invalid_argument_over_grpc(
    grpc_target: str, method: str, streaming: bool
) -> None:
    payloads = [BAD_UTF8, b"\xff\xff\xff"]  # bad UTF-8; not protobuf at all
    with grpc.insecure_channel(grpc_target) as channel:
        for payload in payloads:
            raw: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}  # bytes as they are
            call = channel.unary_stream(method, **raw) if streaming else channel.unary_unary(method, **raw)
            with pytest.raises(grpc.RpcError) as info:
                list(call(payload, timeout=5)) if streaming else call(payload, timeout=5)
            details = error_details(info.value)
            assert details.code == grpc.StatusCode.INVALID_ARGUMENT, (method, details)
            assert "is not a valid" in details.field_violations["request"]
            assert "DecodeError" not in (info.value.details() or "")


def test_a_push_with_a_bad_message_is_invalid_argument(grpc_target: str) -> None:
    with grpc.insecure_channel(grpc_target) as channel:
        push = channel.stream_unary(STORE + "PushFeatures", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            push(iter([BAD_UTF8]), timeout=5)
    assert error_details(info.value).code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "path", ["/api/feature-registry/features/%FF%FE", "/api/feature-registry/features?entity_type=%FF%FE"]
)
def test_bad_utf8_through_the_gateway_is_400(rest: Any, path: str) -> None:
    resp = rest.get(path)
    assert resp.status == 400, resp.text
    assert resp.json()["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "DecodeError" not in resp.text


# -- values PostgreSQL text cannot hold ---------------------------------------------


@pytest.mark.usefixtures("x_feature")
def test_a_nul_in_an_entity_id_is_invalid_argument(client: FeatureStoreClient) -> None:
    with pytest.raises(grpc.RpcError) as info:
        write(client, [row("c\x001", now(), x=i64(1))])
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "NUL" in details.field_violations["rows[0].entity_id"]
    history = fs.GetHistoricalFeaturesRequest(entity_type="customer", entity_id="c\x001", feature_names=["x"], limit=5)
    with pytest.raises(grpc.RpcError) as info:
        client.store.GetHistoricalFeatures(history)
    assert error_details(info.value).code == grpc.StatusCode.INVALID_ARGUMENT
    training = fs.GetTrainingDatasetRequest(
        entity_type="customer", feature_names=["x"], rows=[fs.TrainingRow(entity_id="c\x00", timestamp=ts(now()))]
    )
    with pytest.raises(grpc.RpcError) as info:
        list(client.store.GetTrainingDataset(training))
    assert error_details(info.value).code == grpc.StatusCode.INVALID_ARGUMENT


# -- /metrics -------------------------------------------------------------------------


def _listen_address(port: int) -> set[str]:
    suffix = f":{port:04X}"
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(suffix) and fields[3] == "0A":
                found.add(fields[1].rsplit(":", 1)[0])
    return found


def test_metrics_bind_loopback_by_default(server: Proc) -> None:
    assert _listen_address(int(str(server.extra["metrics_port"]))) == {"0100007F"}  # 127.0.0.1


# -- streams and training responses ----------------------------------------------------


@pytest.fixture
def bounded_server(processes: Processes, postgres_dsn: str, redis_url: str) -> Iterator[FeatureStoreClient]:
    """A server of its own whose calls may carry 100 values and run 30 s at most."""
    server = processes.server(postgres_dsn, redis_url, [*FAST_SERVER_ARGS, "--max-stream-values", "100"])
    with FeatureStoreClient(f"127.0.0.1:{server.port}") as client:
        yield client


@pytest.mark.usefixtures("empty_registry", "empty_online")
def test_streams_are_bounded_per_call(bounded_server: FeatureStoreClient) -> None:
    client = bounded_server
    register(client, "s", pb.INT64)
    wait_servable(client, "customer", "s")
    start = now() - timedelta(days=1)
    batches = [
        fs.PushFeaturesRequest(
            entity_type="customer", rows=[row("c1", start + timedelta(seconds=b * 60 + i), s=i64(i)) for i in range(60)]
        )
        for b in range(3)
    ]
    with pytest.raises(grpc.RpcError) as info:
        client.store.PushFeatures(iter(batches))
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than 100 values" in details.message
    assert "first 1 batches were written" in details.message
    more = [row("c1", start + timedelta(seconds=1000 + i), s=i64(i)) for i in range(100)]
    write(client, more)
    request = fs.GetHistoricalFeaturesRequest(entity_type="customer", entity_id="c1", feature_names=["s"])
    with pytest.raises(grpc.RpcError) as info:
        list(client.store.StreamHistoricalFeatures(request))
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "page_token" in details.message


@pytest.mark.usefixtures("empty_registry", "empty_online")
def test_training_messages_fit_the_clients_receive_limit(client: FeatureStoreClient) -> None:
    names = [f"t{i}" for i in range(20)]
    for name in names:
        register(client, name, pb.STRING)
    wait_servable(client, "customer", *names)
    big = "v" * 4_000
    write(client, [row("c1", now() - timedelta(hours=1), **{n: vpb.Value(string_value=big) for n in names})])
    rows = [fs.TrainingRow(entity_id="c1", timestamp=ts(now())) for _ in range(600)]  # ~48 MB in all
    request = fs.GetTrainingDatasetRequest(entity_type="customer", feature_names=names, rows=rows)
    sizes = [(len(m.examples), m.ByteSize()) for m in client.store.GetTrainingDataset(request)]
    assert sum(n for n, _ in sizes) == 600
    assert max(size for _, size in sizes) <= 4 * 1024 * 1024


# -- store failures ---------------------------------------------------------------------


def test_a_valkey_loading_its_data_gives_unavailable_never_unknown(processes: Processes, postgres_dsn: str) -> None:
    import redis

    valkey = processes.valkey()
    server = processes.server(postgres_dsn, str(valkey.extra["url"]))
    with FeatureStoreClient(f"127.0.0.1:{server.port}") as own:
        name = f"load{free_port()}"
        register(own, name, pb.INT64)
        wait_servable(own, "customer", name)
        write(own, [row("c1", now(), **{name: i64(1)})])
        with redis.Redis(port=valkey.port) as r:  # enough data that loading it takes a while
            pipe = r.pipeline(transaction=False)
            for i in range(50_000):
                pipe.hset(f"filler:{i}", "a", "b")
            pipe.execute()
            r.save()
        valkey.stop()
        slow_load = ["--key-load-delay", "20", "--loading-process-events-interval-bytes", "1024"]
        valkey = processes.valkey(port=valkey.port, extra_args=slow_load)
        codes, messages = set(), set()
        for _ in range(20):
            try:
                get(own, "c1", name)
                codes.add(grpc.StatusCode.OK)
            except grpc.RpcError as err:
                details = error_details(err)
                codes.add(details.code)
                messages.add(details.message)
        assert codes <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK}, codes
        assert "redis is unavailable (loading its data); retry later" in messages, messages
        assert not any("127.0.0.1" in m or "Error" in m for m in messages), messages

"""The offline store: history appended by writes, GetHistoricalFeatures, paging, streaming, partitions."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from featurestore import FeatureStoreClient, error_details
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2 as vpb
from server.core.postgres import create_pool
from server.offline import PostgresHistoryStore
from tests._helpers import run_sql
from tests._http import Rest
from tests._online import f64, get, i64, register, row, ts, wait_servable, write
from tests._seed import store_curls

pytestmark = pytest.mark.usefixtures("empty_registry", "empty_online", "empty_history")
T0 = datetime(2023, 1, 1, tzinfo=UTC)


@pytest.fixture
def empty_history(postgres_dsn: str) -> None:
    run_sql(postgres_dsn, "DELETE FROM feature_history; SELECT 1")


def history(
    client: FeatureStoreClient, entity_id: str, names: list[str], **kwargs: Any
) -> fs.GetHistoricalFeaturesResponse:
    request = fs.GetHistoricalFeaturesRequest(
        entity_type="customer", entity_id=entity_id, feature_names=names, **kwargs
    )
    return client.store.GetHistoricalFeatures(request)


def test_seed_historical_curl_works_verbatim(client: FeatureStoreClient, rest: Rest) -> None:
    names = ["customer_total_purchases_30d", "customer_days_since_last_purchase"]
    register(client, names[0], pb.FLOAT)
    register(client, names[1], pb.INT64)
    wait_servable(client, "customer", *names)
    days = [T0 + timedelta(days=d) for d in range(0, 120, 7)]  # Jan..Apr 2023, some after the range
    write(
        client,
        [
            row("customer123", d, customer_total_purchases_30d=f64(i * 10.0), customer_days_since_last_purchase=i64(i))
            for i, d in enumerate(days)
        ],
    )
    write(client, [row("customer456", T0, customer_total_purchases_30d=f64(-1.0))])

    status, body = store_curls()[2].run(rest.base_url)
    assert status == 200, body
    in_range = [d for d in days if d < datetime(2023, 4, 1, tzinfo=UTC)]
    assert len(body["values"]) == 2 * len(in_range)
    assert [v["event_time"] for v in body["values"][::2]] == [d.strftime("%Y-%m-%dT%H:%M:%SZ") for d in in_range]
    assert [v["name"] for v in body["values"][:2]] == sorted(names)
    assert body["values"][1]["value"] == {"float_value": 0.0}
    assert body["next_page_token"] == ""


def test_pages_follow_event_time_then_name_and_match_plain_sql(client: FeatureStoreClient, postgres_dsn: str) -> None:
    names = ["a", "b", "c"]
    for n in names:
        register(client, n, pb.INT64)
    wait_servable(client, "customer", *names)
    rng = random.Random(5)
    rows = [
        row("e1", T0 + timedelta(minutes=rng.randrange(100_000)), **{rng.choice(names): i64(i)}) for i in range(300)
    ]
    write(client, rows)
    start, end = T0 + timedelta(days=5), T0 + timedelta(days=50)
    seen, token = [], ""
    while True:
        page = history(client, "e1", ["a", "c"], start_time=ts(start), end_time=ts(end), limit=17, page_token=token)
        assert len(page.values) <= 17
        seen += [(v.event_time.ToDatetime(tzinfo=UTC), v.name, v.value.int64_value) for v in page.values]
        token = page.next_page_token
        if not token:
            break
    sql = (
        "SELECT event_time, feature_name, value FROM feature_history WHERE entity_type = 'customer' "
        f"AND entity_id = 'e1' AND feature_name IN ('a', 'c') AND event_time >= '{start.isoformat()}' "
        f"AND event_time < '{end.isoformat()}' ORDER BY event_time, feature_name"
    )
    expected = [
        (r["event_time"], r["feature_name"], vpb.Value.FromString(r["value"]).int64_value)
        for r in run_sql(postgres_dsn, sql)
    ]
    assert seen == expected
    assert len(expected) > 34


def test_history_pages_like_the_registry_with_page_size_and_bound_tokens(client: FeatureStoreClient) -> None:
    """AIP-158: page_size optional (1,000 by default, 10,000 at most); a token only for its own request."""
    register(client, "p", pb.INT64)
    wait_servable(client, "customer", "p")
    write(client, [row("e1", T0 + timedelta(seconds=s), p=i64(s)) for s in range(1200)])
    first = history(client, "e1", ["p"])
    assert len(first.values) == 1000
    assert first.next_page_token
    rest = history(client, "e1", ["p"], page_token=first.next_page_token, page_size=50_000)
    assert [v.value.int64_value for v in rest.values] == list(range(1000, 1200))
    assert rest.next_page_token == ""
    with pytest.raises(grpc.RpcError) as caught:
        history(client, "e1", ["p"], start_time=ts(T0), page_token=first.next_page_token)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "other filters" in (caught.value.details() or "")
    small = history(client, "e1", ["p"], limit=7, page_size=3)
    assert len(small.values) == 3  # page_size wins over the seed's limit


def test_rewrites_are_idempotent_and_latest_ingestion_wins(client: FeatureStoreClient, postgres_dsn: str) -> None:
    register(client, "x", pb.INT64)
    wait_servable(client, "customer", "x")
    rows = [row("e1", T0 + timedelta(hours=h), x=i64(h)) for h in range(10)]
    write(client, rows)
    write(client, rows)
    write(client, [row("e1", T0 + timedelta(hours=3), x=i64(333))])
    count = run_sql(postgres_dsn, "SELECT count(*) AS n FROM feature_history")[0]["n"]
    assert count == 10
    values = [v.value.int64_value for v in history(client, "e1", ["x"], limit=100).values]
    assert values == [0, 1, 2, 333, 4, 5, 6, 7, 8, 9]


def test_online_value_equals_latest_history_after_out_of_order_writes(client: FeatureStoreClient) -> None:
    names = ["p", "q"]
    for n in names:
        register(client, n, pb.INT64)
    wait_servable(client, "customer", *names)
    rng = random.Random(9)
    for _ in range(20):
        batch = [
            row(
                f"e{rng.randrange(5)}",
                T0 + timedelta(minutes=rng.randrange(1000)),
                **{rng.choice(names): i64(rng.randrange(10**6))},
            )
            for _ in range(25)
        ]
        write(client, batch)
    for e in range(5):
        online = get(client, f"e{e}", *names)
        for name in names:
            past = history(client, f"e{e}", [name], limit=10_000).values
            if not past:
                assert online[name].status == fs.NOT_FOUND
                continue
            latest = past[-1]
            assert (online[name].value, online[name].event_time) == (latest.value, latest.event_time)


def test_stream_returns_every_value_in_order(client: FeatureStoreClient) -> None:
    register(client, "x", pb.INT64)
    wait_servable(client, "customer", "x")
    write(client, [row("e1", T0 + timedelta(seconds=s), x=i64(s)) for s in range(2500)])
    request = fs.GetHistoricalFeaturesRequest(entity_type="customer", entity_id="e1", feature_names=["x"])
    pages = list(client.store.StreamHistoricalFeatures(request))
    assert [len(p.values) for p in pages] == [1000, 1000, 500]
    assert [v.value.int64_value for p in pages for v in p.values] == list(range(2500))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"start_time": "2023-04-01T00:00:00Z", "end_time": "2023-01-01T00:00:00Z", "limit": 10}, "start_time"),
        ({"page_size": -1}, "page_size"),
        ({"limit": -5}, "limit"),
        ({"limit": 10_001}, "limit"),
        ({"limit": 10, "feature_names": ["nope"]}, "feature_names[0]"),
        ({"limit": 10, "feature_names": []}, "feature_names"),
        ({"limit": 10, "entity_id": ""}, "entity_id"),
        ({"limit": 10, "page_token": "%%%"}, "page_token"),
    ],
)
def test_bad_history_requests_name_the_field(
    client: FeatureStoreClient, rest: Rest, body: dict[str, object], field: str
) -> None:
    register(client, "x", pb.INT64)
    wait_servable(client, "customer", "x")
    request = {"entity_id": "e1", "entity_type": "customer", "feature_names": ["x"], **body}
    response = rest.post("/api/feature-store/historical-features", request)
    assert response.status == 400, response.text
    violations = {
        v["field"] for d in response.json()["details"] if "field_violations" in d for v in d["field_violations"]
    }
    assert field in violations


def test_timestamps_outside_the_valid_range_name_the_field(client: FeatureStoreClient) -> None:
    register(client, "x", pb.INT64)
    wait_servable(client, "customer", "x")
    request = fs.GetHistoricalFeaturesRequest(
        entity_type="customer", entity_id="e1", feature_names=["x"], limit=5, start_time=Timestamp(seconds=-(10**12))
    )
    request.end_time.nanos = -1
    with pytest.raises(grpc.RpcError) as info:
        client.store.GetHistoricalFeatures(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(error_details(info.value).field_violations) == {"start_time", "end_time"}


def test_malformed_timestamp_is_400(rest: Rest) -> None:
    body = {
        "entity_id": "e1",
        "entity_type": "customer",
        "feature_names": ["x"],
        "start_time": "last tuesday",
        "limit": 5,
    }
    response = rest.post("/api/feature-store/historical-features", body)
    assert response.status == 400
    assert "start_time" in response.json()["message"]


def test_partitions_are_monthly_and_retention_drops_old_ones(client: FeatureStoreClient, postgres_dsn: str) -> None:
    register(client, "x", pb.INT64)
    wait_servable(client, "customer", "x")
    months = [datetime(2020, 1, 15, tzinfo=UTC), datetime(2020, 2, 15, tzinfo=UTC), datetime(2021, 6, 1, tzinfo=UTC)]
    write(client, [row("e1", m, x=i64(i)) for i, m in enumerate(months)])
    partitions = {
        r["relname"]
        for r in run_sql(postgres_dsn, "SELECT relname FROM pg_class WHERE relname LIKE 'feature_history_p%'")
    }
    assert {"feature_history_p202001", "feature_history_p202002", "feature_history_p202106"} <= partitions

    async def drop() -> list[str]:
        pool = await create_pool(postgres_dsn, min_size=1, max_size=1, command_timeout=10)
        try:
            return await PostgresHistoryStore(pool).drop_expired(
                timedelta(days=365), now=datetime(2021, 7, 1, tzinfo=UTC)
            )
        finally:
            await pool.close()

    dropped = asyncio.run(drop())
    assert set(dropped) >= {"feature_history_p202001", "feature_history_p202002"}
    assert "feature_history_p202106" not in dropped
    assert [v.value.int64_value for v in history(client, "e1", ["x"], limit=10).values] == [2]

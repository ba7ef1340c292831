"""`python -m server.reconcile`: the online store verified against, and rebuilt from, the history."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import redis
from google.protobuf.timestamp_pb2 import Timestamp

from featurestore import FeatureStoreClient
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2 as vpb
from tests._helpers import run_sql
from tests._online import f64, get, i64, register, row, wait_servable, write

pytestmark = pytest.mark.usefixtures("empty_registry", "empty_online", "empty_history")
FEATURES = {
    "rc_count": pb.INT64,
    "rc_amount": pb.FLOAT,
    "rc_label": pb.STRING,
    "rc_tags": pb.STRING_LIST,
    "rc_seen": pb.TIMESTAMP,
}
ENTITIES = [f"e{i}" for i in range(6)]


@pytest.fixture
def empty_history(postgres_dsn: str) -> None:
    run_sql(postgres_dsn, "DELETE FROM feature_history; SELECT 1")


def reconcile(postgres_dsn: str, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it."""
    command = [sys.executable, "-m", "server.reconcile", "--postgres-dsn", postgres_dsn, "--redis-url", redis_url]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, check=False)


def flushall(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as r:
        r.flushall()


def online_dump(redis_url: str) -> dict[bytes, dict[bytes, bytes]]:
    """Every hash in the online store, field by field."""
    with redis.Redis.from_url(redis_url) as r:
        return {key: r.hgetall(key) for key in r.scan_iter(match=b"f:*")}


def served(client: FeatureStoreClient) -> list[bytes]:
    """What GetFeatures and BatchGetFeatures return for every test entity, serialized."""
    names = sorted(FEATURES)
    out = [
        client.store.GetFeatures(
            fs.GetFeaturesRequest(entity_type="customer", entity_id=e, feature_names=names)
        ).SerializeToString()
        for e in ENTITIES
    ]
    batch = fs.BatchGetFeaturesRequest(entity_type="customer", entity_ids=ENTITIES, feature_names=names)
    return [*out, client.store.BatchGetFeatures(batch).SerializeToString()]


def _values(i: int, when: datetime) -> dict[str, vpb.Value]:
    seen = Timestamp()
    seen.FromDatetime(when - timedelta(hours=i))
    return {
        "rc_count": i64(i * 7 - 3),
        "rc_amount": f64(i / 3),
        "rc_label": vpb.Value(string_value=f"label é {i}"),
        "rc_tags": vpb.Value(string_list_value=vpb.StringList(values=[f"t{i}", "x"])),
        "rc_seen": vpb.Value(timestamp_value=seen),
    }


def write_history(client: FeatureStoreClient) -> None:
    """Several entities and event times per feature, an out-of-order older write, sub-microsecond times."""
    for name, value_type in FEATURES.items():
        register(client, name, value_type)
    wait_servable(client, "customer", *FEATURES)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    for step in range(3):
        when = base + timedelta(hours=step)
        write(client, [row(e, when, **_values(i + step, when)) for i, e in enumerate(ENTITIES[:5])])
    older = write(
        client, [row("e0", base - timedelta(days=1), rc_count=i64(-1), rc_label=vpb.Value(string_value="old"))]
    )
    assert older.skipped_values == 2
    partial = row("e5", base, rc_amount=f64(2.5))
    partial.event_time.nanos = 123_456_789
    write(client, [partial])


def test_rebuild_restores_a_flushed_store_byte_for_byte(
    client: FeatureStoreClient, postgres_dsn: str, redis_url: str
) -> None:
    write_history(client)
    before, stored = served(client), online_dump(redis_url)
    assert len(stored) == 6
    features = "--features=" + ",".join(FEATURES)

    consistent = reconcile(postgres_dsn, redis_url, features, "--verify")
    assert consistent.returncode == 0, consistent.stderr
    assert "current 26, missing 0" in consistent.stdout

    flushall(redis_url)
    missing = reconcile(postgres_dsn, redis_url, features, "--verify", "--batch-size", "4")
    assert missing.returncode == 1, missing.stderr
    assert "entities 6, values 26" in missing.stdout
    assert "missing 26," in missing.stdout
    assert online_dump(redis_url) == {}  # verify writes nothing

    rebuilt = reconcile(postgres_dsn, redis_url, features, "--batch-size", "3")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "written 26;" in rebuilt.stdout
    assert online_dump(redis_url) == stored
    assert served(client) == before

    again = reconcile(postgres_dsn, redis_url, "--entity-type", "customer", "--verify")
    assert again.returncode == 0, again.stderr
    assert "disagreeing 0" in again.stdout


def test_verify_reports_older_and_rebuild_keeps_newer_online_values(
    client: FeatureStoreClient, postgres_dsn: str, redis_url: str
) -> None:
    write_history(client)
    newest = datetime.now(UTC).replace(microsecond=0)
    write(client, [row("e1", newest, rc_count=i64(1000))])
    run_sql(postgres_dsn, f"DELETE FROM feature_history WHERE event_time = '{newest.isoformat()}'; SELECT 1")
    with redis.Redis.from_url(redis_url) as r:  # e2's values as if its latest write never reached Redis
        r.delete(b"f:customer:e2")
    write(client, [row("e2", newest - timedelta(days=30), rc_count=i64(5))])

    found = reconcile(postgres_dsn, redis_url, "--entity-type", "customer", "--verify")
    assert found.returncode == 1, found.stderr
    assert "missing 4, older 1, differ 0, newer online 1" in found.stdout

    rebuilt = reconcile(postgres_dsn, redis_url, "--entity-type", "customer")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "written 5;" in rebuilt.stdout
    assert get(client, "e1", "rc_count")["rc_count"].value.int64_value == 1000
    assert get(client, "e2", "rc_count")["rc_count"].value.int64_value != 5
    assert reconcile(postgres_dsn, redis_url, "--entity-type", "customer", "--verify").returncode == 0


def test_values_of_a_former_value_type_are_not_written(
    client: FeatureStoreClient, postgres_dsn: str, redis_url: str
) -> None:
    register(client, "rc_kind", pb.INT64)
    wait_servable(client, "customer", "rc_kind")
    write(client, [row("e0", datetime.now(UTC) - timedelta(hours=1), rc_kind=i64(3))])
    client.registry.DeleteFeature(rs.DeleteFeatureRequest(name="rc_kind"))
    register(client, "rc_kind", pb.FLOAT)
    flushall(redis_url)

    rebuilt = reconcile(postgres_dsn, redis_url, "--features", "rc_kind")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "written 0;" in rebuilt.stdout
    assert "value type changed 1 (skipped)" in rebuilt.stdout
    assert online_dump(redis_url) == {}
    assert reconcile(postgres_dsn, redis_url, "--features", "rc_kind", "--verify").returncode == 0


def test_unknown_features_and_unreachable_stores_are_reported(postgres_dsn: str, redis_url: str) -> None:
    unknown = reconcile(postgres_dsn, redis_url, "--features", "no_such_feature")
    assert unknown.returncode == 2
    assert "not registered: no_such_feature" in unknown.stderr
    down = reconcile("postgresql://postgres@127.0.0.1:1/postgres", redis_url, "--features", "x")
    assert down.returncode == 3
    assert "Traceback" not in down.stderr

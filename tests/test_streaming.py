"""The streaming pipeline end to end: events in Valkey Streams through Spark into the online store and history.

Every served value is compared with the same windowed aggregation computed in plain
Python over the same events (tests/_streams.py), as of the stream time the value
carries as its event time.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from pyspark.sql import SparkSession

from featurestore import FeatureStoreClient, python_value
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from jobs import (
    EVENT_FIELD,
    PipelineMetrics,
    StreamConfig,
    Streams,
    dead_letter_key,
    select_streaming,
    stream_key,
    watch_streams,
)
from jobs.batch_pipeline import load_features
from tests._helpers import run_sql
from tests._streams import Check, checks, encode, events_over, micros, reference, served, streaming_feature

pytestmark = pytest.mark.usefixtures("empty_registry", "empty_online")
PARTITIONS = 2
CUSTOMERS = 12
START = datetime(2026, 3, 1, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


def xadd(r: redis.Redis, events: list[dict[str, Any]] | list[bytes], customer: str = "") -> None:
    pipe = r.pipeline(transaction=False)
    for e in events:
        raw = e if isinstance(e, bytes) else encode(e)
        entity = customer or (e["customer_id"] if isinstance(e, dict) else "")
        pipe.xadd(stream_key("purchases", entity, PARTITIONS), {EVENT_FIELD: raw})
    pipe.execute()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


class Pipeline:
    """The streaming pipeline in this process's Spark session, re-reading the registry every second."""

    def __init__(self, spark: SparkSession, config: StreamConfig, registry: str) -> None:
        self.lines: list[str] = []
        self.metrics = PipelineMetrics("streaming")
        self.streams = Streams(spark, config, self.lines.append, self.metrics)
        self.stop = threading.Event()
        self.error: BaseException | None = None

        def list_features() -> list[pb.Feature]:
            return select_streaming(load_features(registry, ["customer"]), ["customer"])

        def go() -> None:
            try:
                watch_streams(self.streams, list_features, poll=1.0, stop=self.stop)
            except BaseException as err:  # noqa: BLE001 - reported by the test
                self.error = err

        self.thread = threading.Thread(target=go, daemon=True)
        self.thread.start()

    def reports(self) -> list[Any]:
        return [r for running in self.streams.running.values() for r in running.batch.reports]

    def counted(self, outcome: str) -> float:
        """The pipeline's featurestore_pipeline_events_total{outcome} so far."""
        labels = {"pipeline": "streaming", "outcome": outcome}
        return self.metrics.registry.get_sample_value("featurestore_pipeline_events_total", labels) or 0.0

    def rows(self) -> int:
        assert self.error is None, self.error
        return sum(r.rows for r in self.reports())

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        self.streams.stop()


@pytest.fixture
def pipeline(
    spark: SparkSession, grpc_target: str, redis_url: str, postgres_dsn: str, tmp_path: Path
) -> Iterator[Pipeline]:
    run_sql(postgres_dsn, "DELETE FROM feature_history; DELETE FROM feature_freshness; SELECT 1")
    config = StreamConfig(
        redis_url=redis_url,
        postgres_dsn=postgres_dsn,
        source_url=redis_url,
        checkpoint_dir=str(tmp_path / "checkpoints"),
        partitions=PARTITIONS,
        trigger_seconds=0.5,
    )
    running = Pipeline(spark, config, grpc_target)
    yield running
    running.close()


def create(client: FeatureStoreClient, f: pb.Feature) -> None:
    client.registry.CreateFeature(rs.CreateFeatureRequest(feature=f))


def assert_matches(
    client: FeatureStoreClient, all_checks: list[Check], events: list[dict[str, Any]], entities: list[str]
) -> dict[str, dict[str, Any]]:
    """Every feature of every entity equals the reference as of the stream time it was written at.

    An empty window (min, max, avg, last over no values) writes no value: what is served then
    is an older one, written before the entity's latest values (max_age bounds its age).
    """
    got = served(client, entities, [c.feature.name for c in all_checks])
    for entity in entities:
        latest = max(at for _, at in got[entity].values())
        for check in all_checks:
            value, as_of = got[entity].get(check.feature.name, (None, 0))
            want = reference(check, events, entity, latest)
            if want is None:
                assert as_of < latest, (entity, check.feature.name)
                continue
            assert as_of == latest, (entity, check.feature.name)
            if isinstance(want, float):
                assert value == pytest.approx(want, rel=1e-9), (entity, check.feature.name)
            else:
                assert value == want, (entity, check.feature.name)
    return got


def test_every_aggregation_and_window_equals_the_reference_with_late_and_malformed_events(
    pipeline: Pipeline, client: FeatureStoreClient, redis_url: str, postgres_dsn: str
) -> None:
    all_checks = checks()
    for check in all_checks:
        create(client, check.feature)
    r = redis.Redis.from_url(redis_url)
    rng = random.Random(14)
    events = events_over(rng, START, timedelta(hours=26), 500, CUSTOMERS)
    malformed = [
        b"{not json",
        encode({"product_id": "p", "purchase_amount": 1.0, "event_time": START.isoformat()}),
        encode({"customer_id": "customer1", "purchase_amount": "12", "event_time": START.isoformat()}),
        encode({"customer_id": "customer1", "event_time": "yesterday"}),
    ]
    xadd(r, events)
    xadd(r, malformed, customer="customer1")
    wait_for(lambda: pipeline.rows() >= len(events) + len(malformed), "the first events")
    entities = sorted({e["customer_id"] for e in events})
    assert_matches(client, all_checks, events, entities)

    # Malformed events are dead-lettered with their reason and bytes; the query kept running.
    letters: list[tuple[bytes, dict[bytes, bytes]]] = r.xrange(dead_letter_key("purchases"))  # type: ignore[assignment]
    assert sorted(fields[b"data"] for _, fields in letters) == sorted(malformed)
    reasons = {fields[b"reason"].decode() for _, fields in letters}
    assert reasons == {
        "not JSON",
        "missing customer_id",
        "purchase_amount is not a FLOAT",
        "event_time is not a TIMESTAMP",
    }
    assert sum(report.dead_lettered for report in pipeline.reports()) == len(malformed)
    assert pipeline.counted("dead_lettered") == len(malformed)

    # Late events: within the watermark (5 min) they count, beyond it they are dropped and counted.
    newest = max(datetime.fromisoformat(e["event_time"]) for e in events)
    within = [
        dict(events[0], customer_id=c, event_time=(newest - timedelta(seconds=90)).isoformat()) for c in entities[:3]
    ]
    beyond = [
        dict(events[0], customer_id=c, event_time=(newest - timedelta(hours=2)).isoformat()) for c in entities[3:5]
    ]
    before = pipeline.rows()
    xadd(r, within + beyond)
    wait_for(lambda: pipeline.rows() >= before + len(within) + len(beyond), "the late events")
    assert sum(report.late_dropped for report in pipeline.reports()) == len(beyond)
    assert pipeline.counted("late_dropped") == len(beyond)
    assert pipeline.counted("applied") == len(events) + len(within)
    got = assert_matches(client, all_checks, events + within, entities)
    counts = {e: got[e]["customer_purchase_count_1h"][0] for e in entities[:5]}
    assert counts == {e: reference(all_checks[0], events + within, e, micros(newest)) for e in entities[:5]}

    # History: the latest row of every (entity, feature) is the value served online.
    rows = run_sql(
        postgres_dsn,
        "SELECT DISTINCT ON (entity_id, feature_name) entity_id, feature_name, event_time FROM feature_history "
        "ORDER BY entity_id, feature_name, event_time DESC",
    )
    latest = {(row["entity_id"], row["feature_name"]): micros(row["event_time"]) for row in rows}
    assert latest == {(e, name): at for e in entities for name, (_, at) in got[e].items()}
    # The freshness summary (the server's freshness gauges) holds the stream time of every feature.
    summary = run_sql(postgres_dsn, "SELECT feature_name, newest_event_time, writer FROM feature_freshness")
    stream_time = max(at for values in got.values() for _, at in values.values())
    names = {c.feature.name for c in all_checks}  # earlier tests in the run wrote other features
    assert {
        (r["feature_name"], micros(r["newest_event_time"]), r["writer"]) for r in summary if r["feature_name"] in names
    } == {(c.feature.name, stream_time, "streaming_pipeline") for c in all_checks}

    # A feature registered while the pipeline runs is computed from the events read after it.
    extra = Check(streaming_feature("c_sum_10m", pb.FLOAT, "sum", "purchase_amount", 10), "sum", "purchase_amount", 600)
    create(client, extra.feature)
    wait_for(lambda: any("c_sum_10m" in line for line in pipeline.lines), "the new feature to be picked up")
    fresh = events_over(rng, newest, timedelta(minutes=3), 20, 1)
    fresh = [dict(e, customer_id="newcomer") for e in fresh]
    before = pipeline.rows()
    xadd(r, fresh)
    wait_for(lambda: pipeline.rows() >= before + len(fresh), "the newcomer's events")
    assert_matches(client, [*all_checks, extra], fresh, ["newcomer"])


def _committed(checkpoint: Path) -> list[dict[str, Any]]:
    """The end offsets of every committed batch, in batch order ({key: id} or {partition: offset})."""
    commits = sorted(int(p.name) for p in (checkpoint / "commits").iterdir() if p.name.isdigit())
    return [json.loads((checkpoint / "offsets" / str(n)).read_text().splitlines()[-1]) for n in commits]


def _id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


def _append(source: str, events: list[dict[str, Any]], redis_url: str, bootstrap: str) -> list[Any]:
    """Each event's position in the stream: a Valkey entry id, or (partition, offset) in Kafka."""
    if source == "valkey":
        pipe = redis.Redis.from_url(redis_url).pipeline(transaction=False)
        for e in events:
            pipe.xadd("purchases", {EVENT_FIELD: encode(e)})
        return [i.decode() for i in pipe.execute()]
    from confluent_kafka import Producer

    positions: list[Any] = [None] * len(events)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "batch.num.messages": 1})
    for n, e in enumerate(events):

        def delivered(err: Any, msg: Any, n: int = n) -> None:
            assert err is None, err
            positions[n] = (msg.partition(), msg.offset())

        producer.produce("purchases", key=e["customer_id"].encode(), value=encode(e), on_delivery=delivered)
    assert producer.flush(30) == 0
    return positions


def _included(source: str, position: Any, end: dict[str, Any]) -> bool:
    if source == "valkey":
        return _id(position) <= _id(end["purchases"])
    partition, offset = position
    return bool(offset < int(end.get(str(partition), 0)))


@pytest.mark.timeout(900)  # two Spark starts in subprocesses: minutes on a loaded 2-core machine
@pytest.mark.parametrize("source", ["valkey", "kafka"])
def test_kill_9_mid_batch_then_restart_loses_and_double_counts_nothing(
    source: str,
    request: pytest.FixtureRequest,
    client: FeatureStoreClient,
    grpc_target: str,
    redis_url: str,
    postgres_dsn: str,
    tmp_path: Path,
) -> None:
    from featurestore.serving.v1 import value_pb2 as vpb

    bootstrap = request.getfixturevalue("tansu") if source == "kafka" else ""
    run_sql(postgres_dsn, "DELETE FROM feature_history; SELECT 1")
    all_checks = checks()[:3] + checks()[6:7]  # the demo features and count_distinct
    for check in all_checks:
        create(client, check.feature)
    events = events_over(random.Random(9), START, timedelta(hours=3), 1000, 40, jitter_s=60)
    positions = _append(source, events, redis_url, bootstrap)
    env = os.environ | {"FEATURESTORE_REGISTRY": grpc_target, "FEATURESTORE_REDIS_URL": redis_url}
    env |= {"FEATURESTORE_POSTGRES_DSN": postgres_dsn, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "jobs.streaming_pipeline", "--feature-types=customer", "--master=local[2]"]
    command += [f"--checkpoint-dir={tmp_path / 'checkpoints'}", "--max-events-per-batch=250", "--trigger-seconds=0.2"]
    command += ["--conf=spark.ui.enabled=false", "--conf=spark.sql.shuffle.partitions=2", f"--source={source}"]
    command += [f"--kafka-bootstrap={bootstrap}"] if bootstrap else []

    def start(log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    first = start(tmp_path / "first.log")
    try:
        wait_for(lambda: "batch 0:" in (tmp_path / "first.log").read_text(), "a micro-batch", timeout=400)
        time.sleep(random.Random().uniform(0.1, 1.0))  # somewhere inside a later batch
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    (query,) = (tmp_path / "checkpoints").iterdir()
    killed_at = len(_committed(query))
    assert killed_at < 4, "the pipeline finished before it was killed: kill it earlier"

    def caught_up() -> bool:
        ends = _committed(query)
        return bool(ends) and all(_included(source, p, ends[-1]) for p in positions)

    second = start(tmp_path / "second.log")
    try:
        wait_for(caught_up, "the restarted pipeline to catch up", 400)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0, (tmp_path / "second.log").read_text()[-2000:]
    restarted = (tmp_path / "second.log").read_text()
    assert f"batch {killed_at}:" in restarted, restarted[-2000:]  # it went on from its checkpoint
    if killed_at:  # killed after batch 0 committed (not just printed): the restart does not redo it
        assert "batch 0:" not in restarted

    entities = sorted({e["customer_id"] for e in events})
    assert_matches(client, all_checks, events, entities)
    # Every history row equals the reference over the events of the batches up to the one that wrote it.
    by_time: dict[int, list[dict[str, Any]]] = {}
    for end in _committed(query):
        seen = [e for e, p in zip(events, positions, strict=True) if _included(source, p, end)]
        by_time.setdefault(max(micros(datetime.fromisoformat(e["event_time"])) for e in seen), seen)
    rows = run_sql(postgres_dsn, "SELECT entity_id, feature_name, event_time, value FROM feature_history")
    named = {c.feature.name: c for c in all_checks}
    assert len(rows) > len(entities) * len(all_checks)
    for row in rows:
        at = micros(row["event_time"])
        got = python_value(vpb.Value.FromString(row["value"]))
        want = reference(named[row["feature_name"]], by_time[at], row["entity_id"], at)
        assert got == (pytest.approx(want, rel=1e-9) if isinstance(want, float) else want), dict(row)


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[str]:
    """A Kafka-protocol broker (Tansu, memory only) on a free port; its bootstrap address."""
    from devstack import free_port, start_tansu

    broker = start_tansu(tmp_path / "tansu", free_port(), {"purchases": 2})
    try:
        yield str(broker.extra["bootstrap"])
    finally:
        broker.kill()


def test_the_kafka_source_on_tansu_equals_the_reference(
    spark: SparkSession, tansu: str, client: FeatureStoreClient, grpc_target: str, redis_url: str, postgres_dsn: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    from confluent_kafka import Producer

    all_checks = checks()
    for check in all_checks:
        create(client, check.feature)
    events = events_over(random.Random(5), START, timedelta(hours=2), 400, CUSTOMERS, jitter_s=30)
    # One message per produce request: Tansu's ListOffsets "latest" is the start of a partition's newest
    # batch + 1, and the source splits a rate-limited batch by backlog, which it reads from there.
    producer = Producer({"bootstrap.servers": tansu, "linger.ms": 0, "batch.num.messages": 1})
    for e in events:
        producer.produce("purchases", key=e["customer_id"].encode(), value=encode(e))
    producer.produce("purchases", key=b"customer1", value=b"not json at all")
    assert producer.flush(30) == 0
    config = StreamConfig(
        redis_url=redis_url,
        postgres_dsn=postgres_dsn,
        source_url=redis_url,
        checkpoint_dir=str(tmp_path / "checkpoints"),
        trigger_seconds=0.5,
        source="kafka",
        kafka_bootstrap=tansu,
        max_events_per_batch=150,
    )
    running = Pipeline(spark, config, grpc_target)
    try:
        wait_for(lambda: running.rows() >= len(events) + 1, "the Kafka events")
        assert len(running.reports()) >= 3  # several micro-batches: the rate limit holds
        assert sum(r.late_dropped for r in running.reports()) == 0  # partitions kept pace in event time
    finally:
        running.close()
    assert_matches(client, all_checks, events, sorted({e["customer_id"] for e in events}))
    letters: list[tuple[bytes, dict[bytes, bytes]]] = redis.Redis.from_url(redis_url).xrange(  # type: ignore[assignment]
        dead_letter_key("purchases")
    )
    assert [fields[b"data"] for _, fields in letters] == [b"not json at all"]

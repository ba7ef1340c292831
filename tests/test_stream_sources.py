"""The Valkey Streams source's planning (latestOffset) against a real Valkey, without Spark.

A batch's end comes from XINFO STREAM when the backlog is known to fit the batch's budget,
so steady-state batches read no entry twice; the batches still never exceed the budget
and cover every entry exactly once, with deleted entries and after a restart.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pyspark.sql.streaming.datasource import ReadMaxRows

from jobs import EVENT_FIELD, EventSchema
from jobs._valkey_source import ValkeyStreamReader

SCHEMA = EventSchema((("customer_id", "STRING"), ("event_time", "TIMESTAMP")), "customer_id", "event_time")


@pytest.fixture
def stream(redis_url: str) -> Iterator[tuple[Any, str]]:
    client = redis.Redis.from_url(redis_url)
    name = f"src-{uuid.uuid4().hex[:8]}"
    yield client, name
    client.delete(name)
    client.close()


def _append(client: Any, key: str, n: int) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        event = {"customer_id": f"c{i}", "event_time": "2026-11-30T10:00:00+00:00"}
        pipe.xadd(key, {EVENT_FIELD: json.dumps(event).encode()})
    return [x.decode() for x in pipe.execute()]


def _reader(redis_url: str, name: str, budget: int) -> ValkeyStreamReader:
    options = {"url": redis_url, "stream": name, "schema": SCHEMA.to_json(), "max_events_per_batch": str(budget)}
    return ValkeyStreamReader(options)


def _xranges(client: Any) -> int:
    return int(client.info("commandstats").get("cmdstat_xrange", {}).get("calls", 0))


def _batch(reader: ValkeyStreamReader, start: dict[str, str], budget: int) -> tuple[dict[str, str], list[str]]:
    end = reader.latestOffset(start, ReadMaxRows(budget))
    ids = []
    for partition in reader.partitions(start, end):
        for batch in reader.read(partition):
            ids += batch.column("__offset").to_pylist()
    return end, ids


def test_batches_keep_the_budget_and_read_no_entry_twice_in_steady_state(
    redis_url: str, stream: tuple[Any, str]
) -> None:
    client, name = stream
    appended = _append(client, name, 250)
    reader = _reader(redis_url, name, 100)
    start, seen, sizes = reader.initialOffset(), [], []
    while True:
        end, ids = _batch(reader, start, 100)
        if not ids:
            break
        seen += ids
        sizes.append(len(ids))
        start = end
    assert seen == appended
    assert sizes == [100, 100, 50]
    more = _append(client, name, 30)
    before = _xranges(client)
    end = reader.latestOffset(start, ReadMaxRows(100))
    assert end == {name: more[-1]}
    assert _xranges(client) == before, "a backlog within the budget is planned from XINFO alone"
    more += _append(client, name, 120)
    end, ids = _batch(reader, start, 100)
    assert ids == more[:100]


def test_deleted_entries_and_a_restarted_reader_still_cover_each_entry_once(
    redis_url: str, stream: tuple[Any, str]
) -> None:
    client, name = stream
    appended = _append(client, name, 300)
    deleted = appended[10:60]
    client.xdel(name, *deleted)
    remaining = [x for x in appended if x not in deleted]
    reader = _reader(redis_url, name, 80)
    end, first = _batch(reader, reader.initialOffset(), 80)
    assert first == remaining[:80]
    restarted = _reader(redis_url, name, 80)  # a new run: the position's count is not known
    start, seen = end, list(first)
    while True:
        end, ids = _batch(restarted, start, 80)
        if not ids:
            break
        assert len(ids) <= 80
        seen += ids
        start = end
    assert seen == remaining
    client.xdel(name, *appended[-20:])  # the last entries deleted: no new entry, nothing to read
    assert _batch(restarted, start, 80)[1] == []
    more = _append(client, name, 10)
    client.xdel(name, more[-1])  # the newest entry deleted before it was read: the batch ends before it
    for reader in (restarted, _reader(redis_url, name, 0)):  # with a budget, and without
        end, ids = _batch(reader, start, 80)
        assert ids == more[:-1]
        assert end == {name: more[-2]}


def test_a_key_recreated_past_the_position_still_keeps_the_budget(redis_url: str, stream: tuple[Any, str]) -> None:
    client, name = stream
    _append(client, name, 50)
    reader = _reader(redis_url, name, 100)
    start, _ = _batch(reader, reader.initialOffset(), 100)  # the reader knows the count at its position
    client.delete(name)
    recreated = _append(client, name, 120)  # new ids, after the position; entries-added starts again
    _, ids = _batch(reader, start, 100)
    assert ids == recreated[:100]

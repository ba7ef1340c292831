"""Materialization, run on the executors: each partition writes its own entities.

A partition's rows arrive as Arrow batches (one row per entity, one column per
feature). Every value is encoded by `server._codec.ValueEncoder` (byte for byte
what the online write path stores) and goes first to the offline history
(`PostgresHistoryStore.append`: binary COPY, idempotent on rerun), then to
Redis through `RedisOnlineStore.write` (the only-newer script), several
script calls in flight on pipelined connections. The same stores and the same
order as WriteFeatures, so a served value is the same whoever wrote it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from server import _codec
from server._postgres import create_pool
from server.offline import HistoryRecord, PostgresHistoryStore
from server.online import KeyWrite, RedisOnlineStore, connect, entity_key

RESULT_SCHEMA = "values long, entities long, rows long"
_KEYS_PER_CALL = 256  # entities per write script call
_CALLS_IN_FLIGHT = 8
_HISTORY_BATCH = 50_000


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """Where and what a partition writes (pickled to the executors)."""

    redis_url: str
    redis_cluster: bool
    postgres_dsn: str
    entity_type: str
    features: tuple[tuple[str, str], ...]  # (feature name, Value member) per feature column
    event_micros: int
    online_ttl: int = 0


@dataclass(slots=True)
class Totals:
    values: int = 0
    entities: int = 0
    rows: int = 0


class _Encoded:
    """One Arrow batch turned into online writes and history records, a feature column at a time."""

    def __init__(self, config: SinkConfig, batch: pa.RecordBatch, when: datetime) -> None:
        self.ids: list[str] = batch.column("entity_id").to_pylist()
        self.fields: list[list[tuple[bytes, bytes]]] = [[] for _ in self.ids]
        self.history: list[HistoryRecord] = []
        self.values = 0
        self.rows = sum(batch.column("__rows").to_pylist())
        for name, kind in config.features:
            encoder = _codec.ValueEncoder(name, kind, config.event_micros)
            self._column(config.entity_type, encoder, batch.column(name).to_pylist(), when)

    def _column(self, entity_type: str, encoder: _codec.ValueEncoder, xs: list[object], when: datetime) -> None:
        name, encode, history, fields = encoder.name, encoder.encode, self.history, self.fields
        field, json_field = name.encode(), name.encode() + _codec.JSON_FIELD_SUFFIX
        for i, (entity_id, x) in enumerate(zip(self.ids, xs, strict=True)):
            if x is None:
                continue
            proto, as_json, value = encode(x)
            fields[i] += ((field, proto), (json_field, as_json))
            history.append((entity_type, entity_id, name, when, value, proto[_codec.TIME_BYTES :]))
            self.values += 1

    def online(self, entity_type: str) -> list[KeyWrite]:
        return [KeyWrite(entity_key(entity_type, i), f) for i, f in zip(self.ids, self.fields, strict=True) if f]


async def _write_online(store: RedisOnlineStore, writes: Sequence[KeyWrite]) -> None:
    gate = asyncio.Semaphore(_CALLS_IN_FLIGHT)

    async def one(chunk: Sequence[KeyWrite]) -> None:
        async with gate:
            await store.write(chunk)

    chunks = [writes[i : i + _KEYS_PER_CALL] for i in range(0, len(writes), _KEYS_PER_CALL)]
    await asyncio.gather(*(one(chunk) for chunk in chunks))


async def _write(history: PostgresHistoryStore, online: RedisOnlineStore, encoded: _Encoded, entity_type: str) -> int:
    """History first, then the online store (so a served value is always in history); returns entities written."""
    for i in range(0, len(encoded.history), _HISTORY_BATCH):
        await history.append_records(encoded.history[i : i + _HISTORY_BATCH])
    writes = encoded.online(entity_type)
    await _write_online(online, writes)
    return len(writes)


def _next_encoded(batches: Iterator[pa.RecordBatch], config: SinkConfig, when: datetime) -> _Encoded | None:
    batch = next(batches, None)
    return None if batch is None else _Encoded(config, batch, when)


async def write_batches(config: SinkConfig, batches: Iterable[pa.RecordBatch]) -> Totals:
    """Encode and write every batch; the next batch is read and encoded (in a thread) while one is written."""
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=config.event_micros)
    client = connect(config.redis_url, cluster=config.redis_cluster, connections=2, timeout=30.0)
    online = RedisOnlineStore(client, ttl_seconds=config.online_ttl)
    pool = await create_pool(config.postgres_dsn, min_size=1, max_size=2, command_timeout=300.0)
    history, totals, source = PostgresHistoryStore(pool), Totals(), iter(batches)
    pending: asyncio.Task[int] | None = None
    try:
        while (encoded := await asyncio.to_thread(_next_encoded, source, config, when)) is not None:
            totals.entities += await pending if pending else 0
            pending = asyncio.create_task(_write(history, online, encoded, config.entity_type))
            totals.values, totals.rows = totals.values + encoded.values, totals.rows + encoded.rows
        totals.entities += await pending if pending else 0
    finally:
        if pending and not pending.done():
            pending.cancel()
        await online.close()
        await pool.close()
    return totals


def partition_writer(config: SinkConfig) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function `mapInArrow` runs per partition; it yields one row of totals."""

    def write_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        totals = asyncio.run(write_batches(config, batches))
        yield pa.RecordBatch.from_pydict(
            {"values": [totals.values], "entities": [totals.entities], "rows": [totals.rows]},
            schema=pa.schema([("values", pa.int64()), ("entities", pa.int64()), ("rows", pa.int64())]),
        )

    return write_partition

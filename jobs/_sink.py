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
from datetime import UTC, datetime

import pyarrow as pa

from server import _codec
from server._postgres import create_pool
from server.offline import HistoryRow, PostgresHistoryStore
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
    """One Arrow batch turned into online writes and history rows."""

    def __init__(self, config: SinkConfig, batch: pa.RecordBatch, when: datetime) -> None:
        self.online: list[KeyWrite] = []
        self.history: list[HistoryRow] = []
        self.values = 0
        ids = batch.column("entity_id").to_pylist()
        encoders = [_codec.ValueEncoder(name, kind, config.event_micros) for name, kind in config.features]
        columns = [batch.column(name).to_pylist() for name, _ in config.features]
        for entity_id, values in zip(ids, zip(*columns, strict=True), strict=True):
            self._entity(config.entity_type, entity_id, zip(encoders, values, strict=True), when)

    def _entity(
        self, entity_type: str, entity_id: str, values: Iterable[tuple[_codec.ValueEncoder, object]], when: datetime
    ) -> None:
        fields: list[tuple[bytes, bytes]] = []
        for encoder, x in values:
            if x is None:
                continue
            proto, as_json, value = encoder.encode(x)
            name = encoder.name
            fields += ((name.encode(), proto), (name.encode() + _codec.JSON_FIELD_SUFFIX, as_json))
            self.history.append(HistoryRow(entity_type, entity_id, name, when, value, proto[_codec.TIME_BYTES :]))
        if fields:
            self.online.append(KeyWrite(entity_key(entity_type, entity_id), fields))
            self.values += len(fields) // _codec.FIELDS_PER_VALUE


async def _write_online(store: RedisOnlineStore, writes: Sequence[KeyWrite]) -> None:
    gate = asyncio.Semaphore(_CALLS_IN_FLIGHT)

    async def one(chunk: Sequence[KeyWrite]) -> None:
        async with gate:
            await store.write(chunk)

    chunks = [writes[i : i + _KEYS_PER_CALL] for i in range(0, len(writes), _KEYS_PER_CALL)]
    await asyncio.gather(*(one(chunk) for chunk in chunks))


async def write_batches(config: SinkConfig, batches: Iterable[pa.RecordBatch]) -> Totals:
    """Encode and write every batch: history first, then the online store."""
    when = datetime.fromtimestamp(config.event_micros / 1e6, UTC)
    client = connect(config.redis_url, cluster=config.redis_cluster, connections=2, timeout=30.0)
    online = RedisOnlineStore(client, ttl_seconds=config.online_ttl)
    pool = await create_pool(config.postgres_dsn, min_size=1, max_size=2, command_timeout=300.0)
    totals = Totals()
    try:
        history = PostgresHistoryStore(pool)
        for batch in batches:
            encoded = _Encoded(config, batch, when)
            for i in range(0, len(encoded.history), _HISTORY_BATCH):
                await history.append(encoded.history[i : i + _HISTORY_BATCH])
            await _write_online(online, encoded.online)
            totals.values += encoded.values
            totals.entities += len(encoded.online)
            totals.rows += sum(batch.column("__rows").to_pylist())
    finally:
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

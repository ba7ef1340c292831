"""Materialization, run on the executors: each partition writes its own entities.

A partition's rows arrive as Arrow batches (one row per entity, one column per
feature). Every value is encoded by `server.codec.ValueEncoder` (byte for byte
what the online write path stores) and goes first to the offline history
(`PostgresHistoryStore.append_records`: binary COPY, idempotent on rerun), then
to Redis through `RedisOnlineStore.write` (the only-newer script), several
script calls in flight on pipelined connections. The same stores and the same
order as WriteFeatures, so a served value is the same whoever wrote it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from server.core import HistoryRecord, KeyWrite, codec, entity_key
from server.core.postgres import create_pool
from server.offline import PostgresHistoryStore
from server.online import RedisOnlineStore, connect

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
        self._records: list[list[HistoryRecord]] = [[] for _ in self.ids]
        self.values = 0
        self.rows = sum(batch.column("__rows").to_pylist())
        for name, kind in config.features:
            encoder = codec.ValueEncoder(name, kind, config.event_micros)
            self._column(config.entity_type, encoder, batch.column(name).to_pylist(), when)
        # An entity's values side by side: their index entries are neighbours (the same leaf
        # pages, touched once), where a feature at a time sent every insert to a random page.
        self.history: list[HistoryRecord] = [r for records in self._records for r in records]

    def _column(self, entity_type: str, encoder: codec.ValueEncoder, xs: list[object], when: datetime) -> None:
        name, encode, records, fields = encoder.name, encoder.encode, self._records, self.fields
        field, json_field = name.encode(), name.encode() + codec.JSON_FIELD_SUFFIX
        for i, (entity_id, x) in enumerate(zip(self.ids, xs, strict=True)):
            if x is None:
                continue
            proto, as_json, value = encode(x)
            fields[i] += ((field, proto), (json_field, as_json))
            records[i].append((entity_type, entity_id, name, when, value, proto[codec.TIME_BYTES :]))
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


def _next_encoded(batches: Iterator[pa.RecordBatch], config: SinkConfig, when: datetime) -> _Encoded | None:
    batch = next(batches, None)
    return None if batch is None else _Encoded(config, batch, when)


class _Stages:
    """Three stages over bounded queues, so reading+encoding, PostgreSQL and Redis all work at once.

    A batch reaches the online store only after its history is written (so a served value is
    always in history); batch k's online write overlaps batch k+1's COPY and batch k+2's encoding.
    """

    def __init__(self, config: SinkConfig, history: PostgresHistoryStore, online: RedisOnlineStore) -> None:
        self.config, self.history, self.online, self.totals = config, history, online, Totals()
        self.to_history: asyncio.Queue[_Encoded | None] = asyncio.Queue(maxsize=1)
        self.to_online: asyncio.Queue[_Encoded | None] = asyncio.Queue(maxsize=1)

    async def read(self, batches: Iterator[pa.RecordBatch]) -> None:
        when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=self.config.event_micros)
        while (encoded := await asyncio.to_thread(_next_encoded, batches, self.config, when)) is not None:
            await self.to_history.put(encoded)
        await self.to_history.put(None)

    async def write_history(self) -> None:
        while (encoded := await self.to_history.get()) is not None:
            for i in range(0, len(encoded.history), _HISTORY_BATCH):
                await self.history.append_records(encoded.history[i : i + _HISTORY_BATCH])
            await self.to_online.put(encoded)
        await self.to_online.put(None)

    async def write_online(self) -> None:
        while (encoded := await self.to_online.get()) is not None:
            writes = encoded.online(self.config.entity_type)
            await _write_online(self.online, writes)
            self.totals.values += encoded.values
            self.totals.entities += len(writes)
            self.totals.rows += encoded.rows


async def write_batches(config: SinkConfig, batches: Iterable[pa.RecordBatch]) -> Totals:
    """Encode and write every batch, history first (see _Stages)."""
    client = connect(config.redis_url, cluster=config.redis_cluster, connections=2, timeout=30.0)
    online = RedisOnlineStore(client, ttl_seconds=config.online_ttl)
    pool = await create_pool(config.postgres_dsn, min_size=1, max_size=2, command_timeout=300.0)
    stages = _Stages(config, PostgresHistoryStore(pool), online)
    try:
        async with asyncio.TaskGroup() as group:  # the first failure cancels the other stages
            group.create_task(stages.read(iter(batches)))
            group.create_task(stages.write_history())
            group.create_task(stages.write_online())
    except* Exception as failure:  # noqa: BLE001 - re-raised, unwrapped
        raise failure.exceptions[0] from None  # the worker reports the first cause, not a group
    finally:
        await online.close()
        await pool.close()
    return stages.totals


def partition_writer(config: SinkConfig) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function `mapInArrow` runs per partition; it yields one row of totals."""

    def write_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        totals = asyncio.run(write_batches(config, batches))
        yield pa.RecordBatch.from_pydict(
            {"values": [totals.values], "entities": [totals.entities], "rows": [totals.rows]},
            schema=pa.schema([("values", pa.int64()), ("entities", pa.int64()), ("rows", pa.int64())]),
        )

    return write_partition

"""Materialization, run on the executors: each partition writes its own entities.

A partition's rows arrive as Arrow batches: an `entity_id` column, one column per
feature, and either one event time for the whole run (the batch pipeline: one row per
entity, with `__rows`, the source rows behind it) or an `__event_micros` column (bulk
ingest: any number of rows per entity). Rows become writes through
`server.core.WriteBatch`, the conversion WriteFeatures uses too (byte for byte what the
online write path stores); they go first to the offline history
(`PostgresHistoryStore.append_records`: binary COPY, idempotent on rerun), then to Redis
through `RedisOnlineStore.write` (the only-newer script), several script calls in flight
on pipelined connections. The same stores and the same order as WriteFeatures, so a
served value is the same whoever wrote it. With `latest_online`, a batch sends each
entity's newest value of each feature online, not every row's (the script would keep
the same ones).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa

from server.core import KeyWrite, WriteBatch, codec
from server.core.postgres import create_pool
from server.offline import PostgresHistoryStore
from server.online import RedisOnlineStore, connect

RESULT_SCHEMA = "values long, entities long, rows long"
ENTITY_COLUMN = "entity_id"
ROWS_COLUMN = "__rows"  # source rows behind an output row (the batch pipeline's count)
EVENT_MICROS_COLUMN = "__event_micros"  # a row's event time, when the run has no single one
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
    event_micros: int | None  # every row's event time; None: each row's, in EVENT_MICROS_COLUMN
    online_ttl: int = 0
    latest_online: bool = False  # online, only each entity's newest value per feature (bulk ingest)


@dataclass(slots=True)
class Totals:
    values: int = 0
    entities: int = 0
    rows: int = 0


class _Encoded:
    """One Arrow batch turned into online writes and history records (server.core.WriteBatch)."""

    def __init__(self, config: SinkConfig, batch: pa.RecordBatch) -> None:
        writes = WriteBatch(config.entity_type, latest_online=config.latest_online)
        ids: list[str] = batch.column(ENTITY_COLUMN).to_pylist()
        columns = [(codec.encoder(name, kind), batch.column(name).to_pylist()) for name, kind in config.features]
        if config.event_micros is not None:
            writes.add_columns(ids, writes.event_time(config.event_micros), columns)
        else:
            event_time = writes.event_time
            times = [event_time(micros) for micros in batch.column(EVENT_MICROS_COLUMN).to_pylist()]
            writes.add_columns(ids, times, columns)
        names = batch.schema.names
        self.rows = sum(batch.column(ROWS_COLUMN).to_pylist()) if ROWS_COLUMN in names else batch.num_rows
        self.values = writes.values
        self.history = writes.history
        self.writes = writes

    def online(self) -> list[KeyWrite]:
        return self.writes.online()


async def _write_online(store: RedisOnlineStore, writes: Sequence[KeyWrite]) -> None:
    gate = asyncio.Semaphore(_CALLS_IN_FLIGHT)

    async def one(chunk: Sequence[KeyWrite]) -> None:
        async with gate:
            await store.write(chunk)

    chunks = [writes[i : i + _KEYS_PER_CALL] for i in range(0, len(writes), _KEYS_PER_CALL)]
    await asyncio.gather(*(one(chunk) for chunk in chunks))


def _next_encoded(batches: Iterator[pa.RecordBatch], config: SinkConfig) -> _Encoded | None:
    batch = next(batches, None)
    return None if batch is None else _Encoded(config, batch)


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
        while (encoded := await asyncio.to_thread(_next_encoded, batches, self.config)) is not None:
            await self.to_history.put(encoded)
        await self.to_history.put(None)

    async def write_history(self) -> None:
        while (encoded := await self.to_history.get()) is not None:
            await self.history.append_records(encoded.history)  # in COPYs of _HISTORY_BATCH rows
            await self.to_online.put(encoded)
        await self.to_online.put(None)

    async def write_online(self) -> None:
        while (encoded := await self.to_online.get()) is not None:
            writes = encoded.online()
            await _write_online(self.online, writes)
            self.totals.values += encoded.values
            self.totals.entities += len(writes)
            self.totals.rows += encoded.rows


async def write_batches(config: SinkConfig, batches: Iterable[pa.RecordBatch]) -> Totals:
    """Encode and write every batch, history first (see _Stages)."""
    client = connect(config.redis_url, cluster=config.redis_cluster, connections=2, timeout=30.0)
    online = RedisOnlineStore(client, ttl_seconds=config.online_ttl)
    pool = await create_pool(config.postgres_dsn, min_size=1, max_size=2, command_timeout=300.0)
    stages = _Stages(config, PostgresHistoryStore(pool, copy_rows=_HISTORY_BATCH), online)
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

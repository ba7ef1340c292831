"""The offline store on PostgreSQL: feature history, partitioned by month.

Ingestion is idempotent (a rerun leaves one row per entity, feature and event
time; the latest ingestion wins). A batch first goes in by binary COPY straight
into `feature_history`, as fast as COPY can be; if any of its rows exist
already, that COPY is rolled back and the batch goes through a staging table
and one INSERT ... ON CONFLICT DO UPDATE instead. Partitions are created before the rows that need them
arrive; `drop_expired` removes partitions older than the retention.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import asyncpg

from server._errors import unavailable
from server._postgres import CONNECTION_ERRORS, quote_ident
from server.offline._model import HistoryPage, HistoryQuery, HistoryRow

_log = logging.getLogger(__name__)
_PARTITION_LOCK = 0x6869_7374  # "hist"
_PREFIX = "feature_history_p"

_COLUMNS = ["entity_type", "entity_id", "feature_name", "event_time", "value", "frame"]
# One history row in _COLUMNS order.
HistoryRecord = tuple[str, str, str, datetime, bytes, bytes]
_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS history_staging (entity_type text, entity_id text, "
    "feature_name text, event_time timestamptz, value bytea, frame bytea) ON COMMIT DELETE ROWS"
)
_MERGE = (
    "INSERT INTO feature_history (entity_type, entity_id, feature_name, event_time, value, frame) "
    "SELECT entity_type, entity_id, feature_name, event_time, value, frame FROM history_staging "
    "ON CONFLICT (entity_type, entity_id, feature_name, event_time) "
    "DO UPDATE SET value = EXCLUDED.value, frame = EXCLUDED.frame, ingestion_time = now()"
)
# One page as one row: PostgreSQL concatenates the frames (asyncpg then decodes one value,
# not a record per history row) and reports the cursor of the page's last value. Every
# aggregate orders by the window's own order, so the planner feeds them presorted rows
# (no second sort; 0.72 -> 0.52 ms for a 1,000-value page).
_RANGE = (
    "SELECT coalesce(string_agg(frame, ''::bytea ORDER BY event_time, feature_name) FILTER (WHERE rn <= $8), "
    "    ''::bytea) AS frames, "
    "  count(*) FILTER (WHERE rn <= $8) AS n, count(*) > $8 AS more, "
    "  max(event_time) FILTER (WHERE rn <= $8) AS last_time, "
    "  (array_agg(feature_name ORDER BY event_time, feature_name) FILTER (WHERE rn <= $8))[least(count(*), $8)] "
    "    AS last_name "
    "FROM (SELECT event_time, feature_name, frame, row_number() OVER (ORDER BY event_time, feature_name) AS rn "
    "  FROM (SELECT event_time, feature_name, frame FROM feature_history "
    "    WHERE entity_type = $1 AND entity_id = $2 AND feature_name = ANY($3::text[]) "
    "    AND event_time >= $4 AND event_time < $5 AND (event_time, feature_name) > ($6, $7) "
    "    ORDER BY event_time, feature_name LIMIT $8 + 1) s) page"
)
# For each (row, feature): the latest value at or before the row's timestamp (optionally not older
# than $5): one backward index probe on the primary key per pair.
_AS_OF = (
    "SELECT r.ord::int4 AS row_ord, f.ord::int4 AS feature_ord, "
    "(extract(epoch FROM h.event_time) * 1000000)::int8 AS micros, h.frame "
    "FROM unnest($2::text[], $3::timestamptz[]) WITH ORDINALITY AS r(entity_id, ts, ord) "
    "CROSS JOIN unnest($4::text[]) WITH ORDINALITY AS f(name, ord) "
    "CROSS JOIN LATERAL (SELECT event_time, frame FROM feature_history h "
    "  WHERE h.entity_type = $1 AND h.entity_id = r.entity_id AND h.feature_name = f.name "
    "  AND h.event_time <= r.ts AND ($5::interval IS NULL OR h.event_time >= r.ts - $5::interval) "
    "  ORDER BY h.event_time DESC LIMIT 1) h"
)
_PARTITIONS = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = 'feature_history'::regclass"
)
_EPOCH = datetime(1, 1, 1, tzinfo=UTC)


def _month(d: datetime | date) -> date:
    return date(d.year, d.month, 1)


def _next_month(m: date) -> date:
    return date(m.year + m.month // 12, m.month % 12 + 1, 1)


def _month_of(partition: str) -> date | None:
    digits = partition.removeprefix(_PREFIX)
    if len(digits) != 6 or not digits.isdigit():
        return None
    return date(int(digits[:4]), int(digits[4:]), 1)


def partition_name(month: date) -> str:
    return f"{_PREFIX}{month.year:04d}{month.month:02d}"


def _create_partition_sql(month: date) -> str:
    """DDL takes no parameters: the name and bounds are built from dates only."""
    lower, upper = month.isoformat(), _next_month(month).isoformat()
    return (
        "CREATE TABLE IF NOT EXISTS " + quote_ident(partition_name(month)) + " PARTITION OF feature_history "
        f"FOR VALUES FROM ('{lower} 00:00:00+00') TO ('{upper} 00:00:00+00')"
    )


class PostgresHistoryStore:
    """Feature history in PostgreSQL through an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._partitions: set[date] = set()

    async def append(self, rows: Sequence[HistoryRow]) -> None:
        """Store `rows`; re-appending the same (entity, feature, event time) replaces the value."""
        latest = {(r.entity_type, r.entity_id, r.feature_name, r.event_time): r for r in rows}  # the last one wins
        await self.append_records([(*key, r.value, r.frame) for key, r in latest.items()])

    async def append_records(self, records: Sequence[HistoryRecord]) -> None:
        """`append` for rows already known to be distinct per (entity, feature, event time), as tuples.

        A batch run's rows are (one value per entity and feature), and it skips the
        per-row objects and the de-duplication.
        """
        if not records:
            return
        months = {_month(r[3]) for r in records}
        try:
            try:
                await self._copy(records, months)
            except asyncpg.CheckViolationError:  # "no partition for row": another process dropped it
                self._partitions.clear()
                await self._copy(records, months)
        except CONNECTION_ERRORS as exc:
            raise unavailable("postgresql", type(exc).__name__) from exc

    async def _copy(self, records: Sequence[tuple[object, ...]], months: set[date]) -> None:
        await self._ensure_partitions(months)
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                async with conn.transaction():  # a savepoint: new rows take the fast path
                    await conn.copy_records_to_table("feature_history", records=records, columns=_COLUMNS)
                return
            except asyncpg.UniqueViolationError:
                pass
            await conn.execute(_STAGING)
            await conn.copy_records_to_table("history_staging", records=records, columns=_COLUMNS)
            await conn.execute(_MERGE)

    async def _ensure_partitions(self, months: set[date]) -> None:
        missing = months - self._partitions
        if not missing:
            return
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _PARTITION_LOCK)
            for month in sorted(missing):
                await conn.execute(_create_partition_sql(month))
        self._partitions |= missing

    async def query(self, q: HistoryQuery) -> HistoryPage:
        """Up to q.limit values in (event time, feature) order, after q.after."""
        after_time, after_name = q.after or (_EPOCH, "")
        try:
            row = await self._pool.fetchrow(
                _RANGE,
                q.entity_type,
                q.entity_id,
                list(q.feature_names),
                q.start,
                q.end,
                after_time,
                after_name,
                q.limit,
            )
        except CONNECTION_ERRORS as exc:
            raise unavailable("postgresql", type(exc).__name__) from exc
        assert row is not None
        last = (row["last_time"], row["last_name"]) if row["n"] else None
        return HistoryPage(row["frames"], row["n"], row["more"], last)

    async def as_of(
        self,
        entity_type: str,
        entity_ids: Sequence[str],
        times: Sequence[datetime],
        feature_names: Sequence[str],
        max_age: timedelta | None,
    ) -> list[tuple[int, int, int, bytes]]:
        """(row index, feature index, event time µs, frame) of each (row, feature) that has a value then.

        Indexes are 0-based positions in `entity_ids`/`times` and `feature_names`.
        """
        try:
            rows = await self._pool.fetch(
                _AS_OF, entity_type, list(entity_ids), list(times), list(feature_names), max_age
            )
        except CONNECTION_ERRORS as exc:
            raise unavailable("postgresql", type(exc).__name__) from exc
        return [(r["row_ord"] - 1, r["feature_ord"] - 1, r["micros"], r["frame"]) for r in rows]

    async def drop_expired(self, retention: timedelta, now: datetime | None = None) -> list[str]:
        """Drop the partitions wholly older than `retention`; returns their names."""
        cutoff = _month((now or datetime.now(UTC)) - retention)
        dropped = []
        async with self._pool.acquire() as conn:
            for record in await conn.fetch(_PARTITIONS):
                name: str = record["relname"]
                month = _month_of(name)
                if month is not None and _next_month(month) <= cutoff:
                    await conn.execute("DROP TABLE IF EXISTS " + quote_ident(name))
                    self._partitions.discard(month)
                    dropped.append(name)
        if dropped:
            _log.info("dropped history partitions past retention: %s", ", ".join(dropped))
        return dropped

    async def enforce_retention(self, retention: timedelta, every: float = 3600.0) -> None:
        """Drop expired partitions now and then every `every` seconds, forever."""
        while True:
            try:
                await self.drop_expired(retention)
            except Exception as exc:  # noqa: BLE001 - retried at the next round
                _log.warning("history retention failed: %s", exc)
            await asyncio.sleep(every)

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")

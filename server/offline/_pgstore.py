"""The offline store on PostgreSQL: feature history, partitioned by month.

Ingestion is idempotent (a rerun leaves one row per entity, feature and event
time; the latest ingestion wins). A batch first goes in by binary COPY straight
into `feature_history`, as fast as COPY can be; if any of its rows exist
already (or it holds one row twice), that COPY is rolled back and the batch goes
through a staging table and one INSERT ... ON CONFLICT DO UPDATE instead, the
last of equal rows winning. Partitions are created before the rows that need them
arrive; `drop_expired` removes partitions older than the retention.

Group commit: appends of concurrent callers are committed together. The first
caller's rows are copied at once; callers arriving while a COPY runs queue up and
go in the next one, as one COPY in one transaction (at most `copies` COPYs run at
a time, each of at most `group_rows` rows unless one caller brings more). Every
caller returns only once its rows are committed, so the history is durable before
a write is acknowledged, and a caller gets the group's failure if it fails.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from server.core import HISTORY_COLUMNS, HistoryRecord, HistoryRows, copy_data, copy_tuples
from server.core.errors import resource_exhausted
from server.core.postgres import quote_ident, translated_postgres
from server.offline._asof_sql import AS_OF_PAIRS, AS_OF_ROWS, row_cells
from server.offline._model import AsOfQuery, HistoryPage, HistoryQuery, RowCells

_log = logging.getLogger(__name__)
_PARTITION_LOCK = 0x6869_7374  # "hist"
_PREFIX = "feature_history_p"

# The staging table numbers its rows in COPY order (`seq`), so of rows with one key the merge keeps the last.
_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS history_staging (entity_type text, entity_id text, "
    "feature_name text, event_time timestamptz, value bytea, frame bytea, "
    "seq bigint GENERATED ALWAYS AS IDENTITY) ON COMMIT DELETE ROWS"
)
_MERGE = (
    "INSERT INTO feature_history (entity_type, entity_id, feature_name, event_time, value, frame) "
    "SELECT DISTINCT ON (entity_type, entity_id, feature_name, event_time) "
    "  entity_type, entity_id, feature_name, event_time, value, frame FROM history_staging "
    "  ORDER BY entity_type, entity_id, feature_name, event_time, seq DESC "
    "ON CONFLICT (entity_type, entity_id, feature_name, event_time) "
    "DO UPDATE SET value = EXCLUDED.value, frame = EXCLUDED.frame, ingestion_time = now()"
)
# One page as one row: PostgreSQL concatenates the frames (asyncpg then decodes one value,
# not a record per history row) and reports the cursor of the page's last value. The page
# is read one value past the limit to learn whether more follow; that value is cut off the
# end. Every aggregate orders by the scan's own order, so none sorts again.
_RANGE = (
    "SELECT CASE WHEN count(*) > $8 THEN substr(string_agg(frame, ''::bytea ORDER BY event_time, feature_name), 1, "
    "    (sum(length(frame)) - (array_agg(length(frame) ORDER BY event_time, feature_name))[count(*)])::int4) "
    "  ELSE coalesce(string_agg(frame, ''::bytea ORDER BY event_time, feature_name), ''::bytea) END AS frames, "
    "  least(count(*), $8) AS n, count(*) > $8 AS more, "
    "  (array_agg(event_time ORDER BY event_time, feature_name))[least(count(*), $8)] AS last_time, "
    "  (array_agg(feature_name ORDER BY event_time, feature_name))[least(count(*), $8)] AS last_name "
    "FROM (SELECT event_time, feature_name, frame FROM feature_history "
    "  WHERE entity_type = $1 AND entity_id = $2 AND feature_name = ANY($3::text[]) "
    "  AND event_time >= $4 AND event_time < $5 AND (event_time, feature_name) > ($6, $7) "
    "  ORDER BY event_time, feature_name LIMIT $8 + 1) page"
)
_PARTITIONS = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = 'feature_history'::regclass"
)
_EPOCH = datetime(1, 1, 1, tzinfo=UTC)
_Pending = tuple[Sequence[bytes], set[date], "asyncio.Future[None]"]  # COPY tuples, their months, the caller
_CopyGroup = Callable[[Sequence[bytes], set[date]], Awaitable[None]]


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
    """Feature history in PostgreSQL through asyncpg pools.

    `pool` takes the writes (and partition maintenance), `read_pool` the history and
    training reads, so that long reads cannot hold every connection a write needs.
    `max_new_partitions` bounds how many monthly partitions one append may create
    (None: unbounded, for batch backfills); the partitions of the current and next
    months are created ahead of time by `maintain_partitions`. A method's `timeout` (what
    is left of the caller's deadline) shortens, never lengthens, `statement_timeout`.
    A group's rows go in COPYs of at most `copy_rows` rows (None: one COPY per group). Rows
    arrive as binary COPY tuples (server.core.HistoryRows, built while the write is encoded;
    records are turned into them on arrival), so a COPY joins and sends bytes: nothing is
    encoded per row meanwhile.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        read_pool: asyncpg.Pool | None = None,
        *,
        max_new_partitions: int | None = None,
        statement_timeout: float | None = None,
        group_rows: int = 5_000,
        copies: int = 2,
        copy_rows: int | None = None,
    ) -> None:
        self._pool = pool
        self._read_pool = read_pool or pool
        self._max_new_partitions = max_new_partitions
        self._statement_timeout = statement_timeout
        self._partitions: set[date] = set()
        self._partitions_known = False
        self._copy_rows = copy_rows
        self._group = _GroupCommit(self._copy_group, group_rows, copies)

    @translated_postgres
    async def append(self, rows: HistoryRows | Sequence[HistoryRecord], timeout: float | None = None) -> None:
        """Store `rows` (a WriteBatch's, or records: a HistoryRow is one); returns once they are
        committed. Re-appending the same (entity, feature, event time) replaces the value (the last wins).

        `timeout`: seconds the caller waits (and the statements may take); past it the caller
        gets UNAVAILABLE, while its rows may still be committed with their group (a retry
        then changes nothing).
        """
        if not rows:
            return
        if isinstance(rows, HistoryRows):
            tuples, months = rows.tuples, rows.months()
        else:
            tuples, months = copy_tuples(rows), {_month(when) for when in {r[3] for r in rows}}
        timeout = self._within(timeout)
        await self._ensure_partitions(months)  # this caller's own limit on new partitions
        await self._group.append(tuples, months, timeout)

    async def append_records(
        self, records: HistoryRows | Sequence[HistoryRecord], timeout: float | None = None
    ) -> None:
        """`append` (the pipelines' name for it)."""
        await self.append(records, timeout)

    async def _copy_group(self, records: Sequence[bytes], months: set[date]) -> None:
        timeout = self._statement_timeout
        try:
            await self._copy(records, months, timeout)
        except asyncpg.CheckViolationError:  # "no partition for row": another process dropped it
            self._partitions.clear()
            self._partitions_known = False
            await self._copy(records, months, timeout)

    async def _copy(self, records: Sequence[bytes], months: set[date], timeout: float | None) -> None:
        await self._ensure_partitions(months, limited=False)  # the callers' limits were checked on arrival
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                async with conn.transaction():  # a savepoint: new rows take the fast path
                    for part in _parts(records, self._copy_rows):
                        await _copy_in(conn, "feature_history", part, timeout)
                return
            except asyncpg.UniqueViolationError:
                pass
            await conn.execute(_STAGING, timeout=timeout)
            for part in _parts(records, self._copy_rows):
                await _copy_in(conn, "history_staging", part, timeout)
            await conn.execute(_MERGE, timeout=timeout)  # one row per key, the last one

    async def _ensure_partitions(self, months: set[date], *, limited: bool = True) -> None:
        missing = months - self._partitions
        if not missing:
            return
        limit = self._max_new_partitions if limited else None
        if limit is not None and not self._partitions_known:
            await self._load_partitions()  # after a start or a drop: learn what exists before counting
            missing = months - self._partitions
        if not missing:
            return
        if limit is not None and len(missing) > limit:
            problem = (
                f"event times fall in {len(missing)} months that have no history partition yet; one request "
                f"may add at most {self._max_new_partitions}: split the rows by month"
            )
            raise resource_exhausted("rows", problem)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _PARTITION_LOCK)
            for month in sorted(missing):
                await conn.execute(_create_partition_sql(month))
        self._partitions |= missing

    def _within(self, timeout: float | None) -> float | None:
        if timeout is None or self._statement_timeout is None:
            return timeout if timeout is not None else self._statement_timeout
        return min(timeout, self._statement_timeout)

    async def _load_partitions(self) -> None:
        names = [record["relname"] for record in await self._pool.fetch(_PARTITIONS)]
        self._partitions |= {m for m in map(_month_of, names) if m is not None}
        self._partitions_known = True

    @translated_postgres
    async def create_upcoming_partitions(self, now: datetime | None = None) -> None:
        """The partitions of the current and the next month, created before any row needs them."""
        this_month = _month(now or datetime.now(UTC))
        await self._ensure_partitions({this_month, _next_month(this_month)})

    async def maintain_partitions(self, every: float = 3600.0) -> None:
        """create_upcoming_partitions now and then every `every` seconds, forever."""
        while True:
            try:
                await self.create_upcoming_partitions()
            except Exception as exc:  # noqa: BLE001 - retried at the next round; writes create what they need
                _log.warning("creating upcoming history partitions failed: %s", exc)
            await asyncio.sleep(every)

    @translated_postgres
    async def query(self, q: HistoryQuery, timeout: float | None = None) -> HistoryPage:
        """Up to q.limit values in (event time, feature) order, after q.after."""
        after_time, after_name = q.after or (_EPOCH, "")
        args = (q.entity_type, q.entity_id, list(q.feature_names), q.start, q.end, after_time, after_name, q.limit)
        row = await self._read_pool.fetchrow(_RANGE, *args, timeout=self._within(timeout))
        assert row is not None
        last = (row["last_time"], row["last_name"]) if row["n"] else None
        return HistoryPage(row["frames"], row["n"], row["more"], last)

    @translated_postgres
    async def as_of(self, q: AsOfQuery, timeout: float | None = None) -> list[RowCells]:
        """Each row's cells (see RowCells), in row order: the point-in-time join."""
        common = (q.entity_type, list(q.entity_ids), list(q.micros), list(q.feature_names), q.max_age)
        ages = list(q.feature_max_ages)
        timeout = self._within(timeout)
        rows = await self._read_pool.fetch(AS_OF_ROWS, *common, ages, len(q.feature_names), q.window, timeout=timeout)
        answers = [row_cells(r, len(q.feature_names)) for r in rows]
        missing = [(i, p) for i, a in enumerate(answers) if isinstance(a, list) for p, c in enumerate(a) if c is None]
        if missing:
            await self._probe(q, ages, missing, answers, timeout)
        return answers

    async def _probe(
        self,
        q: AsOfQuery,
        ages: list[timedelta | None],
        missing: list[tuple[int, int]],
        answers: list[RowCells],
        timeout: float | None,
    ) -> None:
        """Fill in the (row, feature) pairs that the rows' scans did not meet."""
        ids = [q.entity_ids[i] for i, _ in missing]
        micros = [q.micros[i] for i, _ in missing]
        rows, positions = [i for i, _ in missing], [p + 1 for _, p in missing]
        args = (q.entity_type, ids, micros, list(q.feature_names), q.max_age, ages, rows, positions)
        for row_i, pos, cell in await self._read_pool.fetch(AS_OF_PAIRS, *args, timeout=timeout):
            cells = answers[row_i]
            assert isinstance(cells, list)
            cells[pos - 1] = cell

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

    @translated_postgres
    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")


class _GroupCommit:
    """Concurrent appends, committed together (see the module's docstring)."""

    def __init__(self, copy: _CopyGroup, group_rows: int, copies: int) -> None:
        self._copy = copy
        self._group_rows = group_rows
        self._copies = max(1, copies)
        self._pending: collections.deque[_Pending] = collections.deque()
        self._running: set[asyncio.Task[None]] = set()

    async def append(self, records: Sequence[bytes], months: set[date], timeout: float | None) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_retrieve)  # a caller past its timeout no longer looks at the outcome
        self._pending.append((records, months, done))
        if len(self._running) < self._copies:
            self._running.add(asyncio.create_task(self._drain()))
        await asyncio.wait_for(asyncio.shield(done), timeout)

    async def _drain(self) -> None:
        try:
            await self._drain_pending()
        finally:
            # Leave `_running` in the same step as the last look at `_pending` (no await between):
            # an append from then on starts a drain of its own. Leaving it in a done-callback, one
            # loop turn later, let an append in between find the drains all "running" and start
            # none, and its rows waited for the next append's drain (or its caller's timeout).
            self._running.discard(asyncio.current_task())

    async def _drain_pending(self) -> None:
        pending = self._pending
        while pending:
            group = [pending.popleft()]
            rows = len(group[0][0])
            while pending and rows + len(pending[0][0]) <= self._group_rows:
                group.append(pending.popleft())
                rows += len(group[-1][0])
            records = group[0][0] if len(group) == 1 else [r for item in group for r in item[0]]
            months = set().union(*(item[1] for item in group))
            try:
                await self._copy(records, months)
            except asyncio.CancelledError:  # shutting down: the callers are told, not left waiting
                for _, _, done in group:
                    done.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - every caller of the group gets the failure
                for _, _, done in group:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, _, done in group:
                    if not done.done():
                        done.set_result(None)


async def _copy_in(conn: Any, table: str, tuples: Sequence[bytes], timeout: float | None) -> None:
    """One binary COPY of `tuples` (see server.core.HistoryRows) into `table` (`conn`: a pool's connection)."""

    async def data() -> AsyncIterator[bytes]:  # an iterable: bytes as they are would be taken for a path
        yield copy_data(tuples)

    await conn.copy_to_table(table, source=data(), columns=HISTORY_COLUMNS, format="binary", timeout=timeout)


def _parts(records: Sequence[bytes], most: int | None) -> list[Sequence[bytes]]:
    """`records` in COPYs of at most `most` rows (None: one COPY)."""
    if most is None or len(records) <= most:
        return [records]
    return [records[i : i + most] for i in range(0, len(records), most)]


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()

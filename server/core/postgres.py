"""PostgreSQL plumbing shared by the stores: the pool and the migrations.

Migrations are the `NNNN_name.sql` files in server/migrations, applied in
order, each in its own transaction, under an advisory lock so that several
server processes starting together apply each exactly once.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import Callable
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import asyncpg

from server.core.errors import FieldViolation, ServiceError, invalid_argument, translated, unavailable

_log = logging.getLogger(__name__)
_MIGRATION_LOCK = 0x6665_6174  # "feat": the advisory lock key for migrations
_MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

# asyncpg's own and the OS's errors that mean "the database cannot be reached now".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection left mid-operation by a dropped socket
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
)


# SQLSTATE classes of errors that mean "not now" rather than "never": connection exceptions,
# transaction rollbacks (serialization, deadlock), insufficient resources, operator
# intervention (shutdown, cancelled statements), system errors.
_RETRYABLE_CLASSES = ("08", "40", "53", "57", "58")
_DATA_EXCEPTION_CLASS = "22"  # a value the database cannot hold (a NUL in text, say)


def postgres_error(exc: Exception) -> ServiceError | None:
    """The ServiceError a PostgreSQL driver error means for the client; None if it is not one.

    Everything the database or the pool says is UNAVAILABLE (retryable), except a data
    exception, which is the request's fault: INVALID_ARGUMENT. Validation rejects such
    values before they get here; this is the backstop. No driver text reaches the client.
    """
    if isinstance(exc, TimeoutError):  # a statement or a pool acquire past its time
        return unavailable("postgresql", "timed out")
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        if state.startswith(_DATA_EXCEPTION_CLASS):
            problem = "holds a value the database cannot store (for example a NUL character)"
            return invalid_argument([FieldViolation("request", problem)])
        busy = state.startswith(_RETRYABLE_CLASSES)
        return unavailable("postgresql", "busy or restarting" if busy else "statement failed")
    if isinstance(exc, CONNECTION_ERRORS):
        return unavailable("postgresql", "cannot connect")
    return None


# Decorates every PostgreSQL store method: driver errors leave the store as ServiceErrors.
translated_postgres = translated(postgres_error)


def quote_ident(name: str) -> str:
    """An SQL identifier, quoted (for DDL, which takes no parameters)."""
    return '"' + name.replace('"', '""') + '"'


QueryObserver = Callable[[str, float, BaseException | None], None]


async def _init_connection(conn: asyncpg.Connection, on_query: QueryObserver | None = None) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    if on_query is not None:
        conn.add_query_logger(lambda q: on_query(q.query, q.elapsed, q.exception))


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """Ready a released connection for its next user, without a round trip when it is idle.

    asyncpg's default reset sends RESET ALL, CLOSE ALL, UNLISTEN * and an advisory
    unlock to the server on every release (~0.09 ms per query). This code never
    changes session state: no SET, no cursors outside transactions, advisory locks
    only per transaction, and its one LISTEN is removed by its user before release.
    """
    if conn.is_in_transaction():  # left by a cancelled caller
        await conn.execute("ROLLBACK")


class _Pool(asyncpg.Pool):
    """asyncpg's pool, with a default timeout on acquiring a connection (asyncpg waits forever),
    and optionally the time each acquire waited reported to `on_wait`."""

    acquire_timeout: float | None = None
    on_wait: Callable[[float], None] | None = None

    def acquire(self, *, timeout: float | None = None) -> Any:
        return super().acquire(timeout=self.acquire_timeout if timeout is None else timeout)

    async def _acquire(self, timeout: float | None) -> Any:
        if self.on_wait is None:
            return await super()._acquire(timeout)  # type: ignore[misc]
        started = time.perf_counter()
        try:
            return await super()._acquire(timeout)  # type: ignore[misc]
        finally:
            self.on_wait(time.perf_counter() - started)


async def create_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    command_timeout: float,
    acquire_timeout: float | None = None,
    on_query: QueryObserver | None = None,
    on_wait: Callable[[float], None] | None = None,
) -> asyncpg.Pool:
    """A pool whose connections decode jsonb to Python objects.

    A caller waits at most `acquire_timeout` seconds for a connection (then TimeoutError,
    which the stores report as UNAVAILABLE), and a statement runs at most `command_timeout`.
    `on_query(statement, seconds, exception or None)` is called after each statement (not
    COPY), `on_wait(seconds)` after each wait for a connection: both for metrics.
    """
    pool = _Pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        command_timeout=command_timeout,
        init=functools.partial(_init_connection, on_query=on_query),
        reset=_reset_connection,
    )
    pool.acquire_timeout = acquire_timeout
    pool.on_wait = on_wait
    await pool
    return pool


def _migrations(folder: Traversable | None = None) -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of the migrations, in order; two files with one number stop the start."""
    folder = folder or resources.files("server") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    versions = [version for version, _, _ in found]
    twice = sorted({name for version, name, _ in found if versions.count(version) > 1})
    if twice:  # two branches that each added "the next" migration: one would never be applied
        raise RuntimeError(f"migrations share a number: {', '.join(twice)}; renumber one of them")
    return sorted(found)


async def migrate(pool: asyncpg.Pool) -> list[str]:
    """Apply the migrations not applied yet; returns the names applied now."""
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, name, sql in _migrations():
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                done = await conn.fetchval("SELECT 1 FROM schema_migrations WHERE version = $1", version)
                if done:
                    continue
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
                applied_now.append(name)
                _log.info("applied migration %s", name)
    return applied_now


async def connect_and_migrate(dsn: str, *, timeout: float, **pool_args: Any) -> asyncpg.Pool:
    """Wait up to `timeout` seconds for PostgreSQL, then migrate; the pool is returned."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        pool = None
        try:
            pool = await create_pool(dsn, **pool_args)
            await migrate(pool)
            return pool
        except CONNECTION_ERRORS as exc:
            if pool is not None:
                pool.terminate()
            if loop.time() >= deadline:
                raise
            _log.warning("PostgreSQL not reachable yet (%s); retrying", exc)
            await asyncio.sleep(0.5)

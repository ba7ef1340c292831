"""The pipelines' part of the freshness summary (the server serves it as per-feature gauges)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime

import asyncpg

from server import offline


def note_freshness(postgres_dsn: str, newest: Mapping[str, tuple[datetime, str]], writer: str) -> str | None:
    """Record that each feature of `newest` holds values as of its time (name -> (time, entity type)).

    Returns what went wrong when PostgreSQL could not take it (the run goes on), None when done.
    """

    async def record() -> None:
        conn = await asyncpg.connect(postgres_dsn, timeout=10)
        try:
            await offline.record_freshness(conn, dict(newest), writer)
        finally:
            await conn.close()

    try:
        asyncio.run(record())
    except (OSError, asyncpg.PostgresError, TimeoutError) as err:
        return str(err)
    return None

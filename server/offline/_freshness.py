"""The freshness summary in PostgreSQL: per feature, the newest event time written and when.

Writers (the server's write path, the pipelines) upsert one row per feature they wrote,
keeping the greatest times, so readers (the server's metrics) load a row per feature
instead of scanning the history.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import NamedTuple

import asyncpg

_UPSERT = (
    "INSERT INTO feature_freshness (feature_name, entity_type, newest_event_time, written_at, writer) "
    "SELECT name, entity_type, newest, now(), $4 FROM unnest($1::text[], $2::text[], $3::timestamptz[]) "
    "AS t(name, entity_type, newest) "
    "ON CONFLICT (feature_name) DO UPDATE SET "
    "newest_event_time = GREATEST(feature_freshness.newest_event_time, EXCLUDED.newest_event_time), "
    "entity_type = EXCLUDED.entity_type, written_at = EXCLUDED.written_at, writer = EXCLUDED.writer"
)
_LOAD = "SELECT feature_name, entity_type, newest_event_time, written_at, writer FROM feature_freshness"


class Freshness(NamedTuple):
    """One feature's row of the summary."""

    feature_name: str
    entity_type: str
    newest_event_time: datetime
    written_at: datetime
    writer: str


async def record_freshness(
    conn: asyncpg.Pool | asyncpg.Connection, newest: Mapping[str, tuple[datetime, str]], writer: str
) -> None:
    """Note that each feature of `newest` (name -> (newest event time, entity type)) was just written."""
    if not newest:
        return
    names = sorted(newest)  # one lock order for concurrent writers
    await conn.execute(_UPSERT, names, [newest[n][1] for n in names], [newest[n][0] for n in names], writer)


async def load_freshness(conn: asyncpg.Pool | asyncpg.Connection) -> list[Freshness]:
    """Every feature's row of the summary."""
    return [Freshness(*row) for row in await conn.fetch(_LOAD)]

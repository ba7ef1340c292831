"""Point-in-time pinning of a source filter: "now" in a filter means the run's as-of time.

The seed's filter `purchase_date >= NOW() - INTERVAL '30 days'` must select the
30 days before the as-of time of a backfill, not before the wall clock. The
current-time functions are replaced, outside quoted text, by a literal of the
as-of time; the result is still parsed by Spark as one expression (never
spliced into a statement), so this changes no meaning besides the clock.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

# Quoted runs first (kept as they are), then the clock functions (case-insensitive).
_TOKENS = re.compile(
    r"""(?P<quoted>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.)*"|`[^`]*`)"""
    r"""|(?P<clock>\b(?:now|current_timestamp|localtimestamp|current_date|curdate)\b(?:\s*\(\s*\))?)""",
    re.IGNORECASE | re.DOTALL,
)


def timestamp_literal(moment: datetime) -> str:
    """A Spark SQL TIMESTAMP literal of a UTC instant (the session time zone is UTC)."""
    return f"TIMESTAMP'{moment.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def _literal(clock: str, as_of: datetime) -> str:
    if clock.lower().startswith(("current_date", "curdate")):
        return f"DATE'{as_of.astimezone(UTC).date().isoformat()}'"
    return timestamp_literal(as_of)


def pin_clock(expression: str, as_of: datetime) -> str:
    """`expression` with NOW(), CURRENT_TIMESTAMP, CURRENT_DATE, ... replaced by the as-of time (UTC)."""

    def replace(match: re.Match[str]) -> str:
        clock = match.group("clock")
        return match.group(0) if clock is None else _literal(clock, as_of)

    return _TOKENS.sub(replace, expression)

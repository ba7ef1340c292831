"""The SQL of the point-in-time join (PostgresHistoryStore.as_of).

A cell is a stored FeatureValue frame re-tagged as TrainingExample.features
(its first byte), with its status byte (the frame's last) set to EXPIRED when
the value is older than its feature's max age at the row's time; tests/test_codec.py
checks that stored frames have this shape. Parameters: $1 entity type, $2 entity
ids, $3 row times (µs since the epoch), $4 feature names, $5 the request's max
age (values older do not count), $6 the features' max ages.
"""

from __future__ import annotations

import asyncpg

from featurestore.serving.v1 import feature_store_service_pb2 as fs
from server.core import codec
from server.offline._model import RowCells

# TrainingExample.features' tag, one byte like a stored FeatureValue frame's own tag.
EXAMPLE_FEATURE_TAG = codec.EXAMPLE_FEATURES_TAG[0]
if len(codec.EXAMPLE_FEATURES_TAG) != 1 or len(codec.FEATURES_TAG) != 1:
    raise RuntimeError("the as-of join re-tags frames in place: both tags must be one byte")

# Both time bounds of a row ($5 and the row's time) are index conditions.
_CELL = (
    "CASE WHEN r.ts - w.event_time > ($6::interval[])[w.pos] "
    f"THEN set_byte(set_byte(w.frame, 0, {EXAMPLE_FEATURE_TAG}), length(w.frame) - 1, {fs.EXPIRED}) "
    f"ELSE set_byte(w.frame, 0, {EXAMPLE_FEATURE_TAG}) END"
)
_NOT_BEFORE = "coalesce(r.ts - $5::interval, '-infinity'::timestamptz)"
# The key of feature_history_entity_time (migration 0003): entity type and id hashed to 64 bits.
_ENTITY_KEY = "hashtextextended({type} || ':' || {id}, 0)"
# Rows arrive as µs since the epoch; exact (whole seconds, then µs: no float rounding).
_ROWS = (
    "(SELECT u.entity_id, 'epoch'::timestamptz + (u.us / 1000000) * interval '1 second' "
    "  + (u.us % 1000000) * interval '1 microsecond' AS ts, u.ord, "
    + _ENTITY_KEY.format(type="$1", id="u.entity_id")
    + " AS entity_key {extra} "
    "FROM unnest($2::text[], $3::int8[] {arrays}) WITH ORDINALITY AS u(entity_id, us {names}, ord) OFFSET 0) r"
)
# One backward scan per row over the entity's latest $8 values (feature_history_entity_time;
# the hash is rechecked against the row), keeping each feature's first. A row that met all $7
# features comes back as its cells concatenated in feature order; any other as (positions,
# cells) of what it met.
AS_OF_ROWS = (  # built from this module's constants only
    "SELECT x.frames, x.positions, x.cells "  # noqa: S608
    f"FROM {_ROWS.format(extra='', arrays='', names='')} "
    "CROSS JOIN LATERAL ("
    "  SELECT CASE WHEN count(*) = $7 THEN string_agg(d.cell, ''::bytea ORDER BY d.pos) END AS frames, "
    "    CASE WHEN count(*) < $7 THEN array_agg(d.pos) END AS positions, "
    "    CASE WHEN count(*) < $7 THEN array_agg(d.cell) END AS cells "
    f"  FROM (SELECT DISTINCT ON (w.pos) w.pos, {_CELL} AS cell "
    "    FROM (SELECT array_position($4::text[], h.feature_name)::int4 AS pos, h.event_time, h.frame "
    f"      FROM feature_history h WHERE {_ENTITY_KEY.format(type='h.entity_type', id='h.entity_id')} = r.entity_key "
    "      AND h.entity_type = $1 AND h.entity_id = r.entity_id "
    f"      AND h.event_time <= r.ts AND h.event_time >= {_NOT_BEFORE} "
    "      ORDER BY h.event_time DESC LIMIT $8) w "
    "    WHERE w.pos IS NOT NULL ORDER BY w.pos, w.event_time DESC) d"
    ") x ORDER BY r.ord"
)
# The (row, feature) pairs a row's scan did not meet: one backward probe of the primary key each
# (the entity-time index cannot serve it: the probe does not name the hashed key).
_PAIR_ROWS = _ROWS.format(
    extra=", u.row_i, u.pos, ($4::text[])[u.pos] AS name", arrays=", $7::int4[], $8::int4[]", names=", row_i, pos"
)
AS_OF_PAIRS = (  # built from this module's constants only
    f"SELECT r.row_i, r.pos, {_CELL} AS cell "  # noqa: S608
    f"FROM {_PAIR_ROWS} "
    "CROSS JOIN LATERAL (SELECT r.pos, h.event_time, h.frame FROM feature_history h "
    "  WHERE h.entity_type = $1 AND h.entity_id = r.entity_id AND h.feature_name = r.name "
    f"  AND h.event_time <= r.ts AND h.event_time >= {_NOT_BEFORE} "
    "  ORDER BY h.event_time DESC LIMIT 1) w"
)


def row_cells(record: asyncpg.Record, width: int) -> RowCells:
    """One AS_OF_ROWS record as RowCells (`width` features)."""
    frames: bytes | None = record[0]
    if frames is not None:
        return frames
    cells: list[bytes | None] = [None] * width
    for pos, cell in zip(record[1] or (), record[2] or (), strict=True):
        cells[pos - 1] = cell
    return cells

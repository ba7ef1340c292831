"""Domain records of the offline store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """Values of some features of one entity with start <= event_time < end, after a cursor."""

    entity_type: str
    entity_id: str
    feature_names: tuple[str, ...]
    start: datetime
    end: datetime
    limit: int
    after: tuple[datetime, str] | None = None


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A page of history: the values' frames concatenated in order, and where to continue."""

    frames: bytes
    count: int
    more: bool
    last: tuple[datetime, str] | None  # the last value's (event time, feature name)


@dataclass(frozen=True, slots=True)
class AsOfQuery:
    """For each row (entity, time): each feature's latest value at or before that time.

    Times are µs since the Unix epoch (UTC).

    `feature_max_ages` are the features' own max ages (an older value is EXPIRED);
    `max_age` bounds how old a value may be at all (older ones are not found).
    `window` is how many of an entity's latest values one row's scan reads
    before the features it did not meet are looked up one by one.
    """

    entity_type: str
    entity_ids: Sequence[str]
    micros: Sequence[int]
    feature_names: Sequence[str]
    feature_max_ages: Sequence[timedelta | None]
    max_age: timedelta | None
    window: int


# One row's answer: its cells (TrainingExample.features fields) in feature order when
# every feature was found, else one cell or None (not found yet) per feature.
RowCells = bytes | list[bytes | None]

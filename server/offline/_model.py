"""Domain records of the offline store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One feature value as it was true at `event_time`.

    `value` is a serialized Value message; `frame` the framed FeatureValue served for it.
    """

    entity_type: str
    entity_id: str
    feature_name: str
    event_time: datetime
    value: bytes
    frame: bytes


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

"""Domain records of the Feature Registry, independent of protobuf and SQL.

Enum-valued fields hold the protobuf enum value *names* ("FLOAT", "BATCH"), so
they read the same in code, in PostgreSQL and in the REST contract.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, TypeVar

T = TypeVar("T")

UNSPECIFIED_SOURCE = "FEATURE_SOURCE_UNSPECIFIED"
UNSPECIFIED_CATEGORY = "FEATURE_CATEGORY_UNSPECIFIED"
UNSPECIFIED_FREQUENCY = "FEATURE_FREQUENCY_UNSPECIFIED"

_FREQUENCY_PERIOD = {
    "HOURLY": timedelta(hours=1),
    "DAILY": timedelta(days=1),
    "WEEKLY": timedelta(weeks=1),
    "MONTHLY": timedelta(days=31),
}


@dataclass(frozen=True, slots=True)
class EventField:
    """One typed field of a stream's events."""

    name: str = ""
    type: str = "VALUE_TYPE_UNSPECIFIED"


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """The table of a batch feature, or the event stream of a streaming feature."""

    table: str = ""
    filter: str = ""
    entity_column: str = ""
    timestamp_column: str = ""
    stream: str = ""
    format: str = ""
    fields: tuple[EventField, ...] = ()
    watermark: timedelta | None = None

    @property
    def watermark_seconds(self) -> float | None:
        return None if self.watermark is None else self.watermark.total_seconds()


@dataclass(frozen=True, slots=True)
class Transformation:
    """One computation step, e.g. an aggregation `sum` over `purchase_amount`."""

    type: str = ""
    function: str = ""
    column: str = ""
    expression: str = ""
    window: timedelta | None = None  # the event-time window of a streaming aggregation

    @property
    def window_seconds(self) -> float | None:
        return None if self.window is None else self.window.total_seconds()


@dataclass(frozen=True, slots=True)
class Meta:
    """Server-maintained bookkeeping of a stored definition."""

    revision: int
    create_time: datetime
    update_time: datetime
    revised_by: str = ""  # who made this revision (the caller's authenticated subject)

    def etag(self, name: str) -> str:
        """An opaque checksum that changes on every write, also across delete and re-create."""
        raw = f"{name}\x00{self.create_time.isoformat()}\x00{self.revision}"
        return hashlib.sha256(raw.encode()).hexdigest()[:20]


@dataclass(frozen=True, slots=True)
class Feature:
    """A feature definition."""

    name: str
    entity_type: str
    value_type: str
    description: str = ""
    source: str = UNSPECIFIED_SOURCE
    category: str = UNSPECIFIED_CATEGORY
    frequency: str = UNSPECIFIED_FREQUENCY
    owner: str = ""
    tags: tuple[str, ...] = ()
    source_config: SourceConfig = field(default_factory=SourceConfig)
    transformations: tuple[Transformation, ...] = ()
    max_age: timedelta | None = None
    meta: Meta | None = None

    def effective_max_age(self) -> timedelta | None:
        """The explicit max age, else twice the frequency's period, else no limit."""
        if self.max_age is not None:
            return self.max_age
        period = _FREQUENCY_PERIOD.get(self.frequency)
        return 2 * period if period else None


@dataclass(frozen=True, slots=True)
class FeatureGroup:
    """A named, ordered set of features of one entity type."""

    name: str
    entity_type: str
    feature_names: tuple[str, ...]
    description: str = ""
    owner: str = ""
    tags: tuple[str, ...] = ()
    meta: Meta | None = None


@dataclass(frozen=True, slots=True)
class FeatureFilter:
    """Filters of ListFeatures; empty strings match everything."""

    entity_type: str = ""
    owner: str = ""
    tag: str = ""
    category: str = ""


@dataclass(frozen=True, slots=True)
class GroupFilter:
    """Filters of ListFeatureGroups; empty strings match everything."""

    entity_type: str = ""
    owner: str = ""
    tag: str = ""


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing and the cursor to the next (None on the last page)."""

    items: tuple[T, ...]
    next_cursor: str | None

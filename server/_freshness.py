"""Feature freshness as metrics: what the write path wrote, and the summary every writer keeps.

The write path notes, per feature, the newest event time of the values it appended (in
memory; a dict update per value). Every `interval` seconds the server upserts those into
PostgreSQL's freshness summary (server.offline.record_freshness, which the pipelines write
too), loads the whole summary (one row per feature) and serves it on /metrics:

- featurestore_feature_newest_event_timestamp_seconds{feature, entity_type}
- featurestore_feature_written_timestamp_seconds{feature, entity_type}
- featurestore_feature_age_seconds{feature, entity_type}: now - newest event time, at scrape
- featurestore_feature_max_age_seconds{feature, entity_type, frequency}: the registered limit
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterable
from datetime import datetime

import asyncpg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from server import _tracing, offline, online
from server._metrics import REGISTRY, store_timer
from server.core import HistoryRows

_log = logging.getLogger(__name__)
WRITER = "write_path"
_APPEND_SECONDS, _APPEND_ERRORS = store_timer("postgresql", "history_append")


class FreshnessTracker(Collector):
    """Notes what the write path writes, keeps the summary in PostgreSQL and serves it as gauges."""

    def __init__(self, pool: asyncpg.Pool, catalog: online.Catalog, interval: float) -> None:
        self._pool = pool
        self._catalog = catalog
        self._interval = interval
        self._dirty: dict[str, tuple[datetime, str]] = {}
        self._rows: list[offline.Freshness] = []

    def note(self, rows: HistoryRows) -> None:
        """Remember the newest event time of each feature in `rows` (written just now)."""
        dirty, entity_type = self._dirty, rows.entity_type
        for name, when in rows.newest().items():
            old = dirty.get(name)
            if old is None or when > old[0]:
                dirty[name] = (when, entity_type)

    async def sync(self) -> None:
        """Upsert what was noted, then load the whole summary for the gauges."""
        noted, self._dirty = self._dirty, {}
        try:
            await offline.record_freshness(self._pool, noted, WRITER)
        except BaseException:
            for name, (newest, entity_type) in noted.items():  # keep them for the next try
                old = self._dirty.get(name)
                if old is None or newest > old[0]:
                    self._dirty[name] = (newest, entity_type)
            raise
        self._rows = await offline.load_freshness(self._pool)

    async def run(self) -> None:
        """sync() every `interval` seconds, forever."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sync()
            except Exception as exc:  # noqa: BLE001 - the next round retries
                _log.warning("freshness summary not updated: %s", exc)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        now, rows, features = time.time(), self._rows, self._catalog.features
        labels = ["feature", "entity_type"]
        newest = GaugeMetricFamily(
            "featurestore_feature_newest_event_timestamp_seconds",
            "Newest event time written for a feature, by any writer (Unix time).",
            labels=labels,
        )
        written = GaugeMetricFamily(
            "featurestore_feature_written_timestamp_seconds",
            "When a feature's values were last written (Unix time).",
            labels=labels,
        )
        age = GaugeMetricFamily(
            "featurestore_feature_age_seconds", "Now minus the newest event time written, at scrape.", labels=labels
        )
        max_age = GaugeMetricFamily(
            "featurestore_feature_max_age_seconds",
            "A registered feature's max age (explicit, else twice its frequency's period); only features that "
            "have one.",
            labels=[*labels, "frequency"],
        )
        for row in rows:
            if row.feature_name not in features:  # deleted since
                continue
            values = [row.feature_name, row.entity_type]
            event = row.newest_event_time.timestamp()
            newest.add_metric(values, event)
            written.add_metric(values, row.written_at.timestamp())
            age.add_metric(values, now - event)
        for feature in features.values():
            if feature.max_age_micros is not None:
                values = [feature.name, feature.entity_type, feature.frequency]
                max_age.add_metric(values, feature.max_age_micros / 1e6)
        yield from (newest, written, age, max_age)


class NotingSink:
    """A history sink that tells the tracker what was appended once the append succeeded."""

    def __init__(self, history: online.HistorySink, tracker: FreshnessTracker) -> None:
        self._history = history
        self._tracker = tracker

    async def append(self, rows: HistoryRows, timeout: float | None = None) -> None:
        attributes = functools.partial(_append_attributes, rows)
        with _tracing.StoreCall("postgresql history_append", attributes, _APPEND_SECONDS, _APPEND_ERRORS):
            await self._history.append(rows, timeout)
        self._tracker.note(rows)


def _append_attributes(rows: HistoryRows) -> dict[str, str | int]:
    return {"db.system": "postgresql", "db.operation": "COPY", "rows": len(rows)}


def register(tracker: FreshnessTracker) -> None:
    """Serve `tracker`'s gauges on /metrics (the latest tracker replaces an earlier one)."""
    global _registered  # one collector per process
    if _registered is not None:
        REGISTRY.unregister(_registered)
    REGISTRY.register(tracker)
    _registered = tracker


_registered: FreshnessTracker | None = None

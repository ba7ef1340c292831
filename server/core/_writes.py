"""Rows of feature values -> what the two stores take: the one conversion every writer uses.

WriteFeatures and PushFeatures (server.online), the batch pipeline's sink and bulk ingest
(jobs) all turn their rows into writes here, so a value is stored the same, byte for
byte, whoever wrote it: per row (one entity's values at one event time) a KeyWrite with
both stored forms of each value (the protobuf form under the feature's name, the JSON
form under ``<name>:j``, see server.core.codec), and per value a history row in the
history table's column order (entity type, entity id, feature, event time, serialized
Value, the framed FeatureValue served for it) as a binary COPY tuple (server.core.
HistoryRows), an entity's rows side by side.

Validation is the caller's (the server names request fields, the pipelines name rows);
what reaches a WriteBatch is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import Any

from featurestore.serving.v1 import value_pb2
from server.core._copy import HistoryRows, copy_text, row_head
from server.core._records import KeyWrite, entity_key
from server.core.codec import TIME_BYTES, Encoded, EventTime, ValueEncoder

_TIMES_KEPT = 4096  # distinct event times whose prepared parts a batch keeps


class WriteBatch:
    """The online writes and history records of rows of one entity type.

    `online()` gives one KeyWrite per row that has values, in row order, or with
    `latest_online` one per entity holding only its newest value of each feature (what
    the only-newer write script would leave after writing every row in order: of equal
    event times the later row wins); `history` always holds every value (HistoryRows:
    binary COPY tuples). `values` counts the values added (history records).
    """

    __slots__ = ("_copy_type", "_latest", "_times", "_writes", "entity_type", "history", "values")

    def __init__(self, entity_type: str, *, latest_online: bool = False) -> None:
        self.entity_type = entity_type
        self._writes: list[KeyWrite] = []
        self.history = HistoryRows(entity_type)
        self._copy_type = copy_text(entity_type)
        self.values = 0
        # per entity, the values of its one row so far, or by field its newest (protobuf form, JSON field, JSON form)
        self._latest: dict[str, list[tuple[ValueEncoder, Encoded]] | dict[bytes, tuple[bytes, bytes, bytes]]] | None
        self._latest = {} if latest_online else None
        self._times: dict[int, EventTime] = {}

    def event_time(self, micros: int) -> EventTime:
        """What values at `micros` share, prepared once per distinct time."""
        at = self._times.get(micros)
        if at is None:
            if len(self._times) >= _TIMES_KEPT:
                self._times.clear()
            at = self._times[micros] = EventTime(micros)
        return at

    def add(self, entity_id: str, at: EventTime, values: Iterable[tuple[ValueEncoder, value_pb2.Value]]) -> None:
        """One row of Value messages (each of its encoder's kind)."""
        self._add(entity_id, at, [(e, e.encode_value(v, at)) for e, v in values])

    def add_plain(self, entity_id: str, at: EventTime, values: Iterable[tuple[ValueEncoder, Any]]) -> None:
        """One row of plain Python values (see ValueEncoder.encode); None is no value."""
        self._add(entity_id, at, [(e, e.encode(x, at)) for e, x in values if x is not None])

    def add_encoded(self, entity_id: str, at: EventTime, encoded: list[tuple[ValueEncoder, Encoded]]) -> None:
        """One row of values already encoded at `at` (each by its encoder)."""
        self._add(entity_id, at, encoded)

    def add_columns(
        self,
        entity_ids: Sequence[str],
        ats: EventTime | Sequence[EventTime],
        columns: Sequence[tuple[ValueEncoder, Sequence[Any]]],
    ) -> None:
        """Rows given as columns: row i is `entity_ids[i]` at `ats[i]` (or all at `ats`) with
        each column's i-th plain value (None: no value). The same as `add_plain` row by row,
        each column encoded in one pass (ValueEncoder.encode_many)."""
        if any(len(xs) != len(entity_ids) for _, xs in columns) or (
            not isinstance(ats, EventTime) and len(ats) != len(entity_ids)
        ):
            raise ValueError("every column needs one value per entity id")
        encoders = [encoder for encoder, _ in columns]
        encoded = [encoder.encode_many(xs, ats) for encoder, xs in columns]
        times = repeat(ats) if isinstance(ats, EventTime) else ats
        add = self._add
        if any(None in forms for forms in encoded):
            for entity_id, at, *row in zip(entity_ids, times, *encoded, strict=False):
                add(entity_id, at, [(e, forms) for e, forms in zip(encoders, row, strict=True) if forms is not None])
        else:  # no missing values: each row's pairs as they are
            for entity_id, at, *row in zip(entity_ids, times, *encoded, strict=False):
                add(entity_id, at, list(zip(encoders, row, strict=True)))

    def _add(self, entity_id: str, at: EventTime, encoded: list[tuple[ValueEncoder, Encoded]]) -> None:
        if not encoded:
            return
        self.history.add(row_head(self._copy_type, entity_id), at, encoded)
        self.values += len(encoded)
        latest = self._latest
        if latest is None:
            fields: list[tuple[bytes, bytes]] = []
            for encoder, (proto, as_json, _) in encoded:
                fields += ((encoder.field, proto), (encoder.json_field, as_json))
            self._writes.append(KeyWrite(entity_key(self.entity_type, entity_id), fields))
            return
        newest = latest.get(entity_id)
        if newest is None:  # the entity's first row: its values are the newest so far, kept as they are
            latest[entity_id] = encoded
            return
        if isinstance(newest, list):  # a second row: the first one's values by field, then this one's
            newest = latest[entity_id] = {e.field: (proto, e.json_field, as_json) for e, (proto, as_json, _) in newest}
        for encoder, (proto, as_json, _) in encoded:
            old = newest.get(encoder.field)
            if old is None or proto[:TIME_BYTES] >= old[0][:TIME_BYTES]:  # not older: as the write script decides
                newest[encoder.field] = (proto, encoder.json_field, as_json)

    def online(self) -> list[KeyWrite]:
        """The KeyWrites for the online store."""
        if self._latest is None:
            return self._writes
        writes = []
        for entity_id, newest in self._latest.items():
            fields: list[tuple[bytes, bytes]] = []
            if isinstance(newest, list):  # one row
                for encoder, (proto, as_json, _) in newest:
                    fields += ((encoder.field, proto), (encoder.json_field, as_json))
            else:
                for field, (proto, json_field, as_json) in newest.items():
                    fields += ((field, proto), (json_field, as_json))
            writes.append(KeyWrite(entity_key(self.entity_type, entity_id), fields))
        return writes

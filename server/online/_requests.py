"""Validation and encoding of online reads and writes (pure functions, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2
from server._rpc import Undecodable
from server.core import (
    HistoryRows,
    KeyWrite,
    Limits,
    WriteBatch,
    codec,
    entity_id_problem,
    entity_ids_fine,
    entity_type_problem,
    timestamp_problem,
)
from server.core.errors import MAX_VIOLATIONS, FieldViolation, invalid_argument
from server.online._catalog import Catalog
from server.online._wire import wire_rows

# A list value is parsed, checked and rendered item by item (a scalar in canonical form is not parsed at
# all): _ITEMS_PER_VALUE items cost about what one scalar value costs to write.
_ITEMS_PER_VALUE = 16


def _too_many(path: str, what: str, count: int, limit: int) -> FieldViolation:
    return FieldViolation(path, f"holds {count} {what}; the limit is {limit}")


def _raise_if(violations: list[FieldViolation]) -> None:
    if violations:
        raise invalid_argument(violations)


def check_read(entity_type: str, entity_ids: Sequence[str], n_features: int, limits: Limits, *, batch: bool) -> None:
    """INVALID_ARGUMENT for a request over the size limit or a bad entity id (the plan checked the type).

    Sizes first: the entity ids are looked at one by one only in a request within the limit.
    """
    violations: list[FieldViolation] = []
    if n_features == 0:
        violations.append(FieldViolation("feature_names", "name at least one feature or feature group"))
    if len(entity_ids) * n_features > limits.max_values:
        problem = f"asks for {len(entity_ids)} entities x {n_features} features; the limit is {limits.max_values}"
        violations.append(FieldViolation("entity_ids", problem))
    _raise_if(violations)
    if entity_ids_fine(entity_ids):
        return
    for i, entity_id in enumerate(entity_ids):
        violations += entity_id_problem(f"entity_ids[{i}]" if batch else "entity_id", entity_id)
        if len(violations) >= MAX_VIOLATIONS:
            break
    _raise_if(violations)


def features_allowed(limits: Limits, entities: int) -> int:
    """How many features a read of `entities` entities may name."""
    return limits.max_values // max(entities, 1)


@dataclass(frozen=True, slots=True)
class EncodedWrite:
    """A validated write: the online hash fields and the history rows of the same values."""

    online: list[KeyWrite]
    history: HistoryRows
    values: int


def encode_rows(
    catalog: Catalog, entity_type: str, rows: Sequence[Any], limits: Limits, now_seconds: float
) -> EncodedWrite:
    """The writes for `rows` and how many values they hold; INVALID_ARGUMENT names the bad values."""
    encoding = RowsEncoding(catalog, entity_type, rows, limits, now_seconds)
    encoding.encode(0, len(rows))
    return encoding.result()


class RowsEncoding:
    """The encoding of one write's rows, done in slices (`encode`) so a caller can yield between them.

    Counts are checked on creation, before any row is looked at; at most MAX_VIOLATIONS are
    collected, and `result` raises INVALID_ARGUMENT naming them. The valid rows become
    writes through server.core.WriteBatch (the conversion every writer shares), and only
    while the request is valid so far.
    """

    def __init__(
        self,
        catalog: Catalog,
        entity_type: str,
        rows: Sequence[Any],
        limits: Limits,
        now_seconds: float,
        type_name: str = fs.WriteFeaturesRequest.DESCRIPTOR.full_name,
    ) -> None:
        rows = wire_rows(rows)
        violations = entity_type_problem(entity_type)
        total = 0
        if len(rows) > limits.max_values:
            violations.append(_too_many("rows", "rows", len(rows), limits.max_values))
        else:
            total = sum(len(row.values) for row in rows)
            if total > limits.max_values:
                violations.append(_too_many("rows", "values", total, limits.max_values))
        _raise_if(violations)
        self.rows, self.values = rows, total
        self._catalog, self._entity_type, self._features = catalog, entity_type, catalog.features
        self._window = _TimeWindow(limits.min_event_seconds, int(now_seconds + limits.max_clock_skew))
        self._violations = violations
        self._batch = WriteBatch(entity_type)
        self._encoders = catalog.encoders(entity_type)
        self._type_name = type_name
        self._max_items = limits.max_list_items
        self._spent = 0  # the current slice's work, in values (see `encode`)

    @property
    def done(self) -> bool:
        """True once enough violations were found: the rest need not be looked at."""
        return len(self._violations) >= MAX_VIOLATIONS

    def encode(self, start: int, stop: int, budget: int | None = None) -> int:
        """Check and encode rows[start:stop], or, with a `budget` (of values; a list's items count one
        value per _ITEMS_PER_VALUE), the rows up to the one that spends it; returns the next row's index.

        A value goes straight from its bytes to its stored forms when it is one of a registered
        feature of this entity type, of the feature's kind, in canonical form (ValueEncoder.
        encode_wire); any other is parsed as a Value and checked (`_checked`).
        """
        batch, rows, encoders = self._batch, self.rows, self._encoders
        violations, window = self._violations, self._window
        self._spent = 0
        for i in range(start, stop):
            if budget is not None and self._spent >= budget:
                return i
            row = rows[i]
            entity_id = row.entity_id
            violations += entity_id_problem(f"rows[{i}].entity_id", entity_id)
            violations += _event_time_problem(f"rows[{i}].event_time", row, window)
            values = row.values
            self._spent += len(values)
            if violations:  # nothing will be written: check the values, skip encoding them
                for name in values:
                    self._checked(i, name, values[name], None)
            else:
                ts = row.event_time
                at = batch.event_time(ts.seconds * 1_000_000 + ts.nanos // 1000)
                encoded: list[tuple[codec.ValueEncoder, codec.Encoded]] = []
                for name in values:
                    raw = values[name]
                    encoder = encoders.get(name)
                    forms = None if encoder is None else encoder.encode_wire(raw, at)
                    if forms is None:
                        checked = self._checked(i, name, raw, at)
                        if checked is None:
                            continue
                        encoder, forms = checked
                    encoded.append((encoder, forms))  # type: ignore[arg-type]  # set with forms
                if not violations:
                    batch.add_encoded(entity_id, at, encoded)
            if len(violations) >= MAX_VIOLATIONS:
                return stop
        return stop

    def _checked(
        self, i: int, name: str, raw: bytes, at: codec.EventTime | None
    ) -> tuple[codec.ValueEncoder, codec.Encoded] | None:
        """A value as a Value message: checked, and encoded if `at` is given; None if it is bad (noted)."""
        try:
            value = value_pb2.Value.FromString(raw)
        except (DecodeError, UnicodeDecodeError, RuntimeWarning, ValueError):
            raise Undecodable(self._type_name).error() from None  # as if the request had failed to parse
        feature = self._features.get(name)
        kind = value.WhichOneof("kind")
        if feature is None or feature.entity_type != self._entity_type or kind != feature.value_kind:
            path = f"rows[{i}].values[{name}]"
            _value_problem(self._catalog, path, name, self._entity_type, kind, self._violations)
            return None
        if codec.holds_list(kind):
            items = len(getattr(value, kind).values)
            self._spent += items // _ITEMS_PER_VALUE
            if items > self._max_items:
                problem = f"holds {items} items; a list value may hold at most {self._max_items} (max_list_items)"
                self._violations.append(FieldViolation(f"rows[{i}].values[{name}]", problem))
                return None
        if at is None:
            return None
        # Fields this server does not know are not stored: a Value holds one kind, and unknown fields
        # (nested groups, say) stored and served inside the deeper responses could take them past
        # protobuf's nesting limit, so clients could not parse a read that includes the value.
        value.DiscardUnknownFields()
        encoder = codec.encoder(name, kind)
        return encoder, encoder.encode_value(value, at)

    def result(self) -> EncodedWrite:
        """The encoded write; INVALID_ARGUMENT if any row or value was bad."""
        _raise_if(self._violations)
        return EncodedWrite(self._batch.online(), self._batch.history, self.values)


def _value_problem(
    catalog: Catalog, path: str, name: str, entity_type: str, kind: str | None, violations: list[FieldViolation]
) -> None:
    """The violation of a value whose feature is unknown, of another entity type or of another kind."""
    feature = catalog.resolve(path, name, entity_type, violations)
    if feature is not None and kind != feature.value_kind:
        problem = f"feature {name!r} is {feature.value_type}: set {feature.value_kind}, not {kind or 'nothing'}"
        violations.append(FieldViolation(path, problem))


@dataclass(frozen=True, slots=True)
class _TimeWindow:
    """The event times a write accepts: from the configured floor to now plus the clock skew."""

    earliest: int
    latest: int

    def problem(self, path: str, ts: Timestamp) -> list[FieldViolation]:
        if ts.seconds > self.latest:
            when = datetime.fromtimestamp(self.latest, UTC).isoformat()
            return [FieldViolation(path, f"is in the future: event times may be at most {when} (now + clock skew)")]
        if ts.seconds < self.earliest:
            when = datetime.fromtimestamp(self.earliest, UTC).isoformat()
            return [FieldViolation(path, f"is before {when}, the earliest event time this store accepts")]
        return []


def _event_time_problem(path: str, row: Any, window: _TimeWindow) -> list[FieldViolation]:
    if not row.HasField("event_time"):
        return [FieldViolation(path, "is required")]
    return timestamp_problem(path, row.event_time) or window.problem(path, row.event_time)

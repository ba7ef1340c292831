"""Validation and encoding of online reads and writes (pure functions, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from featurestore.serving.v1 import feature_store_service_pb2 as fs
from server import _codec
from server._errors import FieldViolation, invalid_argument
from server.offline._model import HistoryRow
from server.online._catalog import Catalog, entity_type_problem
from server.online._redis import KeyWrite, entity_key

ENTITY_ID_MAX_BYTES = 256
# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
TIMESTAMP_MIN_SECONDS = -62_135_596_800
TIMESTAMP_MAX_SECONDS = 253_402_300_799
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-request bounds."""

    max_values: int


def _raise_if(violations: list[FieldViolation]) -> None:
    if violations:
        raise invalid_argument(violations)


def entity_id_problem(path: str, entity_id: str) -> list[FieldViolation]:
    if not entity_id:
        return [FieldViolation(path, "is required")]
    if len(entity_id.encode()) > ENTITY_ID_MAX_BYTES:
        return [FieldViolation(path, f"must be at most {ENTITY_ID_MAX_BYTES} bytes")]
    return []


def timestamp_problem(path: str, ts: Timestamp) -> list[FieldViolation]:
    """A violation unless `ts` is a valid Timestamp (0001-01-01 to 9999-12-31, nanos in range)."""
    if not TIMESTAMP_MIN_SECONDS <= ts.seconds <= TIMESTAMP_MAX_SECONDS or not 0 <= ts.nanos < 1_000_000_000:
        return [FieldViolation(path, "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999999Z")]
    return []


def check_read(entity_type: str, entity_ids: Sequence[str], n_features: int, limits: Limits, *, batch: bool) -> None:
    """INVALID_ARGUMENT for a bad entity id or a request over the size limit (the plan checked the type)."""
    violations: list[FieldViolation] = []
    for i, entity_id in enumerate(entity_ids):
        violations += entity_id_problem(f"entity_ids[{i}]" if batch else "entity_id", entity_id)
    if n_features == 0:
        violations.append(FieldViolation("feature_names", "name at least one feature or feature group"))
    if len(entity_ids) * n_features > limits.max_values:
        problem = f"asks for {len(entity_ids)} entities x {n_features} features; the limit is {limits.max_values}"
        violations.append(FieldViolation("entity_ids", problem))
    _raise_if(violations)


@dataclass(frozen=True, slots=True)
class EncodedWrite:
    """A validated write: the online hash fields and the history rows of the same values."""

    online: list[KeyWrite]
    history: list[HistoryRow]
    values: int


def encode_rows(catalog: Catalog, entity_type: str, rows: Sequence[fs.EntityRow], limits: Limits) -> EncodedWrite:
    """The writes for `rows` and how many values they hold; INVALID_ARGUMENT names every bad value.

    Each value is two hash fields (protobuf and JSON form, see _codec), written or skipped together.
    """
    violations = entity_type_problem(entity_type)
    total = sum(len(row.values) for row in rows)
    if total > limits.max_values:
        violations.append(FieldViolation("rows", f"holds {total} values; the limit is {limits.max_values}"))
    _raise_if(violations)
    history: list[HistoryRow] = []
    writes = [_encode_row(catalog, entity_type, i, row, violations, history) for i, row in enumerate(rows)]
    _raise_if(violations)
    return EncodedWrite(writes, history, total)


def _encode_row(
    catalog: Catalog,
    entity_type: str,
    i: int,
    row: fs.EntityRow,
    violations: list[FieldViolation],
    history: list[HistoryRow],
) -> KeyWrite:
    violations += entity_id_problem(f"rows[{i}].entity_id", row.entity_id)
    if not row.HasField("event_time"):
        violations.append(FieldViolation(f"rows[{i}].event_time", "is required"))
    time_problem = timestamp_problem(f"rows[{i}].event_time", row.event_time)
    violations += time_problem
    event_time = _EPOCH if time_problem else row.event_time.ToDatetime(tzinfo=UTC)
    values: list[tuple[bytes, bytes]] = []
    for name, value in row.values.items():
        path = f"rows[{i}].values[{name}]"
        feature = catalog.resolve(path, name, entity_type, violations)
        if feature is None:
            continue
        kind = value.WhichOneof("kind")
        if kind != feature.value_kind:
            problem = f"feature {name!r} is {feature.value_type}: set {feature.value_kind}, not {kind or 'nothing'}"
            violations.append(FieldViolation(path, problem))
            continue
        if time_problem:  # nothing will be written: the value was checked, skip encoding it
            continue
        proto, json = _codec.encode_stored(name, value, row.event_time)
        values += ((feature.field, proto), (feature.json_field, json))
        frame = proto[_codec.TIME_BYTES :]
        history.append(HistoryRow(entity_type, row.entity_id, name, event_time, value.SerializeToString(), frame))
    return KeyWrite(entity_key(entity_type, row.entity_id), values)

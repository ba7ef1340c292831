"""What the sync and async clients share: channel options, requests, row conversion, results."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import grpc
from google.protobuf import duration_pb2, json_format

from featurestore import _frames
from featurestore._values import (
    STATUS_NAMES,
    FeatureResult,
    datetime_of,
    feature_result,
    infer_type,
    is_missing,
    timestamp_of,
    to_value,
)
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.serving.v1 import feature_store_service_pb2 as fs

_SERVING = "featurestore.serving.v1.FeatureStoreService"
_REGISTRY = "featurestore.registry.v1.RegistryService"
# Calls that change nothing: only these are retried. Writes never are (a retried create or
# update could apply twice, a retried push could replay batches).
IDEMPOTENT_METHODS = (
    (_SERVING, "GetFeatures"),
    (_SERVING, "BatchGetFeatures"),
    (_SERVING, "GetHistoricalFeatures"),
    (_SERVING, "StreamHistoricalFeatures"),
    (_SERVING, "GetTrainingDataset"),
    (_REGISTRY, "GetFeature"),
    (_REGISTRY, "ListFeatures"),
    (_REGISTRY, "ListFeatureRevisions"),
    (_REGISTRY, "GetFeatureGroup"),
    (_REGISTRY, "ListFeatureGroups"),
)
DEFAULT_TARGET = "localhost:50051"
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the server's default --max-message-bytes
DEFAULT_CHUNK_VALUES = 10_000  # a tenth of the server's default --max-request-values


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of idempotent calls on UNAVAILABLE, by gRPC itself (its service config).

    The n-th retry waits a random time between 0 and
    min(initial_backoff * multiplier**(n-1), max_backoff) seconds (gRPC's jittered backoff);
    `max_attempts` counts the first try (gRPC caps it at 5). A retry never outlives the
    call's deadline. Streaming calls are retried only before their first response.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def service_config(self) -> str:
        """The gRPC service config JSON carrying the policy."""
        policy = {
            "maxAttempts": self.max_attempts,
            "initialBackoff": f"{self.initial_backoff}s",
            "maxBackoff": f"{self.max_backoff}s",
            "backoffMultiplier": self.multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        names = [{"service": service, "method": method} for service, method in IDEMPOTENT_METHODS]
        return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})


def channel_options(
    retry: RetryPolicy | None, max_message_bytes: int, keepalive: float | None, extra: Sequence[tuple[str, Any]]
) -> list[tuple[str, Any]]:
    """The channel's options: message sizes, keepalive, retries (as a service config)."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 1 if retry else 0),
    ]
    if retry is not None:
        options.append(("grpc.service_config", retry.service_config()))
    if keepalive:
        # The server accepts pings every 10 s or more (server/_app.py), also without calls.
        options += [
            ("grpc.keepalive_time_ms", int(keepalive * 1000)),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
    return options + list(extra)


def credentials(tls: bool, root_certificates: bytes | None) -> grpc.ChannelCredentials | None:
    """TLS credentials (the given roots, or the system's), None for plaintext."""
    if not tls and root_certificates is None:
        return None
    return grpc.ssl_channel_credentials(root_certificates=root_certificates)


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """The `authorization: Bearer` metadata of a token."""
    return (("authorization", f"Bearer {token}"),) if token else None


def names(value: str | Sequence[str]) -> list[str]:
    """A list of names from one name or a sequence."""
    return [value] if isinstance(value, str) else list(value)


@dataclass(frozen=True)
class FeatureVector(Mapping[str, Any]):
    """The latest values of one entity's features: a mapping of feature name to Python value.

    `results[name]` has each value's status (`PRESENT`, `EXPIRED`, `NOT_FOUND`) and event time.
    A NOT_FOUND feature maps to None.
    """

    entity_type: str
    entity_id: str
    results: dict[str, FeatureResult] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.results[name].value

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def status(self, name: str) -> str:
        """The status of a feature's value: PRESENT, EXPIRED or NOT_FOUND."""
        return self.results[name].status

    def event_time(self, name: str) -> datetime | None:
        """When the feature's value was true (None when NOT_FOUND)."""
        return self.results[name].event_time

    def to_dict(self) -> dict[str, Any]:
        """The values as a plain dict."""
        return {name: r.value for name, r in self.results.items()}


def feature_vector(entity_type: str, entity_id: str, values: Iterable[fs.FeatureValue]) -> FeatureVector:
    """The FeatureVector of served values."""
    return FeatureVector(entity_type, entity_id, {fv.name: feature_result(fv) for fv in values})


@dataclass(frozen=True)
class WriteResult:
    """Totals of a write: values written, values skipped because a newer one was stored, and
    requests sent (for a push: batches received by the server)."""

    written_values: int = 0
    skipped_values: int = 0
    requests: int = 0

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(
            self.written_values + other.written_values,
            self.skipped_values + other.skipped_values,
            self.requests + other.requests,
        )


def as_feature(feature: pb.Feature | Mapping[str, Any]) -> pb.Feature:
    """A Feature from a message or from its JSON fields (the REST body: `"value_type": "FLOAT"`, ...)."""
    if isinstance(feature, pb.Feature):
        return feature
    return json_format.ParseDict(dict(feature), pb.Feature())


def as_group(group: pb.FeatureGroup | Mapping[str, Any]) -> pb.FeatureGroup:
    """A FeatureGroup from a message or from its JSON fields."""
    if isinstance(group, pb.FeatureGroup):
        return group
    return json_format.ParseDict(dict(group), pb.FeatureGroup())


def duration(seconds: float | timedelta | None) -> duration_pb2.Duration | None:
    """A Duration from seconds or a timedelta."""
    if seconds is None:
        return None
    d = duration_pb2.Duration()
    d.FromTimedelta(seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds))
    return d


def history_request(
    entity_type: str,
    entity_id: str,
    features: str | Sequence[str],
    start: Any,
    end: Any,
    page_size: int,
) -> fs.GetHistoricalFeaturesRequest:
    """The first GetHistoricalFeatures request of a range."""
    request = fs.GetHistoricalFeaturesRequest(
        entity_type=entity_type, entity_id=entity_id, feature_names=names(features), page_size=page_size
    )
    if start is not None:
        request.start_time.CopyFrom(timestamp_of(start))
    if end is not None:
        request.end_time.CopyFrom(timestamp_of(end))
    return request


# Rows: a pandas DataFrame, a pyarrow Table, or an iterable of mappings (column -> value).
Rows = Any


def row_chunks(rows: Rows, size: int) -> Iterator[list[Mapping[str, Any]]]:
    """The rows as lists of at most `size` mappings, without materializing all of them."""
    if hasattr(rows, "iloc") and hasattr(rows, "to_dict"):  # pandas
        for start in range(0, len(rows), size):
            yield rows.iloc[start : start + size].to_dict("records")
        return
    if hasattr(rows, "slice") and hasattr(rows, "to_pylist"):  # pyarrow
        for start in range(0, rows.num_rows, size):
            yield rows.slice(start, size).to_pylist()
        return
    iterator = iter(rows)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def columns_of(rows: Rows) -> list[str] | None:
    """The column names of a DataFrame or Table (None for an iterable of mappings)."""
    if hasattr(rows, "columns") and hasattr(rows, "iloc"):
        return [str(c) for c in rows.columns]
    if hasattr(rows, "column_names"):
        return list(rows.column_names)
    return None


def entity_row(
    row: Mapping[str, Any] | fs.EntityRow,
    types: Mapping[str, str],
    entity_column: str,
    event_time_column: str,
    event_time: Any,
    where: str,
) -> fs.EntityRow:
    """One EntityRow from a mapping: its id, event time and each non-missing feature column."""
    if isinstance(row, fs.EntityRow):
        return row
    try:
        entity_id = row[entity_column]
    except KeyError:
        raise ValueError(f"{where}: no {entity_column!r} column") from None
    when = row.get(event_time_column, event_time) if event_time is None else event_time
    if when is None or is_missing(when):
        raise ValueError(f"{where}: no {event_time_column!r} column (or pass event_time=)")
    out = fs.EntityRow(entity_id=str(entity_id), event_time=timestamp_of(when))
    for name, x in row.items():
        if name in (entity_column, event_time_column) or is_missing(x):
            continue
        try:
            out.values[name].CopyFrom(to_value(types[name], x))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}, feature {name!r} ({types[name]}): {err}") from None
    return out


def feature_columns_of(chunk: Sequence[Mapping[str, Any] | fs.EntityRow], *skip: str) -> list[str]:
    """The feature columns of rows (every key but the id and time columns), in first-seen order."""
    seen: dict[str, None] = {}
    for row in chunk:
        if isinstance(row, fs.EntityRow):
            continue
        for name in row:
            if name not in skip:
                seen.setdefault(name)
    return list(seen)


def batched_rows(rows: Iterable[fs.EntityRow], chunk_values: int, max_bytes: int) -> Iterator[list[fs.EntityRow]]:
    """EntityRows grouped so that each group holds at most `chunk_values` values and `max_bytes` bytes."""
    batch: list[fs.EntityRow] = []
    values = size = 0
    for row in rows:
        n, b = max(1, len(row.values)), row.ByteSize() + 8
        if batch and (values + n > chunk_values or size + b > max_bytes):
            yield batch
            batch, values, size = [], 0, 0
        batch.append(row)
        values += n
        size += b
    if batch:
        yield batch


def training_row(
    row: Mapping[str, Any], entity_column: str, timestamp_column: str, extra_types: dict[str, str | None], where: str
) -> fs.TrainingRow:
    """A TrainingRow from a mapping: id, timestamp, and the other columns as extras (types inferred)."""
    try:
        entity_id, when = row[entity_column], row[timestamp_column]
    except KeyError as err:
        raise ValueError(f"{where}: no {err.args[0]!r} column") from None
    out = fs.TrainingRow(entity_id=str(entity_id), timestamp=timestamp_of(when))
    for name, x in row.items():
        if name in (entity_column, timestamp_column) or is_missing(x):
            continue
        vt = extra_types.get(name)
        if vt is None:
            vt = extra_types[name] = infer_type(x)
        try:
            out.extra[name].CopyFrom(to_value(vt, x))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}, column {name!r} ({vt}): {err}") from None
    return out


def training_record(example: fs.TrainingExample, include_status: bool) -> dict[str, Any]:
    """A training example as a plain dict (the records output)."""
    from featurestore._values import python_value

    record: dict[str, Any] = {"entity_id": example.entity_id, "timestamp": datetime_of(example.timestamp)}
    for key in sorted(example.extra):
        record[key] = python_value(example.extra[key])
    for f in example.features:
        record[f.name] = python_value(f.value)
        if include_status:
            record[f"{f.name}__status"] = STATUS_NAMES.get(f.status)
    return record


ProgressCallback = Callable[[int, int], None]


def declare_extra_types(rows: Rows, entity_column: str, timestamp_column: str, types: dict[str, Any]) -> None:
    """For a DataFrame or Table, every extra column's type from its first non-missing value."""
    columns = columns_of(rows)
    if columns is None:
        return
    for name in columns:
        if name in (entity_column, timestamp_column) or name in types:
            continue
        if hasattr(rows, "iloc"):
            series = rows[name]
            first = series.first_valid_index()
            types[name] = None if first is None else infer_type(series[first])
        else:
            present = rows.column(name).drop_null()
            types[name] = infer_type(present[0].as_py()) if len(present) else None


def training_columns(
    examples: Sequence[fs.TrainingExample],
    extra_types: Mapping[str, str | None],
    names: Sequence[str],
    types: dict[str, str | None],
    include_status: bool,
) -> list[_frames.Column]:
    columns = [
        _frames.Column("entity_id", "STRING", [e.entity_id for e in examples]),
        _frames.Column(
            "timestamp", "TIMESTAMP", [e.timestamp.seconds * 1_000_000_000 + e.timestamp.nanos for e in examples]
        ),
    ]
    for name, vt in extra_types.items():
        columns.append(_frames.Column(name, vt, _frames.extract((e.extra.get(name) for e in examples), vt)))
    rows = [e.features for e in examples]
    columns += _frames.feature_columns(names, rows, types, include_status=include_status)
    return columns

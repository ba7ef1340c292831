"""What the sync and async clients share: channel options, requests, row conversion, results."""

from __future__ import annotations

import ipaddress
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

import grpc
from google.protobuf import duration_pb2, field_mask_pb2, json_format

from featurestore import _frames, _wire
from featurestore._values import (
    STATUS_NAMES,
    FeatureResult,
    datetime_of,
    feature_result,
    infer_type,
    is_missing,
    python_value,
    timestamp_of,
    to_value,
    value_type_name,
)
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
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


def _is_local(target: str) -> bool:
    """Whether a gRPC target names this machine (loopback or a Unix socket)."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    host = target.rsplit("/", 1)[-1]  # dns:///host:port, ipv4:host:port
    host = host.removeprefix("ipv4:").removeprefix("ipv6:")
    host = host[1 : host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token_channel(target: str, has_token: bool, creds: grpc.ChannelCredentials | None) -> None:
    """Refuse to send a bearer token in the clear to another machine (gRPC's own call credentials
    refuse it too): with a token, a non-loopback target needs `tls=True` or `root_certificates`."""
    if has_token and creds is None and not _is_local(target):
        raise ValueError(
            f"a token would travel in the clear to {target!r}: pass tls=True or root_certificates "
            "(plaintext is allowed with a token only on loopback)"
        )


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """The `authorization: Bearer` metadata of a token."""
    return (("authorization", f"Bearer {token}"),) if token else None


def names(value: str | Sequence[str]) -> list[str]:
    """A list of names from one name or a sequence."""
    return [value] if isinstance(value, str) else list(value)


class FeatureVector(Mapping[str, Any]):
    """The latest values of one entity's features: a mapping of feature name to Python value.

    `status(name)` is PRESENT, EXPIRED or NOT_FOUND, `event_time(name)` when the value was
    true; `results` has all three per feature. A NOT_FOUND feature maps to None. Values are
    converted from the response when first read, so a model server pays only for what it uses.
    """

    __slots__ = ("_index", "_results", "_values", "entity_id", "entity_type")

    def __init__(self, entity_type: str, entity_id: str, values: Sequence[fs.FeatureValue]) -> None:
        self.entity_type = entity_type
        self.entity_id = entity_id
        self._values = values
        self._index: dict[str, int] | None = None
        self._results: dict[str, FeatureResult] | None = None

    def _position(self, name: str) -> int:
        if self._index is None:
            self._index = {fv.name: i for i, fv in enumerate(self._values)}
        return self._index[name]

    def __getitem__(self, name: str) -> Any:
        return python_value(self._values[self._position(name)].value)

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __repr__(self) -> str:
        return f"FeatureVector({self.entity_type!r}, {self.entity_id!r}, {self.to_dict()!r})"

    @property
    def results(self) -> dict[str, FeatureResult]:
        """Each feature's value, status and event time, by name, in request order."""
        if self._results is None:
            self._results = {fv.name: feature_result(fv) for fv in self._values}
        return self._results

    def status(self, name: str) -> str:
        """The status of a feature's value: PRESENT, EXPIRED or NOT_FOUND."""
        return STATUS_NAMES.get(self._values[self._position(name)].status, "FEATURE_STATUS_UNSPECIFIED")

    def event_time(self, name: str) -> datetime | None:
        """When the feature's value was true (None when NOT_FOUND)."""
        fv = self._values[self._position(name)]
        return datetime_of(fv.event_time) if fv.HasField("event_time") else None

    def to_dict(self) -> dict[str, Any]:
        """The values as a plain dict."""
        return {name: r.value for name, r in self.results.items()}


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


def write_result(response: fs.WriteFeaturesResponse | fs.PushFeaturesResponse) -> WriteResult:
    """The totals of a WriteFeatures response (one request) or of a push (its batches)."""
    requests = response.batches if isinstance(response, fs.PushFeaturesResponse) else 1
    return WriteResult(response.written_values, response.skipped_values, requests)


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
    """The typed columns of training examples: entity_id, timestamp, the extras, then the features."""
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


# -- Below: everything `Client` and `AsyncClient` decide, so that each of them only performs the
# calls (blocking or awaited). A method of theirs builds its request here, calls, and hands the
# response back here; page following, chunking and frame building are written once.

Output = Literal["records", "pandas", "arrow"]
TokenCallbackT = TypeVar("TokenCallbackT")


class ClientBase(Generic[TokenCallbackT]):
    """What both clients hold besides their channel: settings, auth metadata, the value-type cache.

    A subclass opens its channel (blocking or grpc.aio) and the stubs in `_connect`.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        token_callback: TokenCallbackT | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float = 10.0,
        stream_timeout: float = 600.0,
        retry: RetryPolicy | None = RetryPolicy(),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        keepalive: float | None = 30.0,
        chunk_values: int = DEFAULT_CHUNK_VALUES,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if token and token_callback:
            raise ValueError("pass token or token_callback, not both")
        self.target = target
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        self.chunk_values = chunk_values
        self.max_message_bytes = max_message_bytes
        self._token_callback = token_callback
        self._metadata = auth_metadata(token)
        self._types: dict[str, str] = {}
        creds = credentials(tls, root_certificates)
        check_token_channel(target, bool(token or token_callback), creds)
        self._connect(creds, channel_options(retry, max_message_bytes, keepalive, options))

    def _connect(self, creds: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]) -> None:
        raise NotImplementedError

    def _types_to_read(self, names: Sequence[str], fresh: bool) -> list[str]:
        """The features whose value type is not cached (all of them with `fresh`), once each."""
        return [name for name in dict.fromkeys(names) if fresh or name not in self._types]

    def _remember_type(self, name: str, feature: pb.Feature) -> None:
        self._types[name] = value_type_name(feature.value_type)

    def _known_types(self, names: Sequence[str]) -> dict[str, str]:
        return {name: self._types[name] for name in names}


def frame(columns: Sequence[_frames.Column], output: Output) -> Any:
    """A DataFrame (`"pandas"`) or a pyarrow Table (`"arrow"`) of columns."""
    return _frames.to_pandas(columns) if output == "pandas" else _frames.to_arrow(columns)


class PendingFrame:
    """A frame's columns before the registry gives the value types that no value showed (`missing`)."""

    def __init__(
        self,
        first: _frames.Column,
        names: list[str],
        rows: Sequence[Sequence[fs.FeatureValue]],
        *,
        include_status: bool = False,
        include_event_time: bool = False,
    ) -> None:
        self.first, self.names, self.rows = first, names, rows
        self.include_status, self.include_event_time = include_status, include_event_time
        self.types = {name: _frames.observed_type(row[j].value for row in rows) for j, name in enumerate(names)}
        self.missing = [name for name, vt in self.types.items() if vt is None]

    def output(self, registry_types: Mapping[str, str], output: Output) -> Any:
        """The frame, with `registry_types` for the `missing` columns."""
        types = {**self.types, **registry_types}
        columns = [self.first]
        columns += _frames.feature_columns(
            self.names,
            self.rows,
            types,
            include_status=self.include_status,
            include_event_time=self.include_event_time,
        )
        return frame(columns, output)


def get_features_request(
    entity_type: str, entity_id: str, features: str | Sequence[str], groups: str | Sequence[str]
) -> fs.GetFeaturesRequest:
    """The GetFeatures request of one entity."""
    return fs.GetFeaturesRequest(
        entity_type=entity_type, entity_id=entity_id, feature_names=names(features), feature_groups=names(groups)
    )


def vector_of(response: fs.GetFeaturesResponse) -> FeatureVector:
    """The FeatureVector of a GetFeatures response."""
    return FeatureVector(response.entity_type, response.entity_id, response.features)


def batch_request(
    entity_type: str, entity_ids: Sequence[str], features: str | Sequence[str], groups: str | Sequence[str]
) -> fs.BatchGetFeaturesRequest:
    """The BatchGetFeatures request of many entities."""
    return fs.BatchGetFeaturesRequest(
        entity_type=entity_type,
        entity_ids=list(entity_ids),
        feature_names=names(features),
        feature_groups=names(groups),
    )


def batch_records(response: fs.BatchGetFeaturesResponse) -> list[FeatureVector]:
    """One FeatureVector per entity of a BatchGetFeatures response."""
    return [FeatureVector(response.entity_type, e.entity_id, e.features) for e in response.entities]


def batch_frame(
    response: fs.BatchGetFeaturesResponse,
    features: str | Sequence[str],
    include_status: bool,
    include_event_time: bool,
) -> PendingFrame:
    """The frame of a BatchGetFeatures response: `entity_id`, then a column per feature."""
    rows = [e.features for e in response.entities]
    columns = [fv.name for fv in rows[0]] if rows else names(features)
    first = _frames.Column("entity_id", "STRING", [e.entity_id for e in response.entities])
    return PendingFrame(first, columns, rows, include_status=include_status, include_event_time=include_event_time)


# BatchGetFeatures called for its response's bytes (frames decode them with numpy, see _wire).
BATCH_GET_FEATURES = f"/{_SERVING}/BatchGetFeatures"


class BytesFrame:
    """`batch_frame` of a serialized BatchGetFeaturesResponse: read with numpy (`_wire`), or with
    protobuf when it is in a form `_wire` does not read or numpy is not installed (both give the
    same frame).

    `reader` says which did ("numpy" or "protobuf").
    """

    def __init__(self, body: bytes, features: str | Sequence[str], include_status: bool, include_event_time: bool):
        self._body, self._features = body, features
        self._include = include_status, include_event_time
        self._frame: PendingFrame | _wire.BatchFrame
        try:
            self._frame, self.reader = _wire.BatchFrame(body, names(features), *self._include), "numpy"
        except (_wire.Irregular, ImportError):  # ImportError: no numpy (pyarrow alone does not need it)
            self._frame = self._protobuf()
        self.missing = self._frame.missing

    def _protobuf(self) -> PendingFrame:
        self.reader = "protobuf"
        return batch_frame(fs.BatchGetFeaturesResponse.FromString(self._body), self._features, *self._include)

    def output(self, registry_types: Mapping[str, str], output: Output) -> Any:
        """The frame, with `registry_types` for the `missing` columns."""
        try:
            return self._frame.output(registry_types, output)
        except (_wire.Irregular, ImportError):
            return self._protobuf().output(registry_types, output)


def history_frame(values: Sequence[fs.FeatureValue], features: str | Sequence[str]) -> PendingFrame:
    """The frame of a history: `event_time`, then a column per feature, one row per event time."""
    wanted = names(features)
    times: dict[tuple[int, int], dict[str, fs.FeatureValue]] = {}
    for fv in values:
        times.setdefault((fv.event_time.seconds, fv.event_time.nanos), {})[fv.name] = fv
    empty = fs.FeatureValue()
    rows = [[at.get(name, empty) for name in wanted] for at in times.values()]
    first = _frames.Column("event_time", "TIMESTAMP", [s * 1_000_000_000 + n for s, n in times])
    return PendingFrame(first, wanted, rows)


class PageRequest(Protocol):
    """A List/History request (its `page_token` is set to follow pages)."""

    page_token: str


class Page(Protocol):
    """A List/History response."""

    @property
    def next_page_token(self) -> str: ...


def next_page(request: PageRequest, page: Page) -> bool:
    """Point the request at the page after `page`; False when `page` was the last."""
    if not page.next_page_token:
        return False
    request.page_token = page.next_page_token
    return True


def list_features_request(
    entity_type: str, owner: str, tag: str, category: str, page_size: int
) -> rs.ListFeaturesRequest:
    """The first ListFeatures request of the filters (`category` by its name)."""
    request = rs.ListFeaturesRequest(entity_type=entity_type, owner=owner, tag=tag, page_size=page_size)
    if category:
        request.category = pb.FeatureCategory.Value(category)
    return request


Definition = TypeVar("Definition", pb.Feature, pb.FeatureGroup)


def _with_etag(message: Definition, etag: str | None) -> Definition:
    if etag is None:
        return message
    copy = type(message)()
    copy.CopyFrom(message)
    copy.etag = etag
    return copy


def _mask(update_mask: Sequence[str] | None) -> field_mask_pb2.FieldMask | None:
    return None if update_mask is None else field_mask_pb2.FieldMask(paths=list(update_mask))


def update_feature_request(
    feature: pb.Feature | Mapping[str, Any], update_mask: Sequence[str] | None, etag: str | None
) -> rs.UpdateFeatureRequest:
    """The UpdateFeature request (`etag`, when given, replaces the feature's)."""
    return rs.UpdateFeatureRequest(feature=_with_etag(as_feature(feature), etag), update_mask=_mask(update_mask))


def update_group_request(
    group: pb.FeatureGroup | Mapping[str, Any], update_mask: Sequence[str] | None, etag: str | None
) -> rs.UpdateFeatureGroupRequest:
    """The UpdateFeatureGroup request (`etag`, when given, replaces the group's)."""
    return rs.UpdateFeatureGroupRequest(feature_group=_with_etag(as_group(group), etag), update_mask=_mask(update_mask))


class TrainingQuery:
    """A training-dataset query: entity rows and what to join; `extra_types` fills in as rows are sent."""

    def __init__(
        self,
        entity_type: str,
        rows: Rows,
        features: str | Sequence[str],
        groups: str | Sequence[str],
        max_age: float | timedelta | None,
        entity_column: str,
        timestamp_column: str,
    ) -> None:
        self.entity_type, self.rows = entity_type, rows
        self.features, self.groups = names(features), names(groups)
        self.max_age = duration(max_age)
        self.entity_column, self.timestamp_column = entity_column, timestamp_column
        self.extra_types: dict[str, str | None] = {}

    def requests(self, n_features: int, chunk_values: int) -> Iterator[fs.GetTrainingDatasetRequest]:
        """The requests, each of at most `chunk_values` values (rows times features) (and 10,000 rows)."""
        chunk_rows = max(1, min(10_000, chunk_values // max(1, n_features)))
        declare_extra_types(self.rows, self.entity_column, self.timestamp_column, self.extra_types)
        offset = 0
        for chunk in row_chunks(self.rows, chunk_rows):
            yield fs.GetTrainingDatasetRequest(
                entity_type=self.entity_type,
                feature_names=self.features,
                feature_groups=self.groups,
                rows=[
                    training_row(
                        row, self.entity_column, self.timestamp_column, self.extra_types, f"rows[{offset + i}]"
                    )
                    for i, row in enumerate(chunk)
                ],
                max_age=self.max_age,
            )
            offset += len(chunk)


class TrainingFrame:
    """The typed columns of a training dataset, gathered response by response."""

    def __init__(
        self, query: TrainingQuery, names: Sequence[str], types: Mapping[str, str], include_status: bool
    ) -> None:
        self.query, self.names, self.include_status = query, names, include_status
        self.types: dict[str, str | None] = dict(types)
        self._merged: list[_frames.Column] | None = None

    def columns(self, examples: Sequence[fs.TrainingExample]) -> list[_frames.Column]:
        """The columns of some examples (typed as the whole dataset)."""
        return training_columns(examples, self.query.extra_types, self.names, self.types, self.include_status)

    def add(self, response: fs.GetTrainingDatasetResponse) -> None:
        """Append a response's examples."""
        columns = self.columns(response.examples)
        if self._merged is None:
            self._merged = columns
        else:
            for into, column in zip(self._merged, columns, strict=True):
                into.values.extend(column.values)

    def output(self, output: Output) -> Any:
        """The DataFrame or Table of everything added."""
        return frame(self.columns([]) if self._merged is None else self._merged, output)


class ParquetSink:
    """Training columns written to one Parquet file as they arrive (`with`: closes the file)."""

    def __init__(self, path: str | Path, rows: Rows, progress: ProgressCallback | None) -> None:
        import pyarrow.parquet as pq

        self._pq, self._path, self._progress = pq, str(path), progress
        self.total = len(rows) if hasattr(rows, "__len__") else -1
        self.rows = 0
        self._writer: Any = None

    def write(self, columns: Sequence[_frames.Column]) -> None:
        """Write a chunk of rows and report progress."""
        table = _frames.to_arrow(columns)
        if self._writer is None:
            self._writer = self._pq.ParquetWriter(self._path, table.schema)
        self._writer.write_table(table)
        self.rows += table.num_rows
        if self._progress is not None:
            self._progress(self.rows, self.total)

    def finish(self, empty: Sequence[_frames.Column]) -> None:
        """After the last chunk: with no rows written, an empty file with the schema of `empty`."""
        if self._writer is None:
            self._writer = self._pq.ParquetWriter(self._path, _frames.to_arrow(empty).schema)

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()


class EntityRows:
    """Rows to write, converted chunk by chunk once their features' value types are known."""

    def __init__(self, rows: Rows, entity_column: str, event_time_column: str, event_time: Any) -> None:
        self.rows, self.entity_column, self.event_time_column = rows, entity_column, event_time_column
        self.event_time = event_time
        self._done = 0

    def chunks(self) -> Iterator[list[Mapping[str, Any]]]:
        """The rows, 1,000 at a time."""
        return row_chunks(self.rows, 1000)

    def columns(self, chunk: Sequence[Mapping[str, Any] | fs.EntityRow]) -> list[str]:
        """The feature columns of a chunk (whose value types `convert` needs)."""
        return feature_columns_of(chunk, self.entity_column, self.event_time_column)

    def convert(self, chunk: Sequence[Mapping[str, Any]], types: Mapping[str, str]) -> Iterator[fs.EntityRow]:
        """The EntityRows of a chunk, one at a time (an error names the row's position in all rows)."""
        for row in chunk:
            where = f"rows[{self._done}]"
            yield entity_row(row, types, self.entity_column, self.event_time_column, self.event_time, where)
            self._done += 1


Request = TypeVar("Request")


def write_requests(
    make: Callable[..., Request], entity_type: str, rows: Iterable[fs.EntityRow], chunk_values: int, max_bytes: int
) -> Iterator[Request]:
    """Write or push requests (`make`) of at most `chunk_values` values and half of `max_bytes`."""
    for batch in batched_rows(rows, chunk_values, max_bytes // 2):
        yield make(entity_type=entity_type, rows=batch)

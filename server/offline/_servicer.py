"""GetHistoricalFeatures and StreamHistoricalFeatures: feature history from PostgreSQL.

Responses are assembled as bytes (see server.core.codec): each history row
keeps its FeatureValue already framed as field 3 of the response, so a page
is the concatenation of its rows' frames; no message objects are built.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from featurestore.serving.v1 import feature_store_service_pb2 as fs
from server import _paging
from server._rpc import rpc, rpc_stream, unary_stream, unary_unary
from server.core import Limits, codec, entity_id_problem, entity_type_problem, timestamp_problem
from server.core.errors import MAX_VIOLATIONS, FieldViolation, invalid_argument, resource_exhausted
from server.offline._model import HistoryPage, HistoryQuery
from server.offline._pgstore import PostgresHistoryStore
from server.online import Catalog

Context = grpc.aio.ServicerContext[Any, Any]
MAX_LIMIT = 10_000
MAX_FEATURES = 10_000  # feature names one history query may hold
STREAM_PAGE = 1_000
DEFAULT_PAGE = 1_000
_BEGINNING = datetime(1, 1, 1, tzinfo=UTC)
_END = datetime(9999, 12, 31, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _when(request: Any, field: str, default: datetime) -> datetime:
    """The time in `field` of `request`, or `default` when the field is not set (an explicit 1970-01-01 is a time)."""
    return getattr(request, field).ToDatetime(tzinfo=UTC) if request.HasField(field) else default


def _query(catalog: Catalog, request: fs.GetHistoricalFeaturesRequest, *, paged: bool) -> HistoryQuery:
    """The validated query; INVALID_ARGUMENT names every bad field."""
    if len(request.feature_names) > MAX_FEATURES:
        problem = f"holds {len(request.feature_names)} names; the limit is {MAX_FEATURES}"
        raise invalid_argument([FieldViolation("feature_names", problem)])
    violations = entity_type_problem(request.entity_type) + entity_id_problem("entity_id", request.entity_id)
    if not request.feature_names:
        violations.append(FieldViolation("feature_names", "name at least one feature"))
    for i, name in enumerate(request.feature_names):
        catalog.resolve(f"feature_names[{i}]", name, request.entity_type, violations)
        if len(violations) >= MAX_VIOLATIONS:
            break
    for name in ("start_time", "end_time"):
        violations += timestamp_problem(name, getattr(request, name))
    if violations:
        raise invalid_argument(violations)
    start, end = _when(request, "start_time", _BEGINNING), _when(request, "end_time", _END)
    if start >= end:
        violations.append(FieldViolation("start_time", "must be before end_time"))
    if request.limit and not 1 <= request.limit <= MAX_LIMIT:
        violations.append(FieldViolation("limit", f"must be between 1 and {MAX_LIMIT}, got {request.limit}"))
    if violations:
        raise invalid_argument(violations)
    names = tuple(request.feature_names)
    if not paged:
        return HistoryQuery(request.entity_type, request.entity_id, names, start, end, STREAM_PAGE)
    size = _paging.page_size(request.page_size or request.limit, default=DEFAULT_PAGE, maximum=MAX_LIMIT)
    after = _cursor(_paging.decode_token(request.page_token, _filters(request)))
    return HistoryQuery(request.entity_type, request.entity_id, names, start, end, size, after)


def _filters(request: fs.GetHistoricalFeaturesRequest) -> tuple[object, ...]:
    """What a page token is bound to: the request less its page size and token (as the registry's)."""
    times = (request.start_time.ToJsonString(), request.end_time.ToJsonString())
    return (request.entity_type, request.entity_id, tuple(request.feature_names), times)


def page_token(event_time: datetime, name: str, request: fs.GetHistoricalFeaturesRequest) -> str:
    """The token of the page after the value at (`event_time`, `name`)."""
    micros = (event_time - _EPOCH) // timedelta(microseconds=1)
    return _paging.encode_token(f"{micros}:{name}", _filters(request))


def _cursor(cursor: str) -> tuple[datetime, str] | None:
    if not cursor:
        return None
    micros, _, name = cursor.partition(":")
    try:
        return _EPOCH + timedelta(microseconds=int(micros)), name
    except (ValueError, OverflowError):
        raise invalid_argument([FieldViolation("page_token", "is not a token returned by this listing")]) from None


def _response(q: HistoryQuery, page: HistoryPage, next_token: str) -> bytes:
    """The response: stored frames are already field 3 (values) of GetHistoricalFeaturesResponse."""
    # Fields 1 and 2 are entity_id and entity_type, as in GetFeaturesResponse; 4 is next_page_token.
    head = codec.frame(codec.ENTITY_ID_TAG, q.entity_id.encode())
    head += codec.frame(codec.ENTITY_TYPE_TAG, q.entity_type.encode())
    tail = codec.frame(codec.NEXT_PAGE_TOKEN_TAG, next_token.encode()) if next_token else b""
    return head + page.frames + tail


class HistoryServicer:
    """Reads of the offline store."""

    def __init__(self, catalog: Catalog, store: PostgresHistoryStore, limits: Limits) -> None:
        self._catalog = catalog
        self._store = store
        self._limits = limits

    @rpc
    async def GetHistoricalFeatures(self, request: fs.GetHistoricalFeaturesRequest, context: Context) -> bytes:
        q = _query(self._catalog, request, paged=True)
        page = await self._store.query(q, context.time_remaining())
        token = page_token(*page.last, request) if page.more and page.last else ""
        return _response(q, page, token)

    @rpc_stream
    async def StreamHistoricalFeatures(
        self, request: fs.GetHistoricalFeaturesRequest, context: Context
    ) -> AsyncIterator[bytes]:
        q = _query(self._catalog, request, paged=False)
        sent, ends = 0, time.monotonic() + self._limits.max_stream_seconds
        while True:
            q = dataclasses.replace(q, limit=min(STREAM_PAGE, self._limits.max_stream_values - sent))
            page = await self._store.query(q, context.time_remaining())
            if page.count:
                yield _response(q, page, "")
            if not page.more:
                return
            sent += page.count
            self._check_stream(sent, ends, page, request)
            q = dataclasses.replace(q, after=page.last)

    def _check_stream(
        self, sent: int, ends: float, page: HistoryPage, request: fs.GetHistoricalFeaturesRequest
    ) -> None:
        """RESOURCE_EXHAUSTED once a stream has sent its most values or run its longest, with where to go on."""
        limits = self._limits
        last = page_token(*page.last, request) if page.last else ""
        rest = f"continue with GetHistoricalFeatures and page_token {last!r}"
        if sent >= limits.max_stream_values:
            raise resource_exhausted("end_time", f"the stream sent {sent} values, the limit per call; {rest}")
        if time.monotonic() > ends:
            problem = f"the stream ran longer than {limits.max_stream_seconds:g} s, the limit per call; {rest}"
            raise resource_exhausted("end_time", problem)


def methods(servicer: HistoryServicer) -> dict[str, grpc.RpcMethodHandler]:  # type: ignore[type-arg]
    """The history methods of FeatureStoreService; responses are pre-encoded bytes."""
    return {
        "GetHistoricalFeatures": unary_unary(servicer.GetHistoricalFeatures, fs.GetHistoricalFeaturesRequest),
        "StreamHistoricalFeatures": unary_stream(servicer.StreamHistoricalFeatures, fs.GetHistoricalFeaturesRequest),
    }

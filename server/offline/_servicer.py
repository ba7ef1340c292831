"""GetHistoricalFeatures and StreamHistoricalFeatures: feature history from PostgreSQL.

Responses are assembled as bytes (see server._codec): each history row
keeps its FeatureValue already framed as field 3 of the response, so a page
is the concatenation of its rows' frames; no message objects are built.
"""

from __future__ import annotations

import base64
import dataclasses
import struct
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from featurestore.serving.v1 import feature_store_service_pb2 as fs
from server import _codec
from server._errors import FieldViolation, invalid_argument
from server._rpc import rpc, rpc_stream
from server.offline._model import HistoryPage, HistoryQuery
from server.offline._pgstore import PostgresHistoryStore
from server.online._catalog import Catalog
from server.online._requests import entity_id_problem, timestamp_problem
from server.online._servicer import SERVICE

Context = grpc.aio.ServicerContext[Any, Any]
MAX_LIMIT = 10_000
STREAM_PAGE = 1_000
_BEGINNING = datetime(1, 1, 1, tzinfo=UTC)
_END = datetime(9999, 12, 31, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TOKEN = struct.Struct(">q")
_NEXT_PAGE_TOKEN_TAG = b"\x22"


def _when(ts: Any, default: datetime) -> datetime:
    return ts.ToDatetime(tzinfo=UTC) if ts.seconds or ts.nanos else default


def _query(catalog: Catalog, request: fs.GetHistoricalFeaturesRequest, *, paged: bool) -> HistoryQuery:
    """The validated query; INVALID_ARGUMENT names every bad field."""
    violations = entity_id_problem("entity_id", request.entity_id)
    if not request.feature_names:
        violations.append(FieldViolation("feature_names", "name at least one feature"))
    for i, name in enumerate(request.feature_names):
        catalog.resolve(f"feature_names[{i}]", name, request.entity_type, violations)
    for name in ("start_time", "end_time"):
        violations += timestamp_problem(name, getattr(request, name))
    if violations:
        raise invalid_argument(violations)
    start, end = _when(request.start_time, _BEGINNING), _when(request.end_time, _END)
    if start >= end:
        violations.append(FieldViolation("start_time", "must be before end_time"))
    if paged and not 1 <= request.limit <= MAX_LIMIT:
        violations.append(FieldViolation("limit", f"must be between 1 and {MAX_LIMIT}, got {request.limit}"))
    after = _decode_token(request.page_token, violations) if paged else None
    if violations:
        raise invalid_argument(violations)
    names = tuple(request.feature_names)
    limit = request.limit if paged else STREAM_PAGE
    return HistoryQuery(request.entity_type, request.entity_id, names, start, end, limit, after)


def _encode_token(event_time: datetime, name: str) -> str:
    micros = (event_time - _EPOCH) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(_TOKEN.pack(micros) + name.encode()).decode()


def _decode_token(token: str, violations: list[FieldViolation]) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token)
        micros, name = _TOKEN.unpack(raw[:8])[0], raw[8:].decode()
    except (ValueError, struct.error):
        violations.append(FieldViolation("page_token", "is not a token returned by this method"))
        return None
    return _EPOCH + timedelta(microseconds=micros), name


def _response(q: HistoryQuery, page: HistoryPage, next_token: str) -> bytes:
    """The response: stored frames are already field 3 (values) of GetHistoricalFeaturesResponse."""
    # Fields 1 and 2 are entity_id and entity_type, as in GetFeaturesResponse; 4 is next_page_token.
    head = _codec.frame(_codec.ENTITY_ID_TAG, q.entity_id.encode())
    head += _codec.frame(_codec.ENTITY_TYPE_TAG, q.entity_type.encode())
    tail = _codec.frame(_NEXT_PAGE_TOKEN_TAG, next_token.encode()) if next_token else b""
    return head + page.frames + tail


class HistoryServicer:
    """Reads of the offline store."""

    def __init__(self, catalog: Catalog, store: PostgresHistoryStore) -> None:
        self._catalog = catalog
        self._store = store

    @rpc
    async def GetHistoricalFeatures(self, request: fs.GetHistoricalFeaturesRequest, context: Context) -> bytes:
        q = _query(self._catalog, request, paged=True)
        page = await self._store.query(q)
        token = _encode_token(*page.last) if page.more and page.last else ""
        return _response(q, page, token)

    @rpc_stream
    async def StreamHistoricalFeatures(
        self, request: fs.GetHistoricalFeaturesRequest, context: Context
    ) -> AsyncIterator[bytes]:
        q = _query(self._catalog, request, paged=False)
        while True:
            page = await self._store.query(q)
            if page.count:
                yield _response(q, page, "")
            if not page.more:
                return
            q = dataclasses.replace(q, after=page.last)


def handler(servicer: HistoryServicer) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    """The history methods of FeatureStoreService; responses are pre-encoded bytes."""
    methods = {
        "GetHistoricalFeatures": grpc.unary_unary_rpc_method_handler(
            servicer.GetHistoricalFeatures, request_deserializer=fs.GetHistoricalFeaturesRequest.FromString
        ),
        "StreamHistoricalFeatures": grpc.unary_stream_rpc_method_handler(
            servicer.StreamHistoricalFeatures, request_deserializer=fs.GetHistoricalFeaturesRequest.FromString
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)

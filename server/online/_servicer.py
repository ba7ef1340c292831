"""The FeatureStoreService's online methods: reads from and writes to the online store.

Reads answer pre-encoded bytes (see server.core.codec): the handlers are registered with
no response serializer, so the bytes go to the wire as they are.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from featurestore.serving.v1 import feature_store_service_pb2 as fs
from server import _metrics
from server._metrics import REQUEST_ENTITIES, REQUEST_FEATURES
from server._rpc import parsed, rpc, stream_unary, unary_unary
from server.core import Limits, codec, entity_keys
from server.core.errors import resource_exhausted
from server.online._catalog import Catalog, Plan
from server.online._requests import EncodedWrite, RowsEncoding, check_read, features_allowed
from server.online._store import HistorySink, OnlineStore
from server.online._wire import WireWriteRequest, parse_write_request

Context = grpc.aio.ServicerContext[Any, Any]
_WRITE_REQUEST = fs.WriteFeaturesRequest.DESCRIPTOR.full_name
_PUSH_REQUEST = fs.PushFeaturesRequest.DESCRIPTOR.full_name
_SLICE_VALUES = 500  # values encoded between two yields to the event loop (~1-2 ms)
_READS = ("GetFeatures", "GetFeaturesJson", "BatchGetFeatures", "BatchGetFeaturesJson")
_FEATURES_ASKED = {method: REQUEST_FEATURES.labels(method).observe for method in _READS}
_ENTITIES = {m: REQUEST_ENTITIES.labels(m).observe for m in (*_READS[2:], "WriteFeatures", "PushFeatures")}


def _tally(method: str, plan: Plan, values: int, missing: int, expired: int, entities: int = 0) -> None:
    """Count a read's values by status, and its size (a few increments: no loop over the values)."""
    present, not_found, expired_inc = _metrics.served_counters(plan.label)
    if values - missing - expired:
        present(values - missing - expired)
    if missing:
        not_found(missing)
    if expired:
        expired_inc(expired)
    _FEATURES_ASKED[method](len(plan.fields))
    if entities:
        _ENTITIES[method](entities)


class OnlineServicer:
    """GetFeatures, BatchGetFeatures (and their JSON renderings), WriteFeatures and PushFeatures."""

    def __init__(self, catalog: Catalog, store: OnlineStore, history: HistorySink, limits: Limits) -> None:
        self._catalog = catalog
        self._store = store
        self._history = history
        self._limits = limits
        self._encoding = asyncio.Lock()  # one write encodes at a time (see _encode)

    def _plan(self, entity_type: str, request: Any, entity_ids: Sequence[str], *, batch: bool) -> Plan:
        most = features_allowed(self._limits, len(entity_ids))
        plan = self._catalog.plan(entity_type, tuple(request.feature_names), tuple(request.feature_groups), most)
        check_read(entity_type, entity_ids, len(plan.fields), self._limits, batch=batch)
        return plan

    async def _read(self, entity_type: str, entity_ids: Sequence[str], fields: Sequence[bytes]) -> list[bytes | None]:
        return await self._store.read(entity_keys(entity_type, entity_ids), fields)

    @rpc
    async def GetFeatures(self, request: fs.GetFeaturesRequest, context: Context) -> bytes:
        entity_type, entity_id = request.entity_type, request.entity_id
        plan = self._plan(entity_type, request, (entity_id,), batch=False)
        stored = await self._read(entity_type, (entity_id,), plan.fields)
        expired = [0]
        features = codec.assemble(stored, plan.not_found, plan.cutoffs(codec.now_micros()), expired)
        if _metrics.enabled:
            _tally("GetFeatures", plan, len(stored), stored.count(None), expired[0])
        head = codec.frame(codec.ENTITY_ID_TAG, entity_id.encode())
        return head + codec.frame(codec.ENTITY_TYPE_TAG, entity_type.encode()) + features

    @rpc
    async def GetFeaturesJson(self, request: fs.GetFeaturesRequest, context: Context) -> bytes:
        entity_type, entity_id = request.entity_type, request.entity_id
        plan = self._plan(entity_type, request, (entity_id,), batch=False)
        stored = await self._read(entity_type, (entity_id,), plan.json_fields)
        expired = [0]
        features = codec.assemble_json(stored, plan.not_found_json, plan.cutoffs(codec.now_micros()), expired)
        if _metrics.enabled:
            _tally("GetFeaturesJson", plan, len(stored), stored.count(None), expired[0])
        head = b'{"entity_id":' + codec.json_string(entity_id) + b',"entity_type":' + codec.json_string(entity_type)
        return codec.http_body(head + b',"features":[' + features + b"]}")

    @rpc
    async def BatchGetFeatures(self, request: fs.BatchGetFeaturesRequest, context: Context) -> bytes:
        entity_type, entity_ids = request.entity_type, list(request.entity_ids)
        plan = self._plan(entity_type, request, entity_ids, batch=True)
        parts = [codec.frame(codec.BATCH_ENTITY_TYPE_TAG, entity_type.encode())]
        if entity_ids:
            width, not_found, cutoffs = len(plan.fields), plan.not_found, plan.cutoffs(codec.now_micros())
            expired, missing = [0], [0]

            def framed(first: int, stored: list[bytes | None]) -> list[bytes]:
                """A piece's entities, framed while Valkey still works on the next pieces."""
                if _metrics.enabled:
                    missing[0] += stored.count(None)
                ids = entity_ids[first : first + len(stored) // width]
                return codec.assemble_batch(ids, stored, not_found, cutoffs, expired)

            keys = entity_keys(entity_type, entity_ids)
            for piece in await self._store.read_each(keys, plan.fields, framed):
                parts += piece
            if _metrics.enabled:
                _tally("BatchGetFeatures", plan, len(keys) * width, missing[0], expired[0], len(entity_ids))
        return b"".join(parts)

    @rpc
    async def BatchGetFeaturesJson(self, request: fs.BatchGetFeaturesRequest, context: Context) -> bytes:
        entity_type, entity_ids = request.entity_type, list(request.entity_ids)
        plan = self._plan(entity_type, request, entity_ids, batch=True)
        entities: list[bytes] = []
        if entity_ids:
            cutoffs, width, not_found = plan.cutoffs(codec.now_micros()), len(plan.fields), plan.not_found_json
            expired, missing = [0], [0]

            def rendered(first: int, stored: list[bytes | None]) -> list[bytes]:
                """A piece's entities, rendered while Valkey still works on the next pieces."""
                if _metrics.enabled:
                    missing[0] += stored.count(None)
                out = []
                for i, entity_id in enumerate(entity_ids[first : first + len(stored) // width]):
                    values = codec.assemble_json(stored[i * width : (i + 1) * width], not_found, cutoffs, expired)
                    out.append(b'{"entity_id":' + codec.json_string(entity_id) + b',"features":[' + values + b"]}")
                return out

            keys = entity_keys(entity_type, entity_ids)
            for piece in await self._store.read_each(keys, plan.json_fields, rendered):
                entities += piece
            if _metrics.enabled:
                _tally("BatchGetFeaturesJson", plan, len(keys) * width, missing[0], expired[0], len(entity_ids))
        head = b'{"entity_type":' + codec.json_string(entity_type) + b',"entities":['
        return codec.http_body(head + b",".join(entities) + b"]}")

    @rpc
    async def WriteFeatures(self, request: fs.WriteFeaturesRequest, context: Context) -> fs.WriteFeaturesResponse:
        if _metrics.enabled:
            _ENTITIES["WriteFeatures"](len(request.rows))
        written, total = await self._write(request.entity_type, request.rows, context)
        return fs.WriteFeaturesResponse(written_values=written, skipped_values=total - written)

    @rpc
    async def PushFeatures(
        self, requests: AsyncIterator[fs.PushFeaturesRequest], context: Context
    ) -> fs.PushFeaturesResponse:
        """Each message is a write of its own; the call as a whole is bounded in values and time."""
        response = fs.PushFeaturesResponse()
        pushed, ends = 0, time.monotonic() + self._limits.max_stream_seconds
        async for request in requests:
            encoded = await self._encode(parsed(request).entity_type, request.rows, _PUSH_REQUEST)
            if _metrics.enabled:
                _ENTITIES["PushFeatures"](len(request.rows))
            pushed += encoded.values
            self._check_push(pushed, ends, response.batches)
            written = await self._store_both(encoded, context)
            response.written_values += written
            response.skipped_values += encoded.values - written
            response.batches += 1
        return response

    def _check_push(self, pushed: int, ends: float, done: int) -> None:
        """RESOURCE_EXHAUSTED once a push call carries too many values or runs too long."""
        limits, rest = self._limits, f"the first {done} batches were written: push the rest in another call"
        if pushed > limits.max_stream_values:
            problem = f"carry more than {limits.max_stream_values} values, the limit per call; {rest}"
            raise resource_exhausted("requests", problem)
        if time.monotonic() > ends:
            problem = f"ran longer than {limits.max_stream_seconds:g} s, the limit per call; {rest}"
            raise resource_exhausted("requests", problem)

    async def _write(self, entity_type: str, rows: Any, context: Context) -> tuple[int, int]:
        """(values written online, values in the request)."""
        encoded = await self._encode(entity_type, rows)
        return await self._store_both(encoded, context), encoded.values

    async def _encode(self, entity_type: str, rows: Any, type_name: str = _WRITE_REQUEST) -> EncodedWrite:
        """The rows checked and encoded in slices of ~_SLICE_VALUES values (a list's items counting a value per
        16), the loop yielded between them,
        by one write at a time: concurrent writes queue for their turn (a FIFO lock) instead of all running
        a slice each time the loop comes round, so a read that becomes ready waits for one slice at most,
        however many large writes are in progress. (Their stores' I/O goes on meanwhile.)"""
        encoding = RowsEncoding(self._catalog, entity_type, rows, self._limits, time.time(), type_name)
        async with self._encoding:
            start = encoding.encode(0, len(rows), _SLICE_VALUES)
            while start < len(rows) and not encoding.done:
                await asyncio.sleep(0)
                start = encoding.encode(start, len(rows), _SLICE_VALUES)
        return encoding.result()

    async def _store_both(self, encoded: EncodedWrite, context: Context) -> int:
        """History first, then online; returns the values written online.

        If the online write then fails, the caller's retry re-appends the same history rows,
        which changes nothing. Online, each value is two fields, written or skipped together.
        The history append gets what is left of the caller's deadline.
        """
        await self._history.append(encoded.history, context.time_remaining())
        return await self._store.write(encoded.online)


def methods(servicer: OnlineServicer) -> dict[str, grpc.RpcMethodHandler]:  # type: ignore[type-arg]
    """The online methods of FeatureStoreService; reads return bytes that need no serializer."""
    return {
        "GetFeatures": unary_unary(servicer.GetFeatures, fs.GetFeaturesRequest),
        "BatchGetFeatures": unary_unary(servicer.BatchGetFeatures, fs.BatchGetFeaturesRequest),
        "GetFeaturesJson": unary_unary(servicer.GetFeaturesJson, fs.GetFeaturesRequest),
        "BatchGetFeaturesJson": unary_unary(servicer.BatchGetFeaturesJson, fs.BatchGetFeaturesRequest),
        # Writes parse with each value left as its bytes (see _wire), named as the requests they are.
        "WriteFeatures": unary_unary(
            servicer.WriteFeatures, WireWriteRequest, fs.WriteFeaturesResponse, _WRITE_REQUEST, parse_write_request
        ),
        "PushFeatures": stream_unary(
            servicer.PushFeatures, WireWriteRequest, fs.PushFeaturesResponse, _PUSH_REQUEST, parse_write_request
        ),
    }

"""GetTrainingDataset: point-in-time correct examples from the feature history.

A row asks "what would serving have answered for this entity at time t": for
each feature, the latest value with event time <= t, marked EXPIRED when it
was older than the feature's max age at t, exactly as the online read
computes it. Rows go to PostgreSQL in chunks; each chunk is one query (an
index probe per row and feature) and one response message.

The response is assembled as bytes: TrainingExample shares field numbers 1-3
with TrainingRow, so an example is the row's own serialization followed by
its feature frames (field 4).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import grpc

from featurestore.serving.v1 import feature_store_service_pb2 as fs
from server import _codec
from server._errors import FieldViolation, invalid_argument
from server._rpc import rpc_stream
from server.offline._pgstore import PostgresHistoryStore
from server.online._catalog import Catalog, Plan
from server.online._requests import entity_id_problem
from server.online._servicer import SERVICE

Context = grpc.aio.ServicerContext[Any, Any]
CHUNK_ROWS = 2_000
PARALLEL_CHUNKS = 2  # PostgreSQL works on two chunks at once (one backend each)
MAX_ROWS = 1_000_000
_FEATURE_TAG = b"\x22"  # TrainingExample.features
_EXAMPLES_TAG = b"\x0a"  # GetTrainingDatasetResponse.examples


def _validate(catalog: Catalog, request: fs.GetTrainingDatasetRequest) -> Plan:
    plan = catalog.plan(request.entity_type, tuple(request.feature_names), tuple(request.feature_groups))
    violations: list[FieldViolation] = []
    if not plan.features:
        violations.append(FieldViolation("feature_names", "name at least one feature or feature group"))
    if len(request.rows) > MAX_ROWS:
        violations.append(FieldViolation("rows", f"holds {len(request.rows)} rows; the limit is {MAX_ROWS}"))
    for i, row in enumerate(request.rows):
        violations += entity_id_problem(f"rows[{i}].entity_id", row.entity_id)
        if not row.HasField("timestamp"):
            violations.append(FieldViolation(f"rows[{i}].timestamp", "is required"))
        if len(violations) > 50:
            break
    if request.HasField("max_age") and request.max_age.ToTimedelta().total_seconds() <= 0:
        violations.append(FieldViolation("max_age", "must be positive"))
    if violations:
        raise invalid_argument(violations)
    return plan


def _as_example_feature(frame: bytes, expired: bool) -> bytes:
    """A stored FeatureValue frame (field 3) as TrainingExample.features (field 4)."""
    if expired:  # rare: re-encode with the status changed
        frame = _codec.expired_frame(bytes(_codec.TIME_BYTES) + frame)
    return _FEATURE_TAG + frame[1:]


class TrainingServicer:
    """Builds training datasets from the offline store."""

    def __init__(self, catalog: Catalog, store: PostgresHistoryStore) -> None:
        self._catalog = catalog
        self._store = store

    @rpc_stream
    async def GetTrainingDataset(self, request: fs.GetTrainingDatasetRequest, context: Context) -> AsyncIterator[bytes]:
        plan = _validate(self._catalog, request)
        starts = range(0, len(request.rows), CHUNK_ROWS)
        for pair in (starts[i : i + PARALLEL_CHUNKS] for i in range(0, len(starts), PARALLEL_CHUNKS)):
            chunks = [self._chunk(request, plan, request.rows[s : s + CHUNK_ROWS]) for s in pair]
            for chunk in await asyncio.gather(*chunks):  # queries in parallel, answers in order
                yield chunk

    async def _chunk(self, request: fs.GetTrainingDatasetRequest, plan: Plan, rows: Any) -> bytes:
        max_age = request.max_age.ToTimedelta() if request.HasField("max_age") else None
        times = [row.timestamp.ToDatetime(tzinfo=UTC) for row in rows]
        names = [f.name for f in plan.features]
        found = await self._store.as_of(request.entity_type, [r.entity_id for r in rows], times, names, max_age)
        width = len(names)
        cells: list[bytes] = [missing for _ in rows for missing in plan.not_found_examples]
        ages = [f.max_age_micros for f in plan.features]
        row_micros = [_codec.micros_of(row.timestamp) for row in rows]
        for row_i, feature_i, micros, frame in found:
            age = ages[feature_i]
            expired = age is not None and row_micros[row_i] - micros > age
            cells[row_i * width + feature_i] = _as_example_feature(frame, expired)
        examples = [
            _codec.frame(_EXAMPLES_TAG, row.SerializeToString() + b"".join(cells[i * width : (i + 1) * width]))
            for i, row in enumerate(rows)
        ]
        return b"".join(examples)


def handler(servicer: TrainingServicer) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    methods = {
        "GetTrainingDataset": grpc.unary_stream_rpc_method_handler(
            servicer.GetTrainingDataset, request_deserializer=fs.GetTrainingDatasetRequest.FromString
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)

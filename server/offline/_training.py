"""GetTrainingDataset: point-in-time correct examples from the feature history.

A row asks "what would serving have answered for this entity at time t": for
each feature, the latest value with event time <= t, marked EXPIRED when it
was older than the feature's max age at t, exactly as the online read
computes it. Rows go to PostgreSQL in chunks; each chunk is one query (one
backward scan per row over the entity's latest values, then an index probe
for each feature a scan did not meet) and one response message. PostgreSQL
builds each row's feature fields; Python adds the row's own.

The response is assembled as bytes: TrainingExample shares field numbers 1-3
with TrainingRow, so an example is the row's own serialization followed by
its feature frames (field 4).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc

from featurestore.serving.v1 import feature_store_service_pb2 as fs
from server import _codec
from server._errors import FieldViolation, invalid_argument
from server._rpc import rpc_stream
from server.offline._model import AsOfQuery, RowCells
from server.offline._pgstore import PostgresHistoryStore
from server.online._catalog import Catalog, Plan
from server.online._requests import (
    ENTITY_ID_MAX_BYTES,
    TIMESTAMP_MAX_SECONDS,
    TIMESTAMP_MIN_SECONDS,
    entity_id_problem,
    timestamp_problem,
)
from server.online._servicer import SERVICE

Context = grpc.aio.ServicerContext[Any, Any]
CHUNK_ROWS = 2_000
PARALLEL_CHUNKS = 4  # queries in flight (a backend each): PostgreSQL stays busy while answers go out
MAX_ROWS = 1_000_000
_EXAMPLES_TAG = b"\x0a"  # GetTrainingDatasetResponse.examples


def _validate(catalog: Catalog, request: fs.GetTrainingDatasetRequest) -> Plan:
    plan = catalog.plan(request.entity_type, tuple(request.feature_names), tuple(request.feature_groups))
    violations: list[FieldViolation] = []
    if not plan.features:
        violations.append(FieldViolation("feature_names", "name at least one feature or feature group"))
    if len(request.rows) > MAX_ROWS:
        violations.append(FieldViolation("rows", f"holds {len(request.rows)} rows; the limit is {MAX_ROWS}"))
    elif not _rows_look_valid(request.rows):
        violations += _row_problems(request.rows)
    if request.HasField("max_age") and request.max_age.ToTimedelta().total_seconds() <= 0:
        violations.append(FieldViolation("max_age", "must be positive"))
    if violations:
        raise invalid_argument(violations)
    return plan


def _rows_look_valid(rows: Any) -> bool:
    """A quick pass over all rows; _row_problems names what is wrong when this fails."""
    ids = [row.entity_id for row in rows]
    if not all(ids) or max(map(len, ids), default=0) * 4 > ENTITY_ID_MAX_BYTES:  # 4 bytes per char at most
        return False
    seconds = [row.timestamp.seconds for row in rows]
    in_range = min(seconds, default=0) >= TIMESTAMP_MIN_SECONDS and max(seconds, default=0) <= TIMESTAMP_MAX_SECONDS
    nanos = [row.timestamp.nanos for row in rows]
    in_range = in_range and min(nanos, default=0) >= 0 and max(nanos, default=0) < 1_000_000_000
    return in_range and all(row.HasField("timestamp") for row in rows)


def _row_problems(rows: Any) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    for i, row in enumerate(rows):
        violations += entity_id_problem(f"rows[{i}].entity_id", row.entity_id)
        if not row.HasField("timestamp"):
            violations.append(FieldViolation(f"rows[{i}].timestamp", "is required"))
        violations += timestamp_problem(f"rows[{i}].timestamp", row.timestamp)
        if len(violations) > 50:
            break
    return violations


def scan_window(requested: int, registered: int) -> int:
    """How many of an entity's latest values a row's scan reads.

    As many as the entity type has features, so that values written together
    are all met in one scan; but at most 4x the features asked for (or 32) and
    at least those. A feature the scan misses costs an index probe of its own.
    """
    return max(requested, min(registered, max(4 * requested, 32)))


def _cells(answer: RowCells, not_found: list[bytes]) -> bytes:
    if isinstance(answer, bytes):
        return answer
    return b"".join(missing if cell is None else cell for cell, missing in zip(answer, not_found, strict=True))


class TrainingServicer:
    """Builds training datasets from the offline store."""

    def __init__(self, catalog: Catalog, store: PostgresHistoryStore) -> None:
        self._catalog = catalog
        self._store = store

    @rpc_stream
    async def GetTrainingDataset(self, request: fs.GetTrainingDatasetRequest, context: Context) -> AsyncIterator[bytes]:
        plan = _validate(self._catalog, request)
        pending: deque[asyncio.Task[bytes]] = deque()
        try:  # PARALLEL_CHUNKS queries in flight while answers go out in order
            for start in range(0, len(request.rows), CHUNK_ROWS):
                rows = request.rows[start : start + CHUNK_ROWS]
                pending.append(asyncio.ensure_future(self._chunk(request, plan, rows)))
                if len(pending) >= PARALLEL_CHUNKS:
                    yield await pending.popleft()
            while pending:
                yield await pending.popleft()
        finally:
            for task in pending:
                task.cancel()

    async def _chunk(self, request: fs.GetTrainingDatasetRequest, plan: Plan, rows: Any) -> bytes:
        window = scan_window(len(plan.features), self._catalog.feature_count(request.entity_type))
        answers = await self._store.as_of(_as_of_query(request, plan, rows, window))
        not_found = plan.not_found_examples
        return b"".join(
            _codec.frame(_EXAMPLES_TAG, row.SerializeToString() + _cells(answer, not_found))
            for row, answer in zip(rows, answers, strict=True)
        )


def _as_of_query(request: fs.GetTrainingDatasetRequest, plan: Plan, rows: Any, window: int) -> AsOfQuery:
    """The store's query for one chunk of validated rows."""
    ages = [f.max_age_micros for f in plan.features]
    return AsOfQuery(
        entity_type=request.entity_type,
        entity_ids=[row.entity_id for row in rows],
        micros=[row.timestamp.seconds * 1_000_000 + row.timestamp.nanos // 1000 for row in rows],
        feature_names=[f.name for f in plan.features],
        feature_max_ages=[None if age is None else timedelta(microseconds=age) for age in ages],
        max_age=request.max_age.ToTimedelta() if request.HasField("max_age") else None,
        window=window,
    )


def handler(servicer: TrainingServicer) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    methods = {
        "GetTrainingDataset": grpc.unary_stream_rpc_method_handler(
            servicer.GetTrainingDataset, request_deserializer=fs.GetTrainingDatasetRequest.FromString
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)

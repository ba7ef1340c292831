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
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import grpc

from featurestore.serving.v1 import feature_store_service_pb2 as fs
from server._rpc import rpc_stream, unary_stream
from server.core import (
    ENTITY_ID_MAX_BYTES,
    TIMESTAMP_MAX_SECONDS,
    TIMESTAMP_MIN_SECONDS,
    Limits,
    codec,
    entity_id_problem,
    timestamp_problem,
)
from server.core.errors import MAX_VIOLATIONS, FieldViolation, invalid_argument, resource_exhausted
from server.offline._model import AsOfQuery, RowCells
from server.offline._pgstore import PostgresHistoryStore
from server.online import Catalog, Plan

Context = grpc.aio.ServicerContext[Any, Any]
CHUNK_ROWS = 2_000
CHUNK_CELLS = 50_000  # rows x features per query: wide feature lists get fewer rows per chunk
MESSAGE_BYTES = 4 * 1024 * 1024  # a response message's most (gRPC clients receive 4 MiB by default)
PARALLEL_CHUNKS = 4  # queries in flight (a backend each): PostgreSQL stays busy while answers go out
MAX_ROWS = 1_000_000
_DURATION_MAX_SECONDS = 315_576_000_000  # a google.protobuf.Duration's range: +-10,000 years


def _validate(catalog: Catalog, request: fs.GetTrainingDatasetRequest, limits: Limits) -> Plan:
    """The request's plan; sizes are checked before any row or feature is looked at."""
    if len(request.rows) > MAX_ROWS:
        raise invalid_argument([FieldViolation("rows", f"holds {len(request.rows)} rows; the limit is {MAX_ROWS}")])
    names, groups = tuple(request.feature_names), tuple(request.feature_groups)
    plan = catalog.plan(request.entity_type, names, groups, limits.max_values)
    violations: list[FieldViolation] = []
    if not plan.features:
        violations.append(FieldViolation("feature_names", "name at least one feature or feature group"))
    if not _rows_look_valid(request.rows):
        violations += _row_problems(request.rows)
    if request.HasField("max_age"):
        # Checked before ToTimedelta, which overflows beyond a Duration's +-10,000 years.
        if request.max_age.seconds > _DURATION_MAX_SECONDS:
            violations.append(FieldViolation("max_age", "is out of range (a duration is at most 10,000 years)"))
        elif request.max_age.seconds < 0 or request.max_age.ToTimedelta().total_seconds() <= 0:
            violations.append(FieldViolation("max_age", "must be positive"))
    if violations:
        raise invalid_argument(violations)
    return plan


def _rows_look_valid(rows: Any) -> bool:
    """A quick pass over all rows; _row_problems names what is wrong when this fails."""
    ids = [row.entity_id for row in rows]
    if not all(ids) or max(map(len, ids), default=0) * 4 > ENTITY_ID_MAX_BYTES:  # 4 bytes per char at most
        return False
    if any("\x00" in entity_id for entity_id in ids):
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
        if len(violations) >= MAX_VIOLATIONS:
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


def chunk_rows(features: int) -> int:
    """Rows per query: CHUNK_ROWS, fewer for wide feature lists (CHUNK_CELLS cells at most)."""
    return max(1, min(CHUNK_ROWS, CHUNK_CELLS // max(features, 1)))


def messages(examples: list[bytes], budget: int, most: int) -> Iterator[bytes]:
    """Framed examples packed into response messages of at most `budget` bytes each.

    An example larger than `budget` goes alone; one larger than `most` (the send
    limit) cannot be sent at all: RESOURCE_EXHAUSTED.
    """
    batch: list[bytes] = []
    size = 0
    for example in examples:
        if len(example) > most:
            problem = (
                f"one example is {len(example)} bytes, more than the {most}-byte message limit: ask for fewer features"
            )
            raise resource_exhausted("feature_names", problem)
        if batch and size + len(example) > budget:
            yield b"".join(batch)
            batch, size = [], 0
        batch.append(example)
        size += len(example)
    if batch:
        yield b"".join(batch)


class TrainingServicer:
    """Builds training datasets from the offline store.

    At most `concurrency` datasets are built at once per process (each holds PARALLEL_CHUNKS
    connections of the read pool); a call that finds no place within `wait` seconds gets
    RESOURCE_EXHAUSTED. A call runs at most `limits.max_stream_seconds`.
    """

    def __init__(
        self, catalog: Catalog, store: PostgresHistoryStore, limits: Limits, concurrency: int = 2, wait: float = 2.0
    ) -> None:
        self._catalog = catalog
        self._store = store
        self._limits = limits
        self._places = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._wait = wait

    @rpc_stream
    async def GetTrainingDataset(self, request: fs.GetTrainingDatasetRequest, context: Context) -> AsyncIterator[bytes]:
        plan = _validate(self._catalog, request, self._limits)
        async with self._place():
            async for message in self._build(request, plan, context):
                yield message

    @contextlib.asynccontextmanager
    async def _place(self) -> AsyncIterator[None]:
        try:
            await asyncio.wait_for(self._places.acquire(), self._wait)
        except TimeoutError:
            problem = f"{self._concurrency} training datasets are being built (the most at a time); retry later"
            raise resource_exhausted("rows", problem) from None
        try:
            yield
        finally:
            self._places.release()

    async def _build(self, request: fs.GetTrainingDatasetRequest, plan: Plan, context: Context) -> AsyncIterator[bytes]:
        ends = time.monotonic() + self._limits.max_stream_seconds
        step = chunk_rows(len(plan.features))
        budget = min(MESSAGE_BYTES, self._limits.max_message_bytes)
        pending: deque[asyncio.Task[list[bytes]]] = deque()
        try:  # PARALLEL_CHUNKS queries in flight while answers go out in order
            for start in range(0, len(request.rows), step):
                rows = request.rows[start : start + step]
                pending.append(asyncio.ensure_future(self._chunk(request, plan, rows, context.time_remaining())))
                if len(pending) >= PARALLEL_CHUNKS:
                    for message in messages(await pending.popleft(), budget, self._limits.max_message_bytes):
                        yield message
                    self._check_time(ends, start)
            while pending:
                for message in messages(await pending.popleft(), budget, self._limits.max_message_bytes):
                    yield message
        finally:
            for task in pending:
                task.cancel()

    def _check_time(self, ends: float, rows_done: int) -> None:
        if time.monotonic() > ends:
            problem = f"building the dataset took longer than {self._limits.max_stream_seconds:g} s, the limit per "
            problem += f"call, after about {rows_done} rows: ask for fewer rows per call"
            raise resource_exhausted("rows", problem)

    async def _chunk(
        self, request: fs.GetTrainingDatasetRequest, plan: Plan, rows: Any, timeout: float | None
    ) -> list[bytes]:
        """The chunk's examples, each framed as GetTrainingDatasetResponse.examples."""
        window = scan_window(len(plan.features), self._catalog.feature_count(request.entity_type))
        answers = await self._store.as_of(_as_of_query(request, plan, rows, window), timeout)
        not_found = plan.not_found_examples
        return [
            codec.frame(codec.EXAMPLES_TAG, row.SerializeToString() + _cells(answer, not_found))
            for row, answer in zip(rows, answers, strict=True)
        ]


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


def methods(servicer: TrainingServicer) -> dict[str, grpc.RpcMethodHandler]:  # type: ignore[type-arg]
    """The training method of FeatureStoreService; responses are pre-encoded bytes."""
    return {"GetTrainingDataset": unary_stream(servicer.GetTrainingDataset, fs.GetTrainingDatasetRequest)}

"""The vocabulary of STREAMING definitions, which the registry checks and the streaming pipeline computes.

A streaming feature reads typed JSON events from one stream (`source_config.stream`
with its `fields`, an entity field and an event-time field) and computes one
windowed aggregation per entity: filter steps (over the declared fields only),
one aggregation step with a `window`, then expression steps over `value`. The
expressions obey the same allow-list as batch definitions (`expression_problem`).
The pipeline keeps one partial aggregate per entity per `TILE_SECONDS` of event
time and combines the tiles of a window (docs/streaming.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from server.core._definitions import AGGREGATION, Problem, Step, computation_problems
from server.core._functions import ExpressionUse
from server.core._validation import identifier_problem, preview

STREAM_AGGREGATIONS = ("count", "sum", "avg", "min", "max", "last", "count_distinct")
TILE_SECONDS = 60  # one partial aggregate per entity per minute of event time
WINDOW_MAX_SECONDS = 7 * 86_400
WATERMARK_DEFAULT_SECONDS = 300
WATERMARK_MAX_SECONDS = 86_400
STREAM_FORMATS = ("json",)
EVENT_FIELDS_MAX = 64
# The types an event field may have (JSON numbers, strings and booleans; timestamps as ISO 8601 or epoch seconds).
EVENT_FIELD_TYPES = ("FLOAT", "INT64", "STRING", "BOOL", "TIMESTAMP")
DEFAULT_EVENT_TIME = "event_time"
_STREAM = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")  # a Redis stream key or a Kafka topic name


class EventField(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...  # a ValueType name


class StreamStep(Step, Protocol):
    @property
    def window_seconds(self) -> float | None: ...


class StreamSource(Protocol):
    """What a streaming feature's `source_config` holds (the registry's model has it this way)."""

    @property
    def table(self) -> str: ...
    @property
    def filter(self) -> str: ...
    @property
    def entity_column(self) -> str: ...
    @property
    def timestamp_column(self) -> str: ...
    @property
    def stream(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def fields(self) -> Sequence[EventField]: ...
    @property
    def watermark_seconds(self) -> float | None: ...


def entity_field(source: StreamSource, entity_type: str) -> str:
    return source.entity_column or f"{entity_type}_id"


def time_field(source: StreamSource) -> str:
    return source.timestamp_column or DEFAULT_EVENT_TIME


def _fields_problems(source: StreamSource, entity_type: str) -> list[Problem]:
    path = "source_config.fields"
    fields = list(source.fields)
    if not fields:
        return [(path, "is required for a STREAMING feature: the typed fields of its events")]
    if len(fields) > EVENT_FIELDS_MAX:
        return [(path, f"at most {EVENT_FIELDS_MAX} fields, got {len(fields)}")]
    out: list[Problem] = []
    for i, f in enumerate(fields):
        problem = identifier_problem(f.name)
        if problem:
            out.append((f"{path}[{i}].name", problem))
        if f.type not in EVENT_FIELD_TYPES:
            out.append((f"{path}[{i}].type", f"must be one of {', '.join(EVENT_FIELD_TYPES)}, got {f.type}"))
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        out.append((path, "must not repeat a field"))
    types = {f.name: f.type for f in fields}
    entity, ts = entity_field(source, entity_type), time_field(source)
    if types.get(entity) not in ("STRING", "INT64"):
        out.append(("source_config.entity_column", f"{preview(entity)} must be a STRING or INT64 field of the events"))
    if types.get(ts) != "TIMESTAMP":
        out.append(("source_config.timestamp_column", f"{preview(ts)} must be a TIMESTAMP field of the events"))
    return out


def _window_problem(seconds: float | None) -> str | None:
    if seconds is None:
        return 'is required for a STREAMING feature\'s aggregation (such as "3600s")'
    if seconds <= 0 or seconds > WINDOW_MAX_SECONDS or seconds % TILE_SECONDS:
        return f"must be a whole number of minutes between 1 minute and {WINDOW_MAX_SECONDS // 86_400} days"
    return None


def streaming_problems(entity_type: str, source: StreamSource, steps: Sequence[StreamStep]) -> list[Problem]:
    """What is wrong with a STREAMING feature's source and computation (empty when it is valid)."""
    out: list[Problem] = []
    if not source.stream:
        out.append(("source_config.stream", "is required for a STREAMING feature"))
    elif not _STREAM.fullmatch(source.stream):
        out.append(("source_config.stream", f"must be a stream key or topic name, got {preview(source.stream)}"))
    if source.table:
        out.append(("source_config.table", "is not used by a STREAMING feature: leave it empty (set stream)"))
    if source.format and source.format not in STREAM_FORMATS:
        formats = ", ".join(STREAM_FORMATS)
        out.append(("source_config.format", f"must be one of {formats}, got {preview(source.format)}"))
    w = source.watermark_seconds
    if w is not None and not 0 <= w <= WATERMARK_MAX_SECONDS:
        out.append(("source_config.watermark", f"must be between 0 and {WATERMARK_MAX_SECONDS} seconds"))
    fields = _fields_problems(source, entity_type)
    out += fields
    names = frozenset(f.name for f in source.fields)
    use = ExpressionUse.over(*names) if names else ExpressionUse.over_source()
    out += computation_problems(source.filter, steps, use)
    kinds = [step.type for step in steps]
    if AGGREGATION not in kinds:
        out.append(("transformations", "a STREAMING feature needs one aggregation step (with a window)"))
    for i, step in enumerate(steps):
        if step.type == AGGREGATION:
            if step.function and step.function not in STREAM_AGGREGATIONS:
                out.append(
                    (
                        f"transformations[{i}].function",
                        f"{preview(step.function)} is not computed over a stream; "
                        f"expected one of {', '.join(STREAM_AGGREGATIONS)}",
                    )
                )
            problem = _window_problem(step.window_seconds)
            if problem:
                out.append((f"transformations[{i}].window", problem))
        elif step.window_seconds is not None:
            out.append((f"transformations[{i}].window", "is used by aggregation steps only: leave it unset"))
    return out


def batch_stream_problems(source: StreamSource, steps: Sequence[StreamStep]) -> list[Problem]:
    """Stream-only fields set on a feature that is not STREAMING."""
    out: list[Problem] = []
    for name, value in (("stream", source.stream), ("format", source.format)):
        if value:
            out.append((f"source_config.{name}", "is used by STREAMING features only"))
    if source.fields:
        out.append(("source_config.fields", "is used by STREAMING features only"))
    if source.watermark_seconds is not None:
        out.append(("source_config.watermark", "is used by STREAMING features only"))
    for i, step in enumerate(steps):
        if step.window_seconds is not None:
            out.append((f"transformations[{i}].window", "is used by STREAMING features only"))
    return out

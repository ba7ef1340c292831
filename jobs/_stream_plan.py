"""From STREAMING definitions to the streaming queries that compute them (no Spark here).

Features of one entity type reading one stream share one query: one read of
the stream, one tile aggregation, one write per micro-batch. They must declare
the stream the same way (fields, entity, event time, watermark); a feature that
disagrees with the query's first one is reported and left out.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from featurestore.registry.v1 import feature_pb2 as pb
from jobs._events import EventSchema
from jobs._plan import VALUE_TYPES, PlanError
from server import core
from server.core import VALUE_KINDS


@dataclass(frozen=True, slots=True)
class StreamFeature:
    """One streaming feature as the pipeline computes it."""

    name: str
    value_type: str
    filters: tuple[str, ...]  # Spark SQL predicates over the event fields
    function: str
    column: str  # "" = none (count of events)
    window_seconds: int
    post: tuple[str, ...]  # Spark SQL expressions over `value`
    revision: int = 0

    @property
    def value_kind(self) -> str:
        return VALUE_KINDS[self.value_type]

    @property
    def window_tiles(self) -> int:
        return self.window_seconds // core.TILE_SECONDS


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """The features one streaming query computes."""

    entity_type: str
    stream: str
    schema: EventSchema
    watermark_seconds: int
    features: tuple[StreamFeature, ...]

    @property
    def query_name(self) -> str:
        """A stable name for the query and its checkpoint folder (names are identifiers)."""
        digest = hashlib.sha256(self.stream.encode()).hexdigest()[:8]
        safe = "".join(c if c.isalnum() or c == "_" else "_" for c in self.stream)
        return f"{self.entity_type}__{safe}__{digest}"

    @property
    def source_key(self) -> tuple[object, ...]:
        return (self.entity_type, self.stream, self.schema, self.watermark_seconds)

    @property
    def horizon_tiles(self) -> int:
        return max(f.window_tiles for f in self.features)


def _duration_seconds(msg: object, name: str) -> float | None:
    return getattr(msg, name).ToTimedelta().total_seconds() if msg.HasField(name) else None  # type: ignore[attr-defined]


class _Source:
    """A pb.SourceConfig seen through core.StreamSource."""

    def __init__(self, sc: pb.SourceConfig) -> None:
        self.table, self.filter, self.stream, self.format = sc.table, sc.filter, sc.stream, sc.format
        self.entity_column, self.timestamp_column = sc.entity_column, sc.timestamp_column
        self.fields = [_Field(f.name, pb.ValueType.Name(f.type)) for f in sc.fields]
        self.watermark_seconds = _duration_seconds(sc, "watermark")


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    type: str


class _Step:
    def __init__(self, t: pb.Transformation) -> None:
        self.type, self.function, self.column, self.expression = t.type, t.function, t.column, t.expression
        self.window_seconds = _duration_seconds(t, "window")


def plan_of(feature: pb.Feature) -> StreamPlan:
    """The one-feature plan of a STREAMING definition; PlanError when the pipeline cannot compute it."""
    source, steps = _Source(feature.source_config), [_Step(t) for t in feature.transformations]
    problems = core.streaming_problems(feature.entity_type, source, steps)
    if problems:  # stored before the checks existed, or written around the registry
        raise PlanError("; ".join(f"{path}: {problem}" for path, problem in problems[:3]))
    value_type = pb.ValueType.Name(feature.value_type)
    if value_type not in VALUE_TYPES:
        raise PlanError(f"value type {value_type} is not computed by the pipelines ({', '.join(VALUE_TYPES)})")
    kinds = [step.type for step in steps]
    at = kinds.index(core.AGGREGATION)
    aggregation = steps[at]
    spec = StreamFeature(
        name=feature.name,
        value_type=value_type,
        filters=((source.filter,) if source.filter else ()) + tuple(s.expression for s in steps[:at]),
        function=aggregation.function,
        column=aggregation.column,
        window_seconds=int(aggregation.window_seconds or 0),
        post=tuple(s.expression for s in steps[at + 1 :]),
        revision=feature.revision,
    )
    schema = EventSchema(
        fields=tuple((f.name, f.type) for f in source.fields),
        entity=core.entity_field(source, feature.entity_type),
        time=core.time_field(source),
    )
    watermark = source.watermark_seconds
    return StreamPlan(
        entity_type=feature.entity_type,
        stream=feature.source_config.stream,
        schema=schema,
        watermark_seconds=int(core.WATERMARK_DEFAULT_SECONDS if watermark is None else watermark),
        features=(spec,),
    )


def plan_streams(features: Iterable[pb.Feature]) -> tuple[list[StreamPlan], dict[str, str]]:
    """The queries to run, and the features that cannot be computed (name -> why)."""
    failed: dict[str, str] = {}
    plans: dict[tuple[str, str], StreamPlan] = {}
    for feature in features:
        try:
            one = plan_of(feature)
        except PlanError as err:
            failed[feature.name] = str(err)
            continue
        key = (one.entity_type, one.stream)
        known = plans.get(key)
        if known is None:
            plans[key] = one
        elif known.source_key != one.source_key:
            failed[feature.name] = (
                f"declares stream {one.stream} differently (fields, entity, event time or watermark) "
                f"from {known.features[0].name}, which its query reads it as"
            )
        else:
            plans[key] = dataclasses.replace(known, features=known.features + one.features)
    return list(plans.values()), failed


def select_streaming(features: Sequence[pb.Feature], entity_types: Sequence[str]) -> list[pb.Feature]:
    return [f for f in features if f.source == pb.STREAMING and f.entity_type in entity_types]

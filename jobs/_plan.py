"""From registry definitions to what the batch pipeline computes (no Spark here).

A feature is computable when it has a source table and exactly one aggregation
step; "filter" steps before it narrow the rows, "expression" steps after it
rewrite the aggregate (named `value`). Features reading the same table with
the same entity and time columns share one scan and one groupBy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from featurestore.registry.v1 import feature_pb2 as pb
from server import core
from server.core import VALUE_KINDS  # the Value member each value type is stored in

# The Spark SQL type each servable value type is cast to.
VALUE_TYPES = {"FLOAT": "double", "INT64": "bigint", "STRING": "string", "BOOL": "boolean", "TIMESTAMP": "timestamp"}


class PlanError(ValueError):
    """A definition the pipeline cannot compute; the message says why."""


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One feature as the pipeline computes it."""

    name: str
    entity_type: str
    value_type: str
    table: str
    entity_column: str
    timestamp_column: str  # "" = the source's first timestamp or date column
    filters: tuple[str, ...]  # Spark SQL predicates: the source filter, then filter steps
    function: str
    column: str  # "" = none (count of rows)
    post: tuple[str, ...]  # Spark SQL expressions over `value`, applied in order

    @property
    def source_key(self) -> tuple[str, str, str, str]:
        return (self.entity_type, self.table, self.entity_column, self.timestamp_column)

    @property
    def value_kind(self) -> str:
        return VALUE_KINDS[self.value_type]


@dataclass(frozen=True, slots=True)
class SourcePlan:
    """The features of one entity type computed from one scan of one table."""

    entity_type: str
    table: str
    entity_column: str
    timestamp_column: str
    features: tuple[FeatureSpec, ...]


def _steps(feature: pb.Feature) -> tuple[tuple[str, ...], pb.Transformation, tuple[str, ...]]:
    """(filters, the aggregation, expressions) of a definition that passes the registry's checks."""
    problems = core.computation_problems(feature.source_config.filter, feature.transformations)
    if problems:  # stored before the checks existed, or written around the registry
        raise PlanError("; ".join(f"{path}: {problem}" for path, problem in problems[:3]))
    steps = list(feature.transformations)
    kinds = [step.type for step in steps]
    if core.AGGREGATION not in kinds:
        raise PlanError("no aggregation step: the batch pipeline computes one aggregate per entity")
    at = kinds.index(core.AGGREGATION)
    filters = tuple(step.expression for step in steps[:at])
    return filters, steps[at], tuple(step.expression for step in steps[at + 1 :])


def spec_of(feature: pb.Feature) -> FeatureSpec:
    """The computation of a registered feature; PlanError when it has none the pipeline knows."""
    value_type = pb.ValueType.Name(feature.value_type)
    if value_type not in VALUE_TYPES:
        raise PlanError(f"value type {value_type} is not computed by the batch pipeline ({', '.join(VALUE_TYPES)})")
    source = feature.source_config
    if not source.table:
        raise PlanError("source_config.table is not set")
    filters, aggregation, post = _steps(feature)
    return FeatureSpec(
        name=feature.name,
        entity_type=feature.entity_type,
        value_type=value_type,
        table=source.table,
        entity_column=source.entity_column or f"{feature.entity_type}_id",
        timestamp_column=source.timestamp_column,
        filters=((source.filter,) if source.filter else ()) + filters,
        function=aggregation.function,
        column=aggregation.column,
        post=post,
    )


def plan(features: Iterable[pb.Feature]) -> tuple[list[SourcePlan], dict[str, str]]:
    """The scans to run, and the features that cannot be computed (name -> why)."""
    failed: dict[str, str] = {}
    by_source: dict[tuple[str, str, str, str], list[FeatureSpec]] = {}
    for feature in features:
        try:
            spec = spec_of(feature)
        except PlanError as err:
            failed[feature.name] = str(err)
            continue
        by_source.setdefault(spec.source_key, []).append(spec)
    sources = [SourcePlan(*key, features=tuple(specs)) for key, specs in by_source.items()]
    return sources, failed


def select(features: Sequence[pb.Feature], entity_types: Sequence[str], names: Sequence[str]) -> list[pb.Feature]:
    """The batch features of `entity_types`, narrowed to `names` when given; PlanError for an unknown name."""
    batch = [f for f in features if f.source == pb.BATCH and f.entity_type in entity_types]
    if not names:
        return batch
    known = {f.name for f in batch}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise PlanError(f"not batch features of {', '.join(entity_types)}: {', '.join(unknown)}")
    return [f for f in batch if f.name in names]

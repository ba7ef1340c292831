"""The definition vocabulary that the registry checks and the pipelines compute: one source for both.

A computed feature is its source rows narrowed by filters (`source_config.filter`
and `filter` steps), one `aggregation` step per entity, then `expression` steps
that rewrite the aggregate (named `value`). Every expression is checked by
`expression_problem`: definitions are data, never code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from server.core._functions import ExpressionUse
from server.core._validation import preview

FILTER, AGGREGATION, EXPRESSION = "filter", "aggregation", "expression"
TRANSFORMATION_TYPES = (FILTER, AGGREGATION, EXPRESSION)
TRANSFORMATIONS_MAX = 16

# Aggregation functions (their meanings: the README's "Batch Feature Pipeline", docs/definitions.md).
AGGREGATIONS = (
    "sum",
    "avg",
    "mean",
    "count",
    "count_distinct",
    "min",
    "max",
    "stddev",
    "first",
    "last",
    "days_since_last",
    "days_since_first",
)


def expression_problem(text: str, use: ExpressionUse) -> str | None:
    """Why `text` is not an allowed Spark SQL expression for `use`, or None when it is."""
    from server.core import _expressions  # the parser loads on first use

    return _expressions.problem(text, use)


_OVER_SOURCE = ExpressionUse.over_source()
_OVER_VALUE = ExpressionUse.over("value")
_TYPES = ", ".join(TRANSFORMATION_TYPES)
_AGGREGATIONS = ", ".join(AGGREGATIONS)

Problem = tuple[str, str]  # (field path under the feature, what is wrong)


class Step(Protocol):
    """A transformation step, as the registry's model and the protobuf message both have it."""

    @property
    def type(self) -> str: ...
    @property
    def function(self) -> str: ...
    @property
    def column(self) -> str: ...
    @property
    def expression(self) -> str: ...


def _aggregation_problems(path: str, step: Step, source: ExpressionUse) -> list[Problem]:
    out = []
    if step.function not in AGGREGATIONS:
        out.append(
            (
                f"{path}.function",
                f"unknown aggregation function {preview(step.function)}; expected one of {_AGGREGATIONS}",
            )
        )
    if step.column:
        problem = expression_problem(step.column, source)
        out += [(f"{path}.column", problem)] if problem else []
    elif step.function != "count":
        out.append((f"{path}.column", f"is required for {step.function or 'an aggregation'}"))
    if step.expression:
        out.append((f"{path}.expression", "is not used by an aggregation step: leave it empty"))
    return out


def _step_problems(path: str, step: Step, source: ExpressionUse) -> list[Problem]:
    """One step: a known type with the fields that type uses, and nothing else."""
    if not step.type:
        return [(f"{path}.type", f"is required: one of {_TYPES}")]
    if step.type not in TRANSFORMATION_TYPES:
        return [(f"{path}.type", f"unknown type {preview(step.type)}; expected one of {_TYPES}")]
    if step.type == AGGREGATION:
        return _aggregation_problems(path, step, source)
    use = source if step.type == FILTER else _OVER_VALUE
    problem = expression_problem(step.expression, use) if step.expression else "is required"
    out = [(f"{path}.expression", problem)] if problem else []
    for name, value in (("function", step.function), ("column", step.column)):
        if value:
            out.append((f"{path}.{name}", f"is not used by a {step.type} step: leave it empty"))
    return out


def _order_problem(steps: Sequence[Step]) -> str | None:
    """Filters, then at most one aggregation, then expressions (over its result, named `value`)."""
    kinds = [step.type for step in steps]
    aggregations = kinds.count(AGGREGATION)
    if aggregations > 1:
        return f"at most one aggregation step, got {aggregations}"
    at = kinds.index(AGGREGATION) if aggregations else len(kinds)
    if EXPRESSION in kinds[:at]:
        return "expression steps rewrite the aggregation's value: they come after the aggregation step"
    if FILTER in kinds[at:]:
        return "filter steps narrow the source rows: they come before the aggregation step"
    return None


def computation_problems(
    source_filter: str, steps: Sequence[Step], source: ExpressionUse = _OVER_SOURCE
) -> list[Problem]:
    """What is wrong with a feature's computation: its source filter and its transformation steps.

    `source`: what expressions over the source rows may refer to (a stream's declared fields).
    """
    out: list[Problem] = []
    if source_filter:
        problem = expression_problem(source_filter, source)
        out += [("source_config.filter", problem)] if problem else []
    if len(steps) > TRANSFORMATIONS_MAX:
        return [*out, ("transformations", f"at most {TRANSFORMATIONS_MAX} steps, got {len(steps)}")]
    for i, step in enumerate(steps):
        out += _step_problems(f"transformations[{i}]", step, source)
    order = _order_problem(steps)
    return out + ([("transformations", order)] if order else [])

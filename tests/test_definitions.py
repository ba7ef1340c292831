"""Definitions are data: the expression allow-list and the transformation vocabulary (no servers)."""

from __future__ import annotations

import pytest

from server import core
from server.registry._model import Feature, SourceConfig, Transformation
from server.registry._validate import DEFINITION_MAX_BYTES, feature_violations
from tests._hostile import HOSTILE

SOURCE = core.ExpressionUse.over_source()
VALUE = core.ExpressionUse.over("value")


@pytest.mark.parametrize("text", HOSTILE)
def test_a_hostile_expression_is_refused_naming_what_it_uses(text: str) -> None:
    problem = core.expression_problem(text, SOURCE)
    assert problem is not None, text
    assert HOSTILE[text] in problem.lower(), problem


@pytest.mark.parametrize("text", core.EXAMPLES)
def test_every_documented_function_and_operator_is_accepted(text: str) -> None:
    assert core.expression_problem(text, SOURCE) is None


@pytest.mark.parametrize(
    "text",
    [
        "purchase_date >= NOW() - INTERVAL '30 days'",
        "purchase_date >= current_date() - INTERVAL 7 DAYS AND upper(channel) LIKE 'WEB%'",
        "CASE WHEN purchase_amount > 100 THEN 'large' ELSE 'small' END",
        "coalesce(discount, 0) * purchase_amount",
        "datediff(current_date(), CAST(signup_date AS DATE)) < 30",
        "trim(BOTH FROM name) = 'x'",
    ],
)
def test_what_a_data_scientist_writes_is_accepted(text: str) -> None:
    assert core.expression_problem(text, SOURCE) is None


def test_an_expression_step_may_refer_only_to_the_aggregate() -> None:
    assert core.expression_problem("round(value / 30, 2)", VALUE) is None
    problem = core.expression_problem("value + purchase_amount", VALUE)
    assert problem is not None
    assert "may refer only to value" in problem


def feature(*steps: Transformation, source_filter: str = "", **kw: str) -> Feature:
    return Feature(
        name="f",
        entity_type="customer",
        value_type="FLOAT",
        source="BATCH",
        source_config=SourceConfig(table="customer_purchases", filter=source_filter),
        transformations=steps,
        **kw,  # type: ignore[arg-type]
    )


def violations(f: Feature) -> dict[str, str]:
    return {v.field: v.description for v in feature_violations(f)}


AGG = Transformation(type="aggregation", function="sum", column="purchase_amount")


def test_the_seeds_definition_is_valid() -> None:
    filter_ = "purchase_date >= NOW() - INTERVAL '30 days'"
    assert violations(feature(AGG, source_filter=filter_)) == {}


def test_misspelt_type_and_function_are_refused_at_registration() -> None:
    found = violations(feature(Transformation(type="agregation", function="sum", column="x")))
    assert "unknown type 'agregation'" in found["feature.transformations[0].type"]
    found = violations(feature(Transformation(type="aggregation", function="medain", column="x")))
    assert "unknown aggregation function 'medain'" in found["feature.transformations[0].function"]


def test_hostile_expressions_are_refused_in_every_field() -> None:
    evil = "reflect('java.lang.System', 'getProperty', 'user.dir')"
    found = violations(
        feature(
            Transformation(type="filter", expression=evil),
            Transformation(type="aggregation", function="max", column=evil),
            Transformation(type="expression", expression=evil),
            source_filter=evil,
        )
    )
    for path in (
        "source_config.filter",
        "transformations[0].expression",
        "transformations[1].column",
        "transformations[2].expression",
    ):
        assert "function reflect" in found[f"feature.{path}"], found


def test_steps_come_in_order_with_the_fields_they_use() -> None:
    post = Transformation(type="expression", expression="value * 2")
    found = violations(feature(post, AGG))
    assert "come after the aggregation" in found["feature.transformations"]
    found = violations(feature(AGG, AGG))
    assert "at most one aggregation" in found["feature.transformations"]
    found = violations(feature(Transformation(type="filter")))
    assert found["feature.transformations[0].expression"] == "is required"
    found = violations(feature(Transformation(type="aggregation", function="avg")))
    assert found["feature.transformations[0].column"] == "is required for avg"
    assert violations(feature(Transformation(type="aggregation", function="count"))) == {}


def test_a_definition_is_bounded() -> None:
    steps = [Transformation(type="filter", expression="a > 1")] * (core.TRANSFORMATIONS_MAX + 1)
    assert "at most 16 steps" in violations(feature(*steps))["feature.transformations"]
    big = [Transformation(type="filter", expression="a > '" + "x" * 4080 + "'")] * 15 + [AGG]
    tags = tuple(f"{i:02d}" + "t" * 62 for i in range(64))
    found = violations(feature(*big, description="d" * 4096, tags=tags))  # type: ignore[arg-type]
    assert list(found) == ["feature"]
    assert f"at most {DEFINITION_MAX_BYTES} bytes" in found["feature"]


def test_the_docs_list_exactly_the_allowed_functions() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "definitions.md").read_text()
    listed = text.split("## Allowed functions", 1)[1].split("\n## ", 1)[0]
    names = {name for line in listed.splitlines() if line.startswith("- **") for name in line.split("`")[1::2]}
    assert names == set(core.FUNCTIONS)

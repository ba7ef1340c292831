"""The pipeline's second check, on Spark's analyzed plan: complete for what is allowed, closed to the rest."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import FeatureSpec, transform_features
from jobs._guard import ALLOWED_EXPRESSIONS, analyzed_expressions, disallowed_expressions
from server import core

AS_OF = datetime(2024, 1, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def frame(spark: SparkSession) -> DataFrame:
    return spark.sql(f"SELECT 'c1' AS customer_id, {core.EXAMPLE_COLUMNS}")


def test_every_allowed_function_and_operator_passes_the_guard(frame: DataFrame) -> None:
    missing = {
        example: sorted(analyzed_expressions(frame.select(F.expr(example))) - ALLOWED_EXPRESSIONS)
        for example in core.EXAMPLES
    }
    assert {k: v for k, v in missing.items() if v} == {}


@pytest.mark.parametrize("function", core.AGGREGATIONS)
@pytest.mark.parametrize("value_type", ["FLOAT", "INT64", "STRING", "BOOL", "TIMESTAMP"])
def test_every_aggregation_passes_the_guard(frame: DataFrame, function: str, value_type: str) -> None:
    spec = FeatureSpec(
        name="f",
        entity_type="customer",
        value_type=value_type,
        table="t",
        entity_column="customer_id",
        timestamp_column="d",
        filters=("x > 1", "d >= now() - INTERVAL '30 days'"),
        function=function,
        column="x",
        post=("round(value * 2, 1)",) if value_type in ("FLOAT", "INT64") else (),
    )
    assert disallowed_expressions(transform_features(frame, "customer_id", "d", [spec], AS_OF)) == []


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ('reflect("java.lang.System", "getProperty", "user.dir")', "CallMethodViaReflection"),
        ("java_method('java.lang.System', 'getenv', 'HOME')", "CallMethodViaReflection"),
        ("assert_true(x > 0)", "AssertTrue"),
        ("raise_error('stop')", "RaiseError"),
        ("transform(a, v -> v + 1)", "LambdaFunction"),
        ("(SELECT max(1))", "ScalarSubquery"),
        ("x IN (SELECT 1)", "InSubquery"),
        ("rand()", "Rand"),
        ("uuid()", "Uuid"),
        ("current_user()", "CurrentUser"),
        ("input_file_name()", "InputFileName"),
    ],
)
def test_what_reaches_the_jvm_or_other_data_is_refused(frame: DataFrame, text: str, refused: str) -> None:
    assert refused in disallowed_expressions(frame.select(F.expr(text)))


def test_the_guard_sees_past_aggregates_and_into_filters(frame: DataFrame) -> None:
    aggregated = frame.groupBy("customer_id").agg(F.max("x").alias("value"))
    after: Any = aggregated.select(F.expr("value + length(reflect('java.lang.System', 'lineSeparator'))"))
    assert "CallMethodViaReflection" in disallowed_expressions(after)
    filtered = frame.where(F.expr("reflect('java.lang.System', 'lineSeparator') IS NOT NULL"))
    assert "CallMethodViaReflection" in disallowed_expressions(filtered)

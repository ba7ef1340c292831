"""The batch pipeline's pure parts: plans, clock pinning, and each transform on its actual output."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.testing import assertDataFrameEqual

from featurestore.registry.v1 import feature_pb2 as pb
from jobs import FeatureSpec, PlanError, RunConfig, plan, spec_of, transform_features, transform_window
from jobs._asof import pin_clock
from jobs._transform import describe_query, timestamp_column

ROOT = Path(__file__).resolve().parent.parent
AS_OF = datetime(2024, 3, 31, tzinfo=UTC)
DAY = timedelta(days=1)
SCHEMA = "customer_id string, amount double, item string, ts timestamp"


def purchases(spark: SparkSession) -> DataFrame:
    rows = [
        ("c1", 10.0, "a", AS_OF - 40 * DAY),
        ("c1", 20.0, "b", AS_OF - 10 * DAY),
        ("c1", 30.0, "b", AS_OF - 2.5 * DAY),
        ("c2", 5.0, "a", AS_OF - 35 * DAY),
        ("c2", None, "c", AS_OF - 31 * DAY),
        (None, 99.0, "z", AS_OF - DAY),  # no entity: ignored
    ]
    return spark.createDataFrame(rows, SCHEMA)


def spec(function: str, column: str = "amount", value_type: str = "FLOAT", **kw: Any) -> FeatureSpec:
    fields: dict[str, Any] = {
        "name": "f",
        "entity_type": "customer",
        "value_type": value_type,
        "table": "purchases",
        "entity_column": "customer_id",
        "timestamp_column": "ts",
        "filters": (),
        "function": function,
        "column": column,
        "post": (),
    }
    return FeatureSpec(**(fields | kw))


def features(spark: SparkSession, *specs: FeatureSpec) -> DataFrame:
    return transform_features(purchases(spark), "customer_id", "ts", specs, AS_OF)


def expect(spark: SparkSession, rows: list[tuple[Any, ...]], schema: str) -> DataFrame:
    return spark.createDataFrame(rows, f"entity_id string, {schema}, __rows bigint")


def test_window_keeps_only_the_lookback_before_as_of(spark: SparkSession) -> None:
    df = spark.createDataFrame(
        [("before", AS_OF - 30 * DAY - timedelta(microseconds=1)), ("first", AS_OF - 30 * DAY),
         ("last", AS_OF - timedelta(microseconds=1)), ("at", AS_OF), ("after", AS_OF + DAY)],
        "id string, ts timestamp",
    )  # fmt: skip
    out = transform_window(df, "ts", AS_OF, 30 * DAY)
    assertDataFrameEqual(
        out,
        spark.createDataFrame([("first", AS_OF - 30 * DAY), ("last", AS_OF - timedelta(microseconds=1))], df.schema),
    )


@pytest.mark.parametrize(
    ("function", "column", "value_type", "c1", "c2"),
    [
        ("sum", "amount", "FLOAT", 60.0, 5.0),
        ("avg", "amount", "FLOAT", 20.0, 5.0),
        ("mean", "amount * 2", "FLOAT", 40.0, 10.0),
        ("count", "amount", "INT64", 3, 1),
        ("count", "", "INT64", 3, 2),
        ("count_distinct", "item", "INT64", 2, 2),
        ("min", "amount", "FLOAT", 10.0, 5.0),
        ("max", "amount", "FLOAT", 30.0, 5.0),
        ("stddev", "amount", "FLOAT", 10.0, None),
        ("first", "item", "STRING", "a", "a"),
        ("last", "item", "STRING", "b", "c"),
        ("days_since_last", "ts", "INT64", 2, 31),
        ("days_since_first", "ts", "INT64", 40, 35),
        ("max", "amount > 15", "BOOL", True, False),
    ],
)
def test_each_aggregation(spark: SparkSession, function: str, column: str, value_type: str, c1: Any, c2: Any) -> None:
    spark_type = {"FLOAT": "double", "INT64": "bigint", "STRING": "string", "BOOL": "boolean"}[value_type]
    out = features(spark, spec(function, column, value_type))
    assertDataFrameEqual(out, expect(spark, [("c1", c1, 3), ("c2", c2, 2)], f"f {spark_type}"))


def test_filters_apply_per_feature_and_now_is_the_as_of_time(spark: SparkSession) -> None:
    recent = ("ts >= NOW() - INTERVAL '30 days'",)
    out = features(
        spark,
        spec("sum", filters=recent, name="total_30d"),
        spec("count", "", "INT64", filters=recent, name="n_30d"),
        spec("avg", filters=(*recent, "item = 'b'"), name="avg_b_30d"),
        spec("sum", name="total"),
    )
    want = [("c1", 50.0, 2, 25.0, 60.0, 3), ("c2", 0.0, 0, None, 5.0, 2)]
    assertDataFrameEqual(
        out,
        spark.createDataFrame(
            want, "entity_id string, total_30d double, n_30d bigint, avg_b_30d double, total double, __rows bigint"
        ),
    )


def test_post_expressions_rewrite_the_aggregate_in_order(spark: SparkSession) -> None:
    out = features(spark, spec("sum", post=("value / 30", "round(value, 1)")), spec("count", "", "INT64", name="n"))
    assertDataFrameEqual(
        out,
        spark.createDataFrame(
            [("c1", 2.0, 3, 3), ("c2", 0.2, 2, 2)], "entity_id string, f double, n bigint, __rows bigint"
        ),
    )


def test_the_value_is_cast_to_the_feature_type(spark: SparkSession) -> None:
    out = features(spark, spec("sum", value_type="INT64"), spec("max", "ts", "TIMESTAMP", name="latest"))
    want = [("c1", 60, AS_OF - 2.5 * DAY, 3), ("c2", 5, AS_OF - 31 * DAY, 2)]
    assertDataFrameEqual(
        out, spark.createDataFrame(want, "entity_id string, f bigint, latest timestamp, __rows bigint")
    )


def test_the_timestamp_column_defaults_to_the_first_time_column(spark: SparkSession) -> None:
    df = spark.createDataFrame([], "id string, amount double, day date, ts timestamp")
    assert timestamp_column(df, "") == "day"
    assert timestamp_column(df, "ts") == "ts"
    with pytest.raises(ValueError, match="no timestamp column"):
        timestamp_column(spark.createDataFrame([], "id string"), "")


@pytest.mark.parametrize(
    ("text", "pinned"),
    [
        (
            "purchase_date >= NOW() - INTERVAL '30 days'",
            "purchase_date >= TIMESTAMP'2024-03-31 00:00:00.000000' - INTERVAL '30 days'",
        ),
        (
            "d > current_date AND t < Current_Timestamp()",
            "d > DATE'2024-03-31' AND t < TIMESTAMP'2024-03-31 00:00:00.000000'",
        ),
        ("note = 'now()' AND `now` = \"current_date\"", "note = 'now()' AND `now` = \"current_date\""),
        ("note = 'it''s now()' OR x = now ( )", "note = 'it''s now()' OR x = TIMESTAMP'2024-03-31 00:00:00.000000'"),
        ("nowhere = 1 AND snow = 2", "nowhere = 1 AND snow = 2"),
    ],
)
def test_pin_clock_replaces_only_the_clock_functions(text: str, pinned: str) -> None:
    assert pin_clock(text, AS_OF) == pinned


def feature(**kw: Any) -> pb.Feature:
    base = pb.Feature(name="f", entity_type="customer", value_type=pb.FLOAT, source=pb.BATCH)
    base.source_config.table = "purchases"
    base.MergeFrom(pb.Feature(**kw))
    return base


def agg(function: str, column: str = "amount") -> pb.Transformation:
    return pb.Transformation(type="aggregation", function=function, column=column)


def test_spec_defaults_and_steps() -> None:
    f = feature(transformations=[pb.Transformation(type="filter", expression="amount > 0"), agg("sum"),
                                 pb.Transformation(type="expression", expression="value * 2")])  # fmt: skip
    f.source_config.filter = "ts >= now() - interval 7 days"
    got = spec_of(f)
    assert (got.entity_column, got.timestamp_column, got.function, got.column) == ("customer_id", "", "sum", "amount")
    assert got.filters == ("ts >= now() - interval 7 days", "amount > 0")
    assert got.post == ("value * 2",)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"transformations": [agg("median")]}, "unknown aggregation function 'median'"),
        ({"transformations": []}, "no aggregation step"),
        ({"transformations": [agg("sum"), agg("avg")]}, "at most one aggregation"),
        ({"transformations": [pb.Transformation(type="pivot")]}, "unknown type 'pivot'"),
        ({"transformations": [agg("sum"), pb.Transformation(type="filter", expression="x")]}, "come before"),
        ({"transformations": [agg("avg", "")]}, "column: is required for avg"),
        ({"value_type": pb.FLOAT_LIST, "transformations": [agg("sum")]}, "FLOAT_LIST is not computed"),
    ],
)
def test_definitions_the_pipeline_cannot_compute(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        spec_of(feature(**kw))


def test_plan_groups_features_by_source_and_reports_the_rest() -> None:
    a = feature(name="a", transformations=[agg("sum")])
    b = feature(name="b", transformations=[agg("count", "")])
    c = feature(name="c", transformations=[agg("sum")], source_config=pb.SourceConfig(table="other"))
    bad = feature(name="bad", transformations=[agg("median")])
    sources, failed = plan([a, b, c, bad])
    assert [(s.table, [f.name for f in s.features]) for s in sources] == [("purchases", ["a", "b"]), ("other", ["c"])]
    assert list(failed) == ["bad"]


def test_the_dry_run_query_shows_the_pinned_clock_and_the_window(spark: SparkSession) -> None:
    recent = spec("sum", filters=("ts >= NOW() - INTERVAL '30 days'",), name="total_30d")
    text = describe_query("purchases", "customer_id", "ts", [recent, spec("avg", post=("value * 2",))], AS_OF, 30 * DAY)
    assert text == (
        "SELECT CAST(`customer_id` AS STRING) AS entity_id,\n"
        "       CAST(coalesce(sum(CASE WHEN coalesce("
        "(ts >= TIMESTAMP'2024-03-31 00:00:00.000000' - INTERVAL '30 days'), "
        "false) THEN (amount) END), 0) AS double) AS `total_30d`,\n"
        "       CAST(avg((amount)) AS double) AS `f` -- then value := value * 2\n"
        "FROM purchases\n"
        "WHERE TIMESTAMP'2024-03-01 00:00:00.000000' <= `ts` AND `ts` < TIMESTAMP'2024-03-31 00:00:00.000000'"
        " AND `customer_id` IS NOT NULL\n"
        "GROUP BY `customer_id`"
    )


def test_the_dry_run_query_is_spark_sql_computing_the_same(spark: SparkSession) -> None:
    recent = ("ts >= NOW() - INTERVAL '30 days'",)
    specs = [
        spec("sum", filters=recent, name="total_30d"),
        spec("count", "", "INT64", filters=recent, name="n_30d"),
        spec("avg", "amount * 2", name="avg2"),
        spec("count_distinct", "item", "INT64", name="items"),
        spec("stddev", name="sd"),
        spec("first", "item", "STRING", name="first_item"),
        spec("last", "item", "STRING", filters=recent, name="last_item_30d"),
        spec("days_since_last", "ts", "INT64", name="recency"),
        spec("days_since_first", "ts", "INT64", name="tenure"),
        spec("max", "amount > 15", "BOOL", name="big"),
    ]
    purchases(spark).createOrReplaceTempView("purchases")
    text = describe_query("purchases", "customer_id", "ts", specs, AS_OF, 45 * DAY)
    computed = transform_features(
        transform_window(purchases(spark), "ts", AS_OF, 45 * DAY), "customer_id", "ts", specs, AS_OF
    )
    assertDataFrameEqual(spark.sql(text), computed.drop("__rows"))


def test_the_kept_running_pipeline_reports_a_failed_round_and_goes_on() -> None:
    from jobs._watch import watch

    calls: list[str] = []

    def features() -> list[pb.Feature]:
        calls.append("list")
        if len(calls) == 1:
            raise RuntimeError("registry exploded")
        raise KeyboardInterrupt  # ends the test's watch

    lines: list[str] = []

    def config(now: datetime) -> RunConfig:
        return RunConfig(now, DAY, "redis://unused", False, "postgresql://unused")

    with pytest.raises(KeyboardInterrupt):
        watch(None, features, config, every=3600, poll=0.01, progress=lines.append)  # type: ignore[arg-type]
    assert lines == ["round failed (RuntimeError: registry exploded); retrying"]
    assert calls == ["list", "list"]


def test_the_driver_and_its_ui_listen_on_loopback_locally_and_the_ui_is_off_elsewhere() -> None:
    from jobs._session import SessionConfig, _settings

    local = _settings(SessionConfig(master="local[2]"))
    assert (local["spark.driver.bindAddress"], local["spark.driver.host"]) == ("127.0.0.1", "127.0.0.1")
    remote = _settings(SessionConfig(master="k8s://https://kubernetes.default.svc"))
    assert remote["spark.ui.enabled"] == "false"
    assert (
        _settings(SessionConfig(master="spark://m:7077", conf={"spark.ui.enabled": "true"}))["spark.ui.enabled"]
        == "true"
    )

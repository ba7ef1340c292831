"""STREAMING definitions are data too: stream sources, windows and the same expression allow-list (no servers)."""

from __future__ import annotations

from datetime import timedelta

from server.registry._model import EventField, Feature, SourceConfig, Transformation
from server.registry._validate import feature_violations

FIELDS = (
    EventField("customer_id", "STRING"),
    EventField("purchase_amount", "FLOAT"),
    EventField("channel", "STRING"),
    EventField("event_time", "TIMESTAMP"),
)
HOUR = timedelta(hours=1)


def streaming(*steps: Transformation, **source: object) -> Feature:
    config = {"stream": "purchases", "fields": FIELDS} | source
    return Feature(
        name="customer_purchase_amount_sum_1h",
        entity_type="customer",
        value_type="FLOAT",
        source="STREAMING",
        source_config=SourceConfig(**config),  # type: ignore[arg-type]
        transformations=steps,
    )


def violations(f: Feature) -> dict[str, str]:
    return {v.field.removeprefix("feature."): v.description for v in feature_violations(f)}


SUM_1H = Transformation(type="aggregation", function="sum", column="purchase_amount", window=HOUR)


def test_the_demo_definitions_are_valid() -> None:
    assert violations(streaming(SUM_1H)) == {}
    count = Transformation(type="aggregation", function="count", window=HOUR)
    web = Transformation(type="filter", expression="lower(channel) = 'web'")
    rounded = Transformation(type="expression", expression="round(value, 2)")
    assert violations(streaming(web, count, rounded, watermark=timedelta(minutes=2))) == {}


def test_a_disallowed_function_is_refused_at_registration() -> None:
    evil = Transformation(type="filter", expression="reflect('java.lang.Runtime', 'getRuntime') IS NOT NULL")
    found = violations(streaming(evil, SUM_1H))
    assert "reflect" in found["transformations[0].expression"]
    column = Transformation(type="aggregation", function="sum", column="java_method('a', 'b')", window=HOUR)
    assert "java_method" in violations(streaming(column))["transformations[0].column"]


def test_expressions_may_refer_only_to_the_declared_fields() -> None:
    found = violations(streaming(Transformation(type="filter", expression="discount > 0"), SUM_1H))
    assert "may refer only to" in found["transformations[0].expression"]
    assert "discount" in found["transformations[0].expression"]


def test_a_window_is_required_whole_minutes_and_bounded() -> None:
    no_window = Transformation(type="aggregation", function="sum", column="purchase_amount")
    assert "is required" in violations(streaming(no_window))["transformations[0].window"]
    for bad in (timedelta(seconds=90), timedelta(days=8), timedelta(0)):
        step = Transformation(type="aggregation", function="sum", column="purchase_amount", window=bad)
        assert "whole number of minutes" in violations(streaming(step))["transformations[0].window"]


def test_only_the_streamable_aggregations_are_accepted() -> None:
    step = Transformation(type="aggregation", function="stddev", column="purchase_amount", window=HOUR)
    assert "not computed over a stream" in violations(streaming(step))["transformations[0].function"]


def test_the_source_needs_a_stream_typed_fields_an_entity_and_an_event_time() -> None:
    found = violations(streaming(SUM_1H, stream="", fields=(EventField("amount", "FLOAT"),)))
    assert set(found) >= {"source_config.stream", "source_config.entity_column", "source_config.timestamp_column"}
    found = violations(streaming(SUM_1H, stream="bad key!", table="t", format="avro"))
    assert set(found) >= {"source_config.stream", "source_config.table", "source_config.format"}
    found = violations(streaming(SUM_1H, fields=(*FIELDS, EventField("x", "EMBEDDING"), EventField("x", "FLOAT"))))
    assert "source_config.fields[4].type" in found
    assert found["source_config.fields"] == "must not repeat a field"
    assert "source_config.watermark" in violations(streaming(SUM_1H, watermark=timedelta(days=2)))


def test_stream_settings_on_a_batch_feature_are_refused() -> None:
    batch = Feature(
        name="f",
        entity_type="customer",
        value_type="FLOAT",
        source="BATCH",
        source_config=SourceConfig(table="customer_purchases", stream="purchases"),
        transformations=(SUM_1H,),
    )
    found = violations(batch)
    assert set(found) == {"source_config.stream", "transformations[0].window"}

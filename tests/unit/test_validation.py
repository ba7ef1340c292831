"""Validators: server.core's shared checks and the registry's definition rules (computations: test_definitions)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from server import core
from server.core.errors import MAX_VIOLATIONS, FieldViolation, invalid_argument
from server.registry import Feature, FeatureGroup
from server.registry._validate import GROUP_FEATURES_MAX, TAGS_MAX, feature_violations, group_violations

# -- server.core ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "clicks_7d", "x" * core.NAME_MAX, "a1_b2"])
def test_lowercase_identifiers_are_names(name: str) -> None:
    assert core.identifier_problem(name) is None


@pytest.mark.parametrize(
    ("name", "words"),
    [("", "is required"), ("Clicks", "lowercase identifier"), ("1st", "lowercase identifier"),
     ("a-b", "lowercase identifier"), ("a:b", "lowercase identifier"), ("ä", "lowercase identifier"),
     ("x" * (core.NAME_MAX + 1), f"at most {core.NAME_MAX} characters")],
)  # fmt: skip
def test_other_names_are_refused_saying_why(name: str, words: str) -> None:
    problem = core.identifier_problem(name)
    assert problem is not None
    assert words in problem


def test_an_optional_name_may_be_empty() -> None:
    assert core.identifier_problem("", required=False) is None


def test_a_long_value_is_previewed_cut() -> None:
    assert core.preview("short") == "'short'"
    assert core.preview("y" * 100) == repr("y" * 40 + "...")


@pytest.mark.parametrize("table", ["t", "schema.t", "catalog.schema.t", "Mixed_Case.T1"])
def test_table_names_of_one_to_three_parts(table: str) -> None:
    assert core.table_problem(table) is None


@pytest.mark.parametrize("table", ["", "a.b.c.d", "t; DROP TABLE x", "a..b", "`t`", "t.", "1t"])
def test_anything_else_is_not_a_table(table: str) -> None:
    assert core.table_problem(table) is not None


def test_entity_types_are_identifiers_of_at_most_64_characters() -> None:
    assert core.entity_type_problem("customer") == []
    assert [v.field for v in core.entity_type_problem("Customer")] == ["entity_type"]
    assert core.entity_type_problem("c" * 65)[0].description == "must be at most 64 characters, got 65"


@pytest.mark.parametrize(
    ("entity_id", "problem"),
    [("", "is required"), ("é" * 129, "must be at most 256 bytes"), ("a\x00b", "must not contain NUL characters")],
)
def test_entity_ids_are_one_to_256_bytes_without_nul(entity_id: str, problem: str) -> None:
    assert core.entity_id_problem("rows[3].entity_id", entity_id) == [FieldViolation("rows[3].entity_id", problem)]


@pytest.mark.parametrize("entity_id", ["c1", "e" * 256, "ü" * 128, "with spaces and : colons", "🙂"])
def test_any_other_text_is_an_entity_id(entity_id: str) -> None:
    assert core.entity_id_problem("entity_id", entity_id) == []


_IDS = ["c1", "e" * 256, "ü" * 128, "🙂" * 64, "", "é" * 129, "🙂" * 65, "a\x00b", "e" * 257]


@given(st.lists(st.one_of(st.sampled_from(_IDS), st.text(max_size=70)), max_size=8))
def test_a_batch_of_ids_is_fine_exactly_when_each_is(entity_ids: list[str]) -> None:
    # entity_ids_fine is the fast check of a batch read's ids: it must agree with entity_id_problem.
    assert core.entity_ids_fine(entity_ids) == all(not core.entity_id_problem("e", e) for e in entity_ids)


@pytest.mark.parametrize(
    ("seconds", "nanos", "valid"),
    [(0, 0, True), (core.TIMESTAMP_MIN_SECONDS, 0, True), (core.TIMESTAMP_MAX_SECONDS, 999_999_999, True),
     (core.TIMESTAMP_MIN_SECONDS - 1, 0, False), (core.TIMESTAMP_MAX_SECONDS + 1, 0, False), (0, -1, False),
     (0, 1_000_000_000, False)],
)  # fmt: skip
def test_timestamps_must_be_in_protobufs_range(seconds: int, nanos: int, valid: bool) -> None:
    problems = core.timestamp_problem("event_time", Timestamp(seconds=seconds, nanos=nanos))
    assert (problems == []) is valid
    assert all(v.field == "event_time" for v in problems)


def test_invalid_argument_keeps_its_message_and_details_small() -> None:
    many = [FieldViolation(f"rows[{i}]", "bad") for i in range(100)]
    error = invalid_argument(many)
    assert len(error.violations) == MAX_VIOLATIONS
    assert error.message == "invalid request: rows[0]: bad; rows[1]: bad; rows[2]: bad (and 97 more)"


# -- the registry's definitions ------------------------------------------------------------


def feature(**kw: object) -> Feature:
    fields: dict[str, object] = {"name": "clicks", "entity_type": "customer", "value_type": "INT64"} | kw
    return Feature(**fields)  # type: ignore[arg-type]


def fields_of(violations: list[FieldViolation]) -> dict[str, str]:
    return {v.field: v.description for v in violations}


def test_a_minimal_feature_is_valid_and_unspecified_enums_are_accepted() -> None:
    assert feature_violations(feature()) == []
    assert feature_violations(feature(source="BATCH", category="DERIVED", frequency="DAILY")) == []


def test_every_problem_of_a_feature_is_reported_at_its_path() -> None:
    bad = feature(
        name="Clicks",
        entity_type="",
        value_type="VALUE_TYPE_UNSPECIFIED",
        source="SOMETIMES",
        description="bell\x07",
        owner="o" * 257,
        max_age=timedelta(0),
    )
    found = fields_of(feature_violations(bad))
    assert set(found) == {
        "feature.name",
        "feature.entity_type",
        "feature.value_type",
        "feature.source",
        "feature.description",
        "feature.owner",
        "feature.max_age",
    }
    assert found["feature.value_type"] == "is required"
    assert found["feature.source"].startswith("unknown value SOMETIMES; expected one of ")
    assert found["feature.description"] == "must not contain control characters"
    assert found["feature.max_age"] == "must be positive"


def test_an_unknown_enum_number_is_refused() -> None:
    assert "feature.value_type" in fields_of(feature_violations(feature(value_type="99")))


def test_the_prefix_names_where_the_feature_is_in_the_request() -> None:
    assert [v.field for v in feature_violations(feature(name=""), prefix="update.feature")] == ["update.feature.name"]


def test_tags_are_non_empty_short_and_distinct() -> None:
    found = fields_of(feature_violations(feature(tags=("ok", " ", "t" * 65, "ok"))))
    assert found == {
        "feature.tags[1]": "must not be empty",
        "feature.tags[2]": "must be at most 64 characters, got 65",
        "feature.tags": "must not repeat a tag",
    }
    too_many = tuple(f"t{i}" for i in range(TAGS_MAX + 1))
    assert fields_of(feature_violations(feature(tags=too_many)))["feature.tags"].startswith(f"at most {TAGS_MAX} tags")


def test_a_feature_of_every_value_type_is_valid() -> None:
    for value_type in core.VALUE_KINDS:
        assert feature_violations(feature(value_type=value_type)) == [], value_type


def group(*names: str, **kw: object) -> FeatureGroup:
    fields: dict[str, object] = {"name": "g", "entity_type": "customer", "feature_names": names} | kw
    return FeatureGroup(**fields)  # type: ignore[arg-type]


def test_a_group_names_distinct_valid_features() -> None:
    assert group_violations(group("a", "b")) == []
    assert fields_of(group_violations(group())) == {"feature_group.feature_names": "must name at least one feature"}
    assert fields_of(group_violations(group("a", "Bad", "a"))) == {
        "feature_group.feature_names[1]": "must be a lowercase identifier ([a-z][a-z0-9_]*), got 'Bad'",
        "feature_group.feature_names": "must not repeat a feature",
    }


def test_a_group_of_too_many_features_is_refused_without_checking_each() -> None:
    names = tuple(f"f{i}" for i in range(GROUP_FEATURES_MAX + 1))
    found = fields_of(group_violations(group(*names)))
    assert found == {"feature_group.feature_names": f"at most {GROUP_FEATURES_MAX} features"}

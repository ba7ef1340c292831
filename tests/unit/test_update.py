"""AIP-134 update masks (server/_update.py): what is applied, what is refused."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2

from featurestore.registry.v1 import feature_pb2 as pb
from server._update import apply_mask
from server.core.errors import ServiceError

UPDATABLE = frozenset({"description", "owner", "tags", "source_config", "max_age"})
IMMUTABLE = frozenset({"entity_type", "value_type"})


def current() -> pb.Feature:
    return pb.Feature(
        name="clicks",
        entity_type="customer",
        value_type=pb.INT64,
        description="old",
        owner="team-a",
        tags=["a", "b"],
        source_config=pb.SourceConfig(table="events", filter="x > 1"),
    )


def apply(patch: pb.Feature, *paths: str) -> pb.Feature:
    return apply_mask(current(), patch, field_mask_pb2.FieldMask(paths=paths), UPDATABLE, IMMUTABLE, "feature")


def violations(error: ServiceError) -> dict[str, str]:
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    return {v.field: v.description for v in error.violations}


def test_only_the_masked_fields_change() -> None:
    merged = apply(pb.Feature(description="new", owner="team-b"), "description")
    assert (merged.description, merged.owner) == ("new", "team-a")
    assert list(merged.tags) == ["a", "b"]


def test_without_a_mask_the_fields_set_in_the_patch_change() -> None:
    merged = apply(pb.Feature(owner="team-b", tags=["c"]))
    assert (merged.description, merged.owner, list(merged.tags)) == ("old", "team-b", ["c"])
    assert merged.source_config.table == "events"


def test_a_masked_field_left_empty_is_cleared() -> None:
    merged = apply(pb.Feature(), "description", "tags")
    assert (merged.description, list(merged.tags)) == ("", [])


def test_star_replaces_every_updatable_field() -> None:
    merged = apply(pb.Feature(entity_type="customer", value_type=pb.INT64, description="only this"), "*")
    assert merged.description == "only this"
    assert (merged.owner, list(merged.tags), merged.HasField("source_config")) == ("", [], False)
    assert merged.name == "clicks"  # not updatable: never touched


def test_messages_and_repeated_fields_are_replaced_not_merged() -> None:
    merged = apply(pb.Feature(source_config=pb.SourceConfig(table="other"), tags=["z"]), "source_config", "tags")
    assert (merged.source_config.table, merged.source_config.filter) == ("other", "")
    assert list(merged.tags) == ["z"]


def test_a_sub_field_path_changes_only_that_sub_field() -> None:
    merged = apply(pb.Feature(source_config=pb.SourceConfig(filter="y < 2")), "source_config.filter")
    assert (merged.source_config.table, merged.source_config.filter) == ("events", "y < 2")


@pytest.mark.parametrize("path", ["name", "revision", "no_such_field", "source_config.nope"])
def test_a_path_that_is_not_updatable_is_refused(path: str) -> None:
    with pytest.raises(ServiceError) as info:
        apply(pb.Feature(), path)
    problem = violations(info.value)["update_mask"]
    assert "cannot update" in problem
    assert "updatable: description, max_age, owner, source_config, tags" in problem


def test_immutable_fields_may_be_sent_unchanged_but_not_changed() -> None:
    same = apply(pb.Feature(entity_type="customer", value_type=pb.INT64, owner="x"))
    assert same.owner == "x"
    with pytest.raises(ServiceError) as info:
        apply(pb.Feature(entity_type="product", value_type=pb.STRING))
    assert violations(info.value) == {
        "feature.entity_type": "cannot be changed after creation",
        "feature.value_type": "cannot be changed after creation",
    }


def test_the_current_message_is_not_modified() -> None:
    before = current()
    apply_mask(before, pb.Feature(description="new"), field_mask_pb2.FieldMask(), UPDATABLE, IMMUTABLE, "feature")
    assert before == current()

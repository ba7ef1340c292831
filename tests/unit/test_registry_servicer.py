"""RegistryServicer over a fake RegistryStore: validation, masks, etags, paging, after_write."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from server import _paging
from server.core import acting_as
from server.registry import RegistryServicer
from tests.unit._fakes import Aborted, FakeRegistry, unary


class Registry:
    """A servicer, its fake store, and how often it reported a write."""

    def __init__(self) -> None:
        self.store = FakeRegistry()
        self.after_writes = 0

        async def after_write() -> None:
            self.after_writes += 1

        self.servicer = RegistryServicer(self.store, after_write)

    def create(self, name: str = "clicks", **kw: object) -> pb.Feature:
        fields: dict[str, object] = {"name": name, "entity_type": "customer", "value_type": pb.INT64} | kw
        request = rs.CreateFeatureRequest(feature=pb.Feature(**fields))  # type: ignore[arg-type]
        return unary(self.servicer.CreateFeature, request)

    def update(self, feature: pb.Feature, *paths: str) -> pb.Feature:
        mask = field_mask_pb2.FieldMask(paths=paths)
        return unary(self.servicer.UpdateFeature, rs.UpdateFeatureRequest(feature=feature, update_mask=mask))


@pytest.fixture
def registry() -> Registry:
    return Registry()


def test_a_created_feature_carries_its_server_fields(registry: Registry) -> None:
    created = registry.create(description="d")
    assert (created.name, created.description, created.revision) == ("clicks", "d", 1)
    assert created.etag
    assert created.HasField("create_time")
    assert registry.after_writes == 1
    assert unary(registry.servicer.GetFeature, rs.GetFeatureRequest(name="clicks")) == created


def test_an_invalid_definition_is_refused_before_the_store(registry: Registry) -> None:
    with pytest.raises(Aborted) as info:
        registry.create(name="Not A Name", value_type=pb.VALUE_TYPE_UNSPECIFIED)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(info.value.field_violations) == {"feature.name", "feature.value_type"}
    assert (registry.store.writes, registry.after_writes) == (0, 0)


def test_store_errors_become_statuses_with_reasons(registry: Registry) -> None:
    registry.create()
    with pytest.raises(Aborted) as info:
        registry.create()
    assert (info.value.code, info.value.reason) == (grpc.StatusCode.ALREADY_EXISTS, "FEATURE_ALREADY_EXISTS")
    with pytest.raises(Aborted) as info:
        unary(registry.servicer.GetFeature, rs.GetFeatureRequest(name="missing"))
    assert (info.value.code, info.value.reason) == (grpc.StatusCode.NOT_FOUND, "FEATURE_NOT_FOUND")


def test_an_update_changes_the_masked_fields_and_the_revision(registry: Registry) -> None:
    created = registry.create(description="old", owner="team-a")
    updated = registry.update(pb.Feature(name="clicks", description="new", owner="ignored"), "description")
    assert (updated.description, updated.owner, updated.revision) == ("new", "team-a", 2)
    assert updated.etag != created.etag
    assert updated.create_time == created.create_time


def test_an_update_without_a_mask_changes_the_fields_set(registry: Registry) -> None:
    registry.create(description="old", owner="team-a")
    updated = registry.update(pb.Feature(name="clicks", owner="team-b"))
    assert (updated.description, updated.owner) == ("old", "team-b")


def test_an_update_that_changes_nothing_writes_nothing(registry: Registry) -> None:
    created = registry.create(description="same")
    assert registry.update(pb.Feature(name="clicks", description="same")) == created
    assert registry.after_writes == 1


def test_immutable_fields_and_stale_etags_are_refused(registry: Registry) -> None:
    created = registry.create()
    with pytest.raises(Aborted) as info:
        registry.update(pb.Feature(name="clicks", entity_type="product"))
    assert info.value.field_violations == {"feature.entity_type": "cannot be changed after creation"}
    registry.update(pb.Feature(name="clicks", description="someone else"))
    with pytest.raises(Aborted) as info:
        registry.update(pb.Feature(name="clicks", description="mine", etag=created.etag))
    assert (info.value.code, info.value.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    with pytest.raises(Aborted) as info:
        unary(registry.servicer.DeleteFeature, rs.DeleteFeatureRequest(name="clicks", etag=created.etag))
    assert info.value.reason == "ETAG_MISMATCH"
    assert "clicks" in registry.store.features


def test_listing_pages_through_everything_once(registry: Registry) -> None:
    for i in range(5):
        registry.create(f"f{i}", owner="team-a" if i % 2 else "team-b")
    names, token = [], ""
    while True:
        page = unary(registry.servicer.ListFeatures, rs.ListFeaturesRequest(page_size=2, page_token=token))
        names += [f.name for f in page.features]
        token = page.next_page_token
        if not token:
            break
    assert names == ["f0", "f1", "f2", "f3", "f4"]
    only_a = unary(registry.servicer.ListFeatures, rs.ListFeaturesRequest(owner="team-a"))
    assert [f.name for f in only_a.features] == ["f1", "f3"]


def test_a_page_token_is_bound_to_its_filters(registry: Registry) -> None:
    for i in range(3):
        registry.create(f"f{i}")
    first = unary(registry.servicer.ListFeatures, rs.ListFeaturesRequest(page_size=1, entity_type="customer"))
    with pytest.raises(Aborted) as info:
        unary(
            registry.servicer.ListFeatures,
            rs.ListFeaturesRequest(page_size=1, entity_type="product", page_token=first.next_page_token),
        )
    assert "page_token" in info.value.field_violations


def test_revisions_are_listed_newest_first(registry: Registry) -> None:
    registry.create(description="v1")
    registry.update(pb.Feature(name="clicks", description="v2"))
    registry.update(pb.Feature(name="clicks", description="v3"))
    request = rs.ListFeatureRevisionsRequest(name="clicks", page_size=2)
    first = unary(registry.servicer.ListFeatureRevisions, request)
    assert [f.description for f in first.features] == ["v3", "v2"]
    request.page_token = first.next_page_token
    rest = unary(registry.servicer.ListFeatureRevisions, request)
    assert ([f.description for f in rest.features], rest.next_page_token) == (["v1"], "")


@pytest.mark.parametrize("cursor", ["\u00b2", "9" * 30, "-1"])
def test_a_forged_revisions_token_is_invalid_argument(registry: Registry, cursor: str) -> None:
    """A token is unsigned base64: one that decodes to something other than a revision id is refused,
    not passed to the store (a non-ASCII digit or an id beyond a bigint failed there as INTERNAL)."""
    registry.create(description="v1")
    token = _paging.encode_token(cursor, ["clicks"])
    with pytest.raises(Aborted) as info:
        unary(registry.servicer.ListFeatureRevisions, rs.ListFeatureRevisionsRequest(name="clicks", page_token=token))
    assert "page_token" in info.value.field_violations


def test_each_revision_records_who_made_it(registry: Registry) -> None:
    with acting_as("alice"):
        registry.create(description="v1")
    with acting_as("bob"):
        registry.update(pb.Feature(name="clicks", description="v2"))
    registry.update(pb.Feature(name="clicks", description="v3"))  # without authentication
    listed = unary(registry.servicer.ListFeatureRevisions, rs.ListFeatureRevisionsRequest(name="clicks"))
    assert [(f.description, f.revised_by) for f in listed.features] == [("v3", ""), ("v2", "bob"), ("v1", "alice")]
    with acting_as("carol"):
        registry.create("b")
        group = unary(
            registry.servicer.CreateFeatureGroup,
            rs.CreateFeatureGroupRequest(
                feature_group=pb.FeatureGroup(name="g", entity_type="customer", feature_names=["b"])
            ),
        )
    assert group.revised_by == "carol"


def test_groups_are_validated_and_stored(registry: Registry) -> None:
    registry.create("a")
    registry.create("b")
    group = pb.FeatureGroup(name="g", entity_type="customer", feature_names=["b", "a"])
    created = unary(registry.servicer.CreateFeatureGroup, rs.CreateFeatureGroupRequest(feature_group=group))
    assert list(created.feature_names) == ["b", "a"]
    bad = pb.FeatureGroup(name="h", entity_type="customer", feature_names=["a", "a"])
    with pytest.raises(Aborted) as info:
        unary(registry.servicer.CreateFeatureGroup, rs.CreateFeatureGroupRequest(feature_group=bad))
    assert info.value.field_violations == {"feature_group.feature_names": "must not repeat a feature"}


class _BrokenRegistry(FakeRegistry):
    async def get_feature(self, name: str) -> Any:
        raise RuntimeError("connection to postgresql://featurestore:hunter2@db-7.internal failed")


def test_an_unexpected_exception_is_internal_without_its_text() -> None:
    """A bug's exception is logged, never sent: gRPC's default answer (UNKNOWN) carries its type and message."""

    async def after_write() -> None:
        pass

    servicer = RegistryServicer(_BrokenRegistry(), after_write)
    with pytest.raises(Aborted) as aborted:
        unary(servicer.GetFeature, rs.GetFeatureRequest(name="clicks"))
    assert aborted.value.code == grpc.StatusCode.INTERNAL
    assert aborted.value.status.details == "internal error (the server logged it)"

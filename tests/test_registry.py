"""Registry behaviour through the generated gRPC stubs and through REST."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from featurestore import FeatureStoreClient, error_details
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from server.core import postgres
from server.core.errors import ServiceError
from server.registry import Feature, PostgresRegistryStore
from tests._http import Rest

pytestmark = pytest.mark.usefixtures("empty_registry")


def feature(name: str, entity_type: str = "customer", **kwargs: object) -> pb.Feature:
    fields: dict[str, object] = {
        "value_type": pb.FLOAT,
        "source": pb.BATCH,
        "category": pb.DERIVED,
        "frequency": pb.DAILY,
        "owner": "team-a",
        "tags": ["t1"],
    }
    fields.update(kwargs)
    return pb.Feature(name=name, entity_type=entity_type, **fields)  # type: ignore[arg-type]


def create(client: FeatureStoreClient, f: pb.Feature) -> pb.Feature:
    return client.registry.CreateFeature(rs.CreateFeatureRequest(feature=f))


def create_group(
    client: FeatureStoreClient, name: str, names: list[str], entity_type: str = "customer"
) -> pb.FeatureGroup:
    group = pb.FeatureGroup(name=name, feature_names=names, entity_type=entity_type)
    return client.registry.CreateFeatureGroup(rs.CreateFeatureGroupRequest(feature_group=group))


def rpc_error(call: object, *args: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)  # type: ignore[operator]
    return info.value


def test_create_get_round_trip_with_server_fields(client: FeatureStoreClient) -> None:
    sent = feature("f1", max_age=duration_pb2.Duration(seconds=3600), description="ünïcødé ✓ 'quoted'; DROP TABLE x;")
    created = create(client, sent)
    assert created.revision == 1
    assert created.etag
    assert created.create_time.seconds > 0
    assert created.update_time == created.create_time
    expected = pb.Feature()
    expected.CopyFrom(created)
    for server_field in ("create_time", "update_time", "revision", "etag"):
        expected.ClearField(server_field)
    assert expected == sent
    assert client.registry.GetFeature(rs.GetFeatureRequest(name="f1")) == created


def test_get_missing_is_not_found_with_reason(client: FeatureStoreClient) -> None:
    err = rpc_error(client.registry.GetFeature, rs.GetFeatureRequest(name="missing"))
    details = error_details(err)
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.reason == "FEATURE_NOT_FOUND"
    assert details.metadata == {"name": "missing"}


def test_list_filters_and_pages(client: FeatureStoreClient) -> None:
    for i in range(7):
        create(client, feature(f"c{i}", owner="team-a" if i % 2 else "team-b", tags=[f"tag{i % 3}"]))
    create(client, feature("p1", entity_type="product", category=pb.RAW))
    pages, token = [], ""
    while True:
        resp = client.registry.ListFeatures(
            rs.ListFeaturesRequest(page_size=3, page_token=token, entity_type="customer")
        )
        pages.append([f.name for f in resp.features])
        token = resp.next_page_token
        if not token:
            break
    assert pages == [["c0", "c1", "c2"], ["c3", "c4", "c5"], ["c6"]]

    def names(**kwargs: object) -> list[str]:
        return [f.name for f in client.registry.ListFeatures(rs.ListFeaturesRequest(**kwargs)).features]  # type: ignore[arg-type]

    assert names(owner="team-a") == ["c1", "c3", "c5", "p1"]
    assert names(tag="tag0") == ["c0", "c3", "c6"]
    assert names(category=pb.RAW) == ["p1"]
    assert names(entity_type="product", owner="team-a") == ["p1"]


def test_page_token_cannot_be_reused_with_other_filters(client: FeatureStoreClient) -> None:
    for i in range(3):
        create(client, feature(f"c{i}"))
    token = client.registry.ListFeatures(rs.ListFeaturesRequest(page_size=1)).next_page_token
    err = rpc_error(client.registry.ListFeatures, rs.ListFeaturesRequest(page_size=1, page_token=token, owner="x"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in error_details(err).field_violations
    err = rpc_error(client.registry.ListFeatures, rs.ListFeaturesRequest(page_token="garbage!"))
    assert "page_token" in error_details(err).field_violations


def test_update_with_mask_changes_only_masked_fields_and_keeps_history(client: FeatureStoreClient) -> None:
    created = create(client, feature("f1", description="v1"))
    patch = pb.Feature(name="f1", description="v2", owner="ignored-not-in-mask", etag=created.etag)
    updated = client.registry.UpdateFeature(
        rs.UpdateFeatureRequest(feature=patch, update_mask=field_mask_pb2.FieldMask(paths=["description"]))
    )
    assert (updated.description, updated.owner, updated.revision) == ("v2", "team-a", 2)
    assert updated.etag != created.etag
    assert updated.create_time == created.create_time

    revisions = client.registry.ListFeatureRevisions(rs.ListFeatureRevisionsRequest(name="f1")).features
    assert [(r.revision, r.description) for r in revisions] == [(2, "v2"), (1, "v1")]


def test_update_without_mask_uses_fields_set(client: FeatureStoreClient) -> None:
    create(client, feature("f1", description="v1", tags=["a", "b"]))
    updated = client.registry.UpdateFeature(rs.UpdateFeatureRequest(feature=pb.Feature(name="f1", tags=["c"])))
    assert (list(updated.tags), updated.description) == (["c"], "v1")


def test_update_with_same_values_writes_no_revision(client: FeatureStoreClient) -> None:
    created = create(client, feature("f1", description="v1"))
    same = client.registry.UpdateFeature(rs.UpdateFeatureRequest(feature=pb.Feature(name="f1", description="v1")))
    assert same == created


def test_stale_etag_is_aborted_and_changes_nothing(client: FeatureStoreClient) -> None:
    created = create(client, feature("f1", description="v1"))
    client.registry.UpdateFeature(rs.UpdateFeatureRequest(feature=pb.Feature(name="f1", description="v2")))
    stale = pb.Feature(name="f1", description="v3", etag=created.etag)
    err = rpc_error(client.registry.UpdateFeature, rs.UpdateFeatureRequest(feature=stale))
    assert error_details(err).code == grpc.StatusCode.ABORTED
    assert error_details(err).reason == "ETAG_MISMATCH"
    assert client.registry.GetFeature(rs.GetFeatureRequest(name="f1")).description == "v2"
    err = rpc_error(client.registry.DeleteFeature, rs.DeleteFeatureRequest(name="f1", etag=created.etag))
    assert error_details(err).reason == "ETAG_MISMATCH"


def test_immutable_and_output_only_fields_are_rejected(client: FeatureStoreClient) -> None:
    create(client, feature("f1"))
    err = rpc_error(
        client.registry.UpdateFeature, rs.UpdateFeatureRequest(feature=pb.Feature(name="f1", value_type=pb.STRING))
    )
    assert error_details(err).field_violations == {"feature.value_type": "cannot be changed after creation"}
    mask = field_mask_pb2.FieldMask(paths=["revision"])
    err = rpc_error(
        client.registry.UpdateFeature, rs.UpdateFeatureRequest(feature=pb.Feature(name="f1"), update_mask=mask)
    )
    assert "update_mask" in error_details(err).field_violations


def test_delete_feature_used_by_group_fails_until_group_is_gone(client: FeatureStoreClient) -> None:
    create(client, feature("f1"))
    create(client, feature("f2"))
    create_group(client, "g", ["f1", "f2"])
    err = rpc_error(client.registry.DeleteFeature, rs.DeleteFeatureRequest(name="f1"))
    details = error_details(err)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "FEATURE_IN_USE")
    assert details.metadata["feature_groups"] == "g"
    client.registry.DeleteFeatureGroup(rs.DeleteFeatureGroupRequest(name="g"))
    client.registry.DeleteFeature(rs.DeleteFeatureRequest(name="f1"))
    assert rpc_error(client.registry.GetFeature, rs.GetFeatureRequest(name="f1")).code() == grpc.StatusCode.NOT_FOUND
    history = client.registry.ListFeatureRevisions(rs.ListFeatureRevisionsRequest(name="f1")).features
    assert [h.revision for h in history] == [1, 1]


def test_recreated_feature_gets_a_new_etag(client: FeatureStoreClient) -> None:
    first = create(client, feature("f1"))
    client.registry.DeleteFeature(rs.DeleteFeatureRequest(name="f1", etag=first.etag))
    second = create(client, feature("f1"))
    assert second.revision == 1
    assert second.etag != first.etag


def test_group_members_must_exist_and_share_entity_type(client: FeatureStoreClient) -> None:
    create(client, feature("c1"))
    create(client, feature("p1", entity_type="product"))
    err = rpc_error(create_group, client, "g", ["c1", "p1", "nope"])
    assert error_details(err).field_violations == {
        "feature_group.feature_names[1]": "feature 'p1' has entity_type 'product', the group has 'customer'",
        "feature_group.feature_names[2]": "feature 'nope' does not exist",
    }
    assert list(client.registry.ListFeatureGroups(rs.ListFeatureGroupsRequest()).feature_groups) == []


def test_group_update_replaces_members(client: FeatureStoreClient) -> None:
    for name in ("a", "b", "c"):
        create(client, feature(name))
    group = create_group(client, "g", ["a", "b"])
    patch = pb.FeatureGroup(name="g", feature_names=["c", "a"], etag=group.etag)
    updated = client.registry.UpdateFeatureGroup(rs.UpdateFeatureGroupRequest(feature_group=patch))
    assert (list(updated.feature_names), updated.revision) == (["c", "a"], 2)
    client.registry.DeleteFeature(rs.DeleteFeatureRequest(name="b"))  # no longer used
    err = rpc_error(client.registry.DeleteFeature, rs.DeleteFeatureRequest(name="c"))
    assert error_details(err).reason == "FEATURE_IN_USE"


def test_rest_update_delete_and_list_groups(client: FeatureStoreClient, rest: Rest) -> None:
    create(client, feature("f1", description="v1"))
    resp = rest.request("PATCH", "/api/feature-registry/features/f1?update_mask=description", {"description": "v2"})
    assert resp.status == 200, resp.text
    assert resp.json()["description"] == "v2"
    assert rest.get("/api/feature-registry/features/f1/revisions").json()["features"][1]["description"] == "v1"
    create_group(client, "g", ["f1"])
    groups = rest.get("/api/feature-registry/feature-groups?entity_type=customer").json()
    assert [g["name"] for g in groups["feature_groups"]] == ["g"]
    assert rest.request("DELETE", "/api/feature-registry/feature-groups/g").status == 200
    assert rest.request("DELETE", "/api/feature-registry/features/f1").status == 200
    assert rest.get("/api/feature-registry/features/f1").status == 404


def test_a_streaming_feature_round_trips_and_a_bad_one_changes_nothing(client: FeatureStoreClient) -> None:
    source = pb.SourceConfig(
        stream="purchases",
        entity_column="customer_id",
        fields=[
            pb.EventField(name="customer_id", type=pb.STRING),
            pb.EventField(name="purchase_amount", type=pb.FLOAT),
            pb.EventField(name="event_time", type=pb.TIMESTAMP),
        ],
        watermark=duration_pb2.Duration(seconds=120),
    )
    step = pb.Transformation(
        type="aggregation", function="sum", column="purchase_amount", window=duration_pb2.Duration(seconds=3600)
    )
    sent = feature("s1", source=pb.STREAMING, frequency=pb.REALTIME, source_config=source, transformations=[step])
    created = create(client, sent)
    assert created.source_config == source
    assert created.transformations[0].window.seconds == 3600
    assert client.registry.GetFeature(rs.GetFeatureRequest(name="s1")) == created
    evil = pb.Transformation(type="filter", expression="java_method('java.lang.System', 'exit', 1) = 0")
    bad = feature("s2", source=pb.STREAMING, source_config=source, transformations=[evil, step])
    err = rpc_error(create, client, bad)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "java_method" in (err.details() or "")
    assert rpc_error(client.registry.GetFeature, rs.GetFeatureRequest(name="s2")).code() == grpc.StatusCode.NOT_FOUND


def test_a_write_conditional_on_a_definition_misses_it_once_deleted_and_created_again(postgres_dsn: str) -> None:
    """The race an etag guards: a caller reads a feature (revision 1), another deletes it and creates it again
    (revision 1 once more, another entity type); the first caller's conditional update or delete must not apply
    to the new one (it was conditioned on the revision alone: the old definition overwrote the new one)."""

    async def scenario() -> None:
        pool = await postgres.create_pool(postgres_dsn, min_size=1, max_size=2, command_timeout=5)
        try:
            store = PostgresRegistryStore(pool)
            read = await store.create_feature(Feature(name="raced", entity_type="customer", value_type="FLOAT"))
            assert read.meta is not None
            await store.delete_feature("raced", read.meta)
            again = await store.create_feature(Feature(name="raced", entity_type="product", value_type="FLOAT"))
            assert again.meta is not None
            assert again.meta.revision == read.meta.revision == 1
            for write in (
                store.replace_feature(Feature(name="raced", entity_type="customer", value_type="FLOAT"), read.meta),
                store.delete_feature("raced", read.meta),
            ):
                with pytest.raises(ServiceError) as info:
                    await write
                assert info.value.code is grpc.StatusCode.ABORTED
            assert (await store.get_feature("raced")).entity_type == "product"
            await store.delete_feature("raced", again.meta)
        finally:
            await pool.close()

    asyncio.run(scenario())

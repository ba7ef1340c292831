"""Bad input gets a clear error naming the field, and changes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from featurestore import FeatureStoreClient, error_details
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from tests._helpers import run_sql
from tests._http import Rest

pytestmark = pytest.mark.usefixtures("empty_registry")
FEATURES = "/api/feature-registry/features"
GROUPS = "/api/feature-registry/feature-groups"


def valid(**overrides: Any) -> dict[str, Any]:
    body = {"name": "good_feature", "entity_type": "customer", "value_type": "FLOAT", "tags": ["a"]}
    body.update(overrides)
    return body


def snapshot(client: FeatureStoreClient, dsn: str) -> tuple[Any, ...]:
    features = client.registry.ListFeatures(rs.ListFeaturesRequest(page_size=1000)).features
    groups = client.registry.ListFeatureGroups(rs.ListFeatureGroupsRequest(page_size=1000)).feature_groups
    revisions = run_sql(dsn, "SELECT count(*) AS n FROM registry_revisions")[0]["n"]
    return list(features), list(groups), revisions


@pytest.fixture
def unchanged(empty_registry: None, client: FeatureStoreClient, rest: Rest, postgres_dsn: str) -> Iterator[None]:
    """Seed the registry, and after the test assert it is exactly as seeded."""
    assert rest.post(FEATURES, valid(name="existing", description="before")).status == 200
    assert (
        rest.post(GROUPS, {"name": "existing_group", "entity_type": "customer", "feature_names": ["existing"]}).status
        == 200
    )
    before = snapshot(client, postgres_dsn)
    yield
    assert snapshot(client, postgres_dsn) == before


def assert_json_error(resp: Any, status: int, grpc_code: int, *words: str) -> dict[str, Any]:
    assert resp.status == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    body: dict[str, Any] = resp.json()
    assert body["code"] == grpc_code
    for word in words:
        assert word in body["message"], body
    return body


def violations(body: dict[str, Any]) -> dict[str, str]:
    for detail in body["details"]:
        if detail["@type"].endswith("google.rpc.BadRequest"):
            return {v["field"]: v["description"] for v in detail["field_violations"]}
    return {}


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    "raw",
    [
        '{"name": "x",',  # truncated
        "not json at all",
        '{"name": "x", "tags": 5}',  # wrong type
        '{"name": ["x"]}',
        '{"name": "x", "value_type": 3.5}',
        '{"name": "x", "value_type": "DOUBLEX"}',  # unknown enum string
        '{"name": "x", "source": "NIGHTLY"}',
    ],
)
def test_malformed_or_mistyped_json_is_400_json(rest: Rest, raw: str) -> None:
    assert_json_error(rest.post(FEATURES, raw), 400, 3)


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (valid(name=""), "feature.name", "is required"),
        (valid(name="x" * 10_240), "feature.name", "at most 128 characters"),
        (valid(name="x'; DROP TABLE registry_features; --"), "feature.name", "lowercase identifier"),
        (valid(name="特征"), "feature.name", "lowercase identifier"),
        (valid(name="Upper"), "feature.name", "lowercase identifier"),
        (valid(entity_type=""), "feature.entity_type", "is required"),
        (valid(value_type="VALUE_TYPE_UNSPECIFIED"), "feature.value_type", "is required"),
        (valid(description="nul \u0000 byte"), "feature.description", "control characters"),
        (valid(description="d" * 5000), "feature.description", "at most 4096"),
        (valid(tags=[""]), "feature.tags[0]", "must not be empty"),
        (valid(tags=["a", "a"]), "feature.tags", "must not repeat"),
        (valid(source_config={"table": "t; DROP TABLE x"}), "feature.source_config.table", "table name"),
        (valid(transformations=[{"type": "", "function": "sum"}]), "feature.transformations[0].type", "is required"),
        (valid(max_age="-5s"), "feature.max_age", "must be positive"),
    ],
)
def test_invalid_feature_names_the_field(rest: Rest, body: dict[str, Any], field: str, words: str) -> None:
    error = assert_json_error(rest.post(FEATURES, body), 400, 3, field)
    assert words in violations(error)[field]
    assert error["details"][0]["reason"] == "INVALID_ARGUMENT"


@pytest.mark.usefixtures("unchanged")
def test_several_problems_are_reported_together(rest: Rest) -> None:
    error = assert_json_error(rest.post(FEATURES, {"name": "ok_name"}), 400, 3)
    assert set(violations(error)) == {"feature.entity_type", "feature.value_type"}


@pytest.mark.usefixtures("unchanged")
def test_unknown_enum_number_over_grpc_is_invalid(client: FeatureStoreClient) -> None:
    bad = pb.Feature(name="f", entity_type="customer", value_type=99)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as info:
        client.registry.CreateFeature(rs.CreateFeatureRequest(feature=bad))
    assert "unknown value 99" in error_details(info.value).field_violations["feature.value_type"]


@pytest.mark.usefixtures("unchanged")
def test_duplicate_create_and_bad_groups_change_nothing(rest: Rest) -> None:
    assert_json_error(rest.post(FEATURES, valid(name="existing")), 409, 6, "already exists")
    group = {"name": "g2", "entity_type": "customer", "feature_names": ["existing", "missing"]}
    error = assert_json_error(rest.post(GROUPS, group), 400, 3)
    assert violations(error) == {"feature_group.feature_names[1]": "feature 'missing' does not exist"}
    group = {"name": "g3", "entity_type": "customer", "feature_names": []}
    assert_json_error(rest.post(GROUPS, group), 400, 3, "feature_group.feature_names")
    group = {"name": "existing_group", "entity_type": "customer", "feature_names": ["existing"]}
    assert_json_error(rest.post(GROUPS, group), 409, 6)


@pytest.mark.usefixtures("unchanged")
def test_stale_etag_over_rest_is_409(rest: Rest) -> None:
    path = f"{FEATURES}/existing"
    error = assert_json_error(rest.request("PATCH", path, {"description": "after", "etag": "stale"}), 409, 10)
    assert error["details"][0]["reason"] == "ETAG_MISMATCH"
    assert_json_error(rest.request("PATCH", path, {"entity_type": "product"}), 400, 3, "feature.entity_type")
    assert_json_error(rest.request("DELETE", f"{FEATURES}/existing"), 400, 9, "used by feature groups")


@pytest.mark.usefixtures("unchanged")
def test_unknown_routes_and_parameters_are_json(rest: Rest) -> None:
    assert_json_error(rest.get("/api/feature-registry/nothing-here"), 404, 5)
    assert_json_error(rest.get(f"{FEATURES}?colour=red"), 400, 3, "colour")
    assert_json_error(rest.get(f"{FEATURES}?page_size=-1"), 400, 3, "page_size")
    assert_json_error(rest.get(f"{FEATURES}?page_size=abc"), 400, 3)
    assert_json_error(rest.get(f"{FEATURES}/Bad%20Name"), 400, 3, "name")


def test_unicode_and_sql_metacharacters_in_free_text_are_stored_verbatim(rest: Rest) -> None:
    text = "Umsatz ümlaut 売上 🚀 'quote' \"dq\" ; DROP TABLE registry_features; -- \\ %_"
    body = valid(description=text, owner="équipe 'a'", tags=["客户", "a;b", "x'--"])
    assert rest.post(FEATURES, body).status == 200
    stored = rest.get(f"{FEATURES}/good_feature").json()
    assert (stored["description"], stored["owner"], stored["tags"]) == (text, "équipe 'a'", ["客户", "a;b", "x'--"])
    assert [f["name"] for f in rest.get(f"{FEATURES}?tag=x'--").json()["features"]] == ["good_feature"]


def test_concurrent_creates_of_one_name_one_wins(client: FeatureStoreClient, postgres_dsn: str) -> None:
    def attempt(i: int) -> grpc.StatusCode:
        f = pb.Feature(name="raced", entity_type="customer", value_type=pb.FLOAT, description=f"writer {i}")
        try:
            client.registry.CreateFeature(rs.CreateFeatureRequest(feature=f))
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(attempt, range(32)))
    assert codes.count(grpc.StatusCode.OK) == 1
    assert codes.count(grpc.StatusCode.ALREADY_EXISTS) == 31
    assert run_sql(postgres_dsn, "SELECT count(*) AS n FROM registry_revisions WHERE name = 'raced'")[0]["n"] == 1


def test_concurrent_updates_with_one_etag_one_wins(client: FeatureStoreClient) -> None:
    created = client.registry.CreateFeature(
        rs.CreateFeatureRequest(feature=pb.Feature(name="contended", entity_type="customer", value_type=pb.FLOAT))
    )

    def attempt(i: int) -> grpc.StatusCode:
        patch = pb.Feature(name="contended", description=f"writer {i}", etag=created.etag)
        try:
            client.registry.UpdateFeature(rs.UpdateFeatureRequest(feature=patch))
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(attempt, range(16)))
    assert codes.count(grpc.StatusCode.OK) == 1
    assert codes.count(grpc.StatusCode.ABORTED) == 15
    final = client.registry.GetFeature(rs.GetFeatureRequest(name="contended"))
    assert final.revision == 2


def test_error_body_is_parseable_json_with_status_shape(rest: Rest) -> None:
    body = json.loads(rest.get(f"{FEATURES}/missing").text)
    assert set(body) == {"code", "message", "details"}


def test_thousands_of_bad_values_give_a_small_error(client: FeatureStoreClient) -> None:
    from featurestore.serving.v1 import feature_store_service_pb2 as fs
    from featurestore.serving.v1 import value_pb2 as vpb

    rows = [fs.EntityRow(entity_id=f"e{i}", values={f"unknown_{i}": vpb.Value(int64_value=i)}) for i in range(2000)]
    with pytest.raises(grpc.RpcError) as info:
        client.store.WriteFeatures(fs.WriteFeaturesRequest(entity_type="customer", rows=rows))
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT  # not RESOURCE_EXHAUSTED from oversized trailers
    assert "more)" in details.message
    assert len(details.field_violations) == 20


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("seconds", [-(10**15), 10**15])
def test_durations_out_of_range_over_grpc_are_invalid(client: FeatureStoreClient, seconds: int) -> None:
    """A Duration timedelta cannot hold (protobuf's ToTimedelta overflows) names its field, as any bad value does."""
    huge = duration_pb2.Duration(seconds=seconds)
    cases = {
        "feature.max_age": pb.Feature(name="f", entity_type="customer", value_type=pb.FLOAT, max_age=huge),
        "feature.source_config.watermark": pb.Feature(
            name="f", entity_type="customer", value_type=pb.FLOAT, source_config=pb.SourceConfig(watermark=huge)
        ),
        "feature.transformations[0].window": pb.Feature(
            name="f",
            entity_type="customer",
            value_type=pb.FLOAT,
            transformations=[pb.Transformation(type="aggregation", function="count", window=huge)],
        ),
    }
    for field, bad in cases.items():
        with pytest.raises(grpc.RpcError) as info:
            client.registry.CreateFeature(rs.CreateFeatureRequest(feature=bad))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, info.value.details())
        assert field in error_details(info.value).field_violations, (field, info.value.details())

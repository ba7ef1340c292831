"""Hostile definitions are refused at registration, over REST and gRPC, and nothing is stored."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2

from featurestore import FeatureStoreClient, error_details
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from tests._helpers import run_sql
from tests._hostile import HOSTILE
from tests._http import Rest

pytestmark = pytest.mark.usefixtures("empty_registry")
REFLECT = 'reflect("java.lang.System", "getProperty", "user.dir")'


def computed(name: str, **source: str) -> dict[str, object]:
    """A batch feature as the seed's JSON creates it, with the given source_config."""
    return {
        "name": name,
        "entity_type": "customer",
        "value_type": "STRING",
        "source": "BATCH",
        "source_config": {"table": "customer_purchases", **source},
        "transformations": [{"type": "aggregation", "function": "count"}],
    }


def stored(postgres_dsn: str) -> int:
    return int(run_sql(postgres_dsn, "SELECT count(*) AS n FROM registry_revisions")[0]["n"])


def test_the_reported_exploit_is_refused_over_rest_naming_field_and_function(rest: Rest, postgres_dsn: str) -> None:
    body = computed("pwd")
    body["transformations"] = [
        {"type": "aggregation", "function": "count"},
        {"type": "expression", "expression": REFLECT},
    ]
    resp = rest.post("/api/feature-registry/features", body)
    assert resp.status == 400, resp.text
    status = resp.json()
    bad = next(d for d in status["details"] if d["@type"].endswith("BadRequest"))
    assert [{k: v[k] for k in ("field", "description")} for v in bad["field_violations"]] == [
        {
            "field": "feature.transformations[1].expression",
            "description": "uses function reflect, which is not allowed in a definition (see docs/definitions.md)",
        }
    ]
    assert stored(postgres_dsn) == 0
    assert rest.get("/api/feature-registry/features/pwd").status == 404


@pytest.mark.parametrize("text", list(HOSTILE)[:12])
def test_hostile_filters_are_refused_over_grpc_and_nothing_is_stored(
    client: FeatureStoreClient, postgres_dsn: str, text: str
) -> None:
    feature = pb.Feature(
        name="hostile",
        entity_type="customer",
        value_type=pb.FLOAT,
        source=pb.BATCH,
        source_config=pb.SourceConfig(table="customer_purchases", filter=text),
        transformations=[pb.Transformation(type="aggregation", function="count")],
    )
    with pytest.raises(grpc.RpcError) as caught:
        client.registry.CreateFeature(rs.CreateFeatureRequest(feature=feature))
    err = caught.value
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    fields = list(error_details(err).field_violations)
    assert fields == ["feature.source_config.filter"]
    assert stored(postgres_dsn) == 0


def test_an_update_cannot_smuggle_code_into_a_valid_definition(rest: Rest, client: FeatureStoreClient) -> None:
    assert rest.post("/api/feature-registry/features", computed("ok")).status == 200
    patch = {"source_config": {"table": "customer_purchases", "filter": f"{REFLECT} IS NOT NULL"}}
    resp = rest.request("PATCH", "/api/feature-registry/features/ok?update_mask=source_config", patch)
    assert resp.status == 400, resp.text
    assert "feature.source_config.filter" in resp.text
    mask = field_mask_pb2.FieldMask(paths=["transformations"])
    evil = pb.Feature(
        name="ok", transformations=[pb.Transformation(type="aggregation", function="max", column=REFLECT)]
    )
    with pytest.raises(grpc.RpcError) as caught:
        client.registry.UpdateFeature(rs.UpdateFeatureRequest(feature=evil, update_mask=mask))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    current = rest.get("/api/feature-registry/features/ok").json()
    assert int(current["revision"]) == 1
    assert current["source_config"]["filter"] == ""


def test_an_oversized_definition_is_refused(rest: Rest, postgres_dsn: str) -> None:
    body = computed("big", filter="purchase_amount > 1")
    body["transformations"] = [{"type": "filter", "expression": "a > '" + "x" * 4080 + "'"}] * 15 + [
        {"type": "aggregation", "function": "count"}
    ]
    body["description"] = "d" * 4096
    body["tags"] = [f"{i:02d}" + "t" * 62 for i in range(64)]
    resp = rest.post("/api/feature-registry/features", body)
    assert resp.status == 400, resp.text[:300]
    assert "bytes of text" in resp.json()["message"]
    assert stored(postgres_dsn) == 0

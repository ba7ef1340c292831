"""The seed README's registry curls, run verbatim (only the host changes) through Envoy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devstack import DEMO_FEATURES, load_demo, load_demo_history
from featurestore import FeatureStoreClient
from featurestore.registry.v1 import registry_service_pb2 as rs
from jobs import RunConfig, register_warehouse, run
from jobs.demo_data import DemoSize, write_demo_tables
from tests._http import Rest
from tests._online import wait_servable
from tests._seed import curls, registry_curls, store_curls


def assert_contains(actual: Any, expected: Any, path: str = "") -> None:
    """Every field the client sent comes back with the same value (the server may add fields)."""
    if isinstance(expected, dict):
        for key, value in expected.items():
            assert key in actual, f"{path}.{key} missing from {actual}"
            assert_contains(actual[key], value, f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_contains(a, e, f"{path}[{i}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def test_seed_has_the_documented_curls() -> None:
    assert [(c.method, c.path) for c in curls()] == [
        ("POST", "/api/feature-registry/features"),
        ("GET", "/api/feature-registry/features/customer_total_purchases_30d"),
        ("GET", "/api/feature-registry/features"),
        ("POST", "/api/feature-registry/feature-groups"),
        ("POST", "/api/feature-store/features"),
        ("POST", "/api/feature-store/batch-features"),
        ("POST", "/api/feature-store/historical-features"),
    ]


@pytest.mark.usefixtures("empty_registry")
def test_registry_curls_work_verbatim_after_demo_load(rest: Rest, grpc_target: str) -> None:
    load_demo(grpc_target)
    create, get, list_all, create_group = registry_curls()

    status, created = create.run(rest.base_url)
    assert status == 200, created
    assert_contains(created, create.body())
    assert created["revision"] == "1"
    assert created["etag"]
    assert created["create_time"] == created["update_time"]

    status, fetched = get.run(rest.base_url)
    assert (status, fetched) == (200, created)

    status, listed = list_all.run(rest.base_url)
    assert status == 200
    names = [f["name"] for f in listed["features"]]
    assert names == sorted([f.name for f in DEMO_FEATURES] + ["customer_total_purchases_30d"])
    assert created in listed["features"]
    assert listed["next_page_token"] == ""

    status, group = create_group.run(rest.base_url)
    assert status == 200, group
    assert_contains(group, create_group.body())
    assert rest.get("/api/feature-registry/feature-groups/customer_rfm_features").json() == group


@pytest.mark.usefixtures("empty_registry")
def test_python_requests_example(rest: Rest) -> None:
    feature_data = {
        "name": "customer_average_purchase_amount",
        "description": "Average purchase amount by customer",
        "entity_type": "customer",
        "value_type": "FLOAT",
        "source": "BATCH",
        "category": "DERIVED",
        "frequency": "DAILY",
        "owner": "data-science-team",
        "tags": ["purchase", "monetary"],
        "source_config": {"table": "customer_purchases"},
        "transformations": [{"type": "aggregation", "function": "avg", "column": "purchase_amount"}],
    }
    response = rest.post("/api/feature-registry/features", feature_data)
    assert response.status == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert_contains(response.json(), feature_data)


@pytest.mark.usefixtures("empty_registry")
def test_create_twice_is_409_with_reason(rest: Rest, grpc_target: str) -> None:
    load_demo(grpc_target)
    create = registry_curls()[0]
    assert create.run(rest.base_url)[0] == 200
    status, body = create.run(rest.base_url)
    assert status == 409
    assert body["code"] == 6
    assert "already exists" in body["message"]
    assert body["details"][0]["reason"] == "FEATURE_ALREADY_EXISTS"


@pytest.mark.usefixtures("empty_registry", "empty_online")
def test_feature_store_curls_work_verbatim(
    rest: Rest, grpc_target: str, spark: Any, warehouse: Path, redis_url: str, postgres_dsn: str
) -> None:
    """As after `make up`: demo definitions, the seed's feature, the 2023 history, then a pipeline run now."""
    load_demo(grpc_target)
    assert registry_curls()[0].run(rest.base_url)[0] == 200  # customer_total_purchases_30d
    get_one, get_batch, get_history = store_curls()
    load_demo_history(grpc_target)
    now = datetime.now(UTC).replace(microsecond=0)
    write_demo_tables(spark, warehouse, DemoSize(), now)
    register_warehouse(spark, warehouse)
    spark.catalog.refreshTable("customer_purchases")
    with FeatureStoreClient(grpc_target) as client:
        features = list(client.registry.ListFeatures(rs.ListFeaturesRequest(entity_type="customer")).features)
        wait_servable(client, "customer", *get_one.body()["feature_names"])
    config = RunConfig(now, timedelta(days=30), redis_url, False, postgres_dsn)
    assert run(spark, features, config, progress=lambda _: None).failed == {}

    status, one = get_one.run(rest.base_url)
    assert status == 200, one
    assert (one["entity_id"], one["entity_type"]) == ("customer123", "customer")
    assert [f["name"] for f in one["features"]] == get_one.body()["feature_names"]
    assert {f["status"] for f in one["features"]} == {"PRESENT"}  # computed by the pipeline
    assert {f["event_time"] for f in one["features"]} == {now.isoformat().replace("+00:00", "Z")}

    status, batch = get_batch.run(rest.base_url)
    assert status == 200, batch
    assert [e["entity_id"] for e in batch["entities"]] == ["customer123", "customer456", "customer789"]
    assert all(len(e["features"]) == 3 for e in batch["entities"])
    assert [f["status"] for e in batch["entities"] for f in e["features"]] == ["PRESENT"] * 9

    status, past = get_history.run(rest.base_url)
    assert status == 200, past
    assert [v["event_time"][:10] for v in past["values"]][:3] == ["2023-01-01", "2023-01-08", "2023-01-15"]
    assert len(past["values"]) == 13  # weekly demo values in [Jan 1, Apr 1) of the one feature with history
    assert {v["name"] for v in past["values"]} == {"customer_days_since_last_purchase"}

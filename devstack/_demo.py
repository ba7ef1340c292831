"""Demo registry content for the local stack.

It holds the features the seed's examples refer to without creating them
(the other members of `customer_rfm_features`) and a small product catalogue,
so that the seed's curls, run in order, all succeed on a fresh stack.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from featurestore import FeatureStoreClient
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2 as vpb

_CUSTOMER: dict[str, Any] = {
    "entity_type": "customer",
    "owner": "data-science-team",
    "source": pb.BATCH,
    "frequency": pb.DAILY,
}
_PURCHASES_30D = pb.SourceConfig(
    table="customer_purchases", filter="purchase_date >= NOW() - INTERVAL '30 days'", entity_column="customer_id"
)
_PRODUCT: dict[str, Any] = {
    "entity_type": "product",
    "owner": "catalog-team",
    "source": pb.BATCH,
    "frequency": pb.DAILY,
}

FEATURES = [
    pb.Feature(
        name="customer_days_since_last_purchase",
        description="Days since the customer's most recent purchase",
        value_type=pb.INT64,
        category=pb.DERIVED,
        tags=["purchase", "recency", "customer_360"],
        source_config=pb.SourceConfig(table="customer_purchases", entity_column="customer_id"),
        transformations=[pb.Transformation(type="aggregation", function="days_since_last", column="purchase_date")],
        **_CUSTOMER,
    ),
    pb.Feature(
        name="customer_purchase_frequency_30d",
        description="Number of purchases by customer in last 30 days",
        value_type=pb.INT64,
        category=pb.DERIVED,
        tags=["purchase", "frequency", "customer_360"],
        source_config=_PURCHASES_30D,
        transformations=[pb.Transformation(type="aggregation", function="count", column="purchase_id")],
        **_CUSTOMER,
    ),
    pb.Feature(
        name="product_price",
        description="Current list price of the product",
        value_type=pb.FLOAT,
        category=pb.RAW,
        tags=["catalog", "monetary"],
        source_config=pb.SourceConfig(table="products", entity_column="product_id"),
        transformations=[pb.Transformation(type="aggregation", function="last", column="price")],
        **_PRODUCT,
    ),
    pb.Feature(
        name="product_category",
        description="Top-level category of the product",
        value_type=pb.STRING,
        category=pb.RAW,
        tags=["catalog"],
        source_config=pb.SourceConfig(table="products", entity_column="product_id"),
        transformations=[pb.Transformation(type="aggregation", function="last", column="category")],
        **_PRODUCT,
    ),
]

GROUPS = [
    pb.FeatureGroup(
        name="product_catalog_features",
        description="Catalogue attributes of a product",
        feature_names=["product_price", "product_category"],
        entity_type="product",
        owner="catalog-team",
        tags=["catalog"],
    ),
]


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying `token` (none without one: auth off)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def load(target: str, token: str = "") -> list[str]:
    """Create the demo definitions that do not exist yet (as `token`'s caller); returns the names created."""
    created, metadata = [], _bearer(token)
    with FeatureStoreClient(target) as client:
        for feature in FEATURES:
            request = rs.CreateFeatureRequest(feature=feature)
            if _create(functools.partial(client.registry.CreateFeature, request, metadata=metadata)):
                created.append(feature.name)
        for group in GROUPS:
            group_request = rs.CreateFeatureGroupRequest(feature_group=group)
            if _create(functools.partial(client.registry.CreateFeatureGroup, group_request, metadata=metadata)):
                created.append(group.name)
    return created


def _row(entity: str, when: timestamp_pb2.Timestamp, values: dict[str, int]) -> fs.EntityRow:
    return fs.EntityRow(
        entity_id=entity, event_time=when, values={k: vpb.Value(int64_value=v) for k, v in values.items()}
    )


def _history_rows() -> list[fs.EntityRow]:
    """Weekly values of customer123 in early 2023: the period of the seed's historical-features example."""
    rows = []
    for week in range(18):
        when = timestamp_pb2.Timestamp()
        when.FromDatetime(datetime(2023, 1, 1, tzinfo=UTC) + timedelta(weeks=week))
        values = {"customer_days_since_last_purchase": week % 7, "customer_purchase_frequency_30d": 2 + week % 5}
        rows.append(_row("customer123", when, values))
    return rows


def load_history(target: str, timeout: float = 10.0, token: str = "") -> int:
    """Write the 2023 demo history (current values come from the batch pipeline); returns the values written.

    Waits until serving knows the demo features. Rewriting it is harmless: history is idempotent.
    """
    request = fs.WriteFeaturesRequest(entity_type="customer", rows=_history_rows())
    deadline = time.monotonic() + timeout
    with FeatureStoreClient(target) as client:
        while True:
            try:
                return int(client.store.WriteFeatures(request, metadata=_bearer(token)).written_values)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.INVALID_ARGUMENT or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)  # the registry snapshot has not caught up yet


def _create(call: Callable[[], object]) -> bool:
    try:
        call()
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.ALREADY_EXISTS:
            return False
        raise
    return True

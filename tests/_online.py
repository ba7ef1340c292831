"""Helpers for online store tests: registering features, writing and reading values."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from featurestore import FeatureStoreClient
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2 as vpb


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def ago(**kwargs: float) -> datetime:
    return now() - timedelta(**kwargs)


def register(
    client: FeatureStoreClient,
    name: str,
    value_type: int,
    entity_type: str = "customer",
    max_age: timedelta | None = None,
) -> None:
    feature = pb.Feature(name=name, entity_type=entity_type, value_type=value_type, frequency=pb.REALTIME)  # type: ignore[arg-type]
    if max_age is not None:
        feature.max_age.CopyFrom(duration_pb2.Duration(seconds=int(max_age.total_seconds())))
    client.registry.CreateFeature(rs.CreateFeatureRequest(feature=feature))


def wait_servable(client: FeatureStoreClient, entity_type: str, *names: str, timeout: float = 5.0) -> float:
    """Seconds until serving knows every feature in `names` (reads stop failing with 'does not exist')."""
    started = time.monotonic()
    while True:
        try:
            client.store.GetFeatures(
                fs.GetFeaturesRequest(entity_type=entity_type, entity_id="probe", feature_names=names)
            )
            return time.monotonic() - started
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.INVALID_ARGUMENT or time.monotonic() - started > timeout:
                raise
            time.sleep(0.02)


def row(entity_id: str, when: datetime, **values: vpb.Value) -> fs.EntityRow:
    return fs.EntityRow(entity_id=entity_id, event_time=ts(when), values=values)


def write(
    client: FeatureStoreClient, rows: list[fs.EntityRow], entity_type: str = "customer"
) -> fs.WriteFeaturesResponse:
    return client.store.WriteFeatures(fs.WriteFeaturesRequest(entity_type=entity_type, rows=rows))


def get(
    client: FeatureStoreClient, entity_id: str, *names: str, entity_type: str = "customer"
) -> Mapping[str, fs.FeatureValue]:
    response = client.store.GetFeatures(
        fs.GetFeaturesRequest(entity_type=entity_type, entity_id=entity_id, feature_names=names)
    )
    assert response.entity_id == entity_id
    assert [f.name for f in response.features] == list(names)
    return {f.name: f for f in response.features}


def f64(x: float) -> vpb.Value:
    return vpb.Value(float_value=x)


def i64(x: int) -> vpb.Value:
    return vpb.Value(int64_value=x)

"""GetHistoricalFeatures' request checks (server.offline._servicer._query), without servers."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from featurestore.serving.v1 import feature_store_service_pb2 as fs
from server.offline._servicer import _query
from server.online import Catalog
from server.registry import Feature


def _catalog() -> Catalog:
    catalog = Catalog()
    catalog.replace(1, [Feature(name="f", entity_type="t", value_type="FLOAT")], [])
    return catalog


def test_an_explicit_end_at_the_epoch_is_a_time_and_an_unset_one_is_no_end() -> None:
    request = fs.GetHistoricalFeaturesRequest(
        entity_type="t", entity_id="e", feature_names=["f"], start_time=Timestamp(seconds=-10), end_time=Timestamp()
    )
    query = _query(_catalog(), request, paged=True)
    assert query.start == datetime(1969, 12, 31, 23, 59, 50, tzinfo=UTC)
    assert query.end == datetime(1970, 1, 1, tzinfo=UTC)
    request.ClearField("end_time")
    assert _query(_catalog(), request, paged=True).end == datetime(9999, 12, 31, tzinfo=UTC)

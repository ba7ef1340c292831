"""Demo registry content for the local stack.

It holds the features the seed's examples refer to without creating them
(the other members of `customer_rfm_features`) and a small product catalogue
(definitions/demo/, read by the client's definitions code, as `featurestore apply` reads them),
so that the seed's curls, run in order, all succeed on a fresh stack.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2

from featurestore import Client, FeatureStoreClient, apply_plan, load_definitions, plan_definitions
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2 as vpb

DEFINITIONS = Path(__file__).resolve().parent.parent / "definitions" / "demo"
_DEMO = load_definitions(DEFINITIONS)
FEATURES: list[pb.Feature] = _DEMO.features
GROUPS: list[pb.FeatureGroup] = _DEMO.groups
# The streaming demo (definitions/streaming/): features of the `purchases` event stream.
_STREAMING = load_definitions(DEFINITIONS.parent / "streaming")
STREAMING_FEATURES: list[pb.Feature] = _STREAMING.features


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying `token` (none without one: auth off)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def load(target: str, token: str = "") -> list[str]:
    """Create the demo definitions (definitions/demo/) that do not exist yet, as `token`'s caller.

    The same code as `featurestore apply`, planning creations only: existing ones are left
    alone. Returns the names created.
    """
    with Client(target, token=token or None) as client:
        client.wait_ready()
        plan = plan_definitions(client, _DEMO, updates=False)
        return [change.name for change in apply_plan(client, plan)]


def load_streaming(target: str, token: str = "") -> list[str]:
    """Create the streaming demo features that do not exist yet (as `load` does); the names created."""
    with Client(target, token=token or None) as client:
        client.wait_ready()
        return [change.name for change in apply_plan(client, plan_definitions(client, _STREAMING, updates=False))]


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

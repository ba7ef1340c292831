"""Streaming test helpers: demo-like events, and the plain-Python reference of every windowed aggregation."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.duration_pb2 import Duration

from devstack import STREAMING_DEMO_FEATURES
from featurestore import FeatureStoreClient, python_value
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.serving.v1 import feature_store_service_pb2 as fs

TILE = 60_000_000  # micros
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(moment: datetime) -> int:
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True)
class Check:
    """A feature and how to compute it in plain Python."""

    feature: pb.Feature
    function: str
    column: str
    window_s: int
    keep: Callable[[dict[str, Any]], bool] = lambda e: True
    post: Callable[[Any], Any] = lambda v: v


def streaming_feature(
    name: str, value_type: int, function: str, column: str, minutes: int, *, steps: Sequence[pb.Transformation] = ()
) -> pb.Feature:
    base = STREAMING_DEMO_FEATURES[0]
    agg = pb.Transformation(type="aggregation", function=function, column=column, window=Duration(seconds=minutes * 60))
    filters = [s for s in steps if s.type == "filter"]
    post = [s for s in steps if s.type == "expression"]
    return pb.Feature(
        name=name,
        entity_type="customer",
        value_type=value_type,  # type: ignore[arg-type]
        source=pb.STREAMING,
        source_config=base.source_config,
        transformations=[*filters, agg, *post],
    )


def checks() -> list[Check]:
    """The demo features and one feature per other aggregation, over 10 min, 1 h and 24 h windows."""
    demo = {f.name: f for f in STREAMING_DEMO_FEATURES}
    count_1h, sum_1h = demo["customer_purchase_count_1h"], demo["customer_purchase_amount_sum_1h"]
    avg_24h = demo["customer_purchase_amount_avg_24h"]
    web = pb.Transformation(type="filter", expression="channel = 'web'")
    times10 = pb.Transformation(type="expression", expression="value * 10")
    return [
        Check(count_1h, "count", "", 3600),
        Check(sum_1h, "sum", "purchase_amount", 3600),
        Check(avg_24h, "avg", "purchase_amount", 86400),
        Check(
            streaming_feature("c_min_24h", pb.FLOAT, "min", "purchase_amount", 1440), "min", "purchase_amount", 86400
        ),
        Check(streaming_feature("c_max_10m", pb.FLOAT, "max", "purchase_amount", 10), "max", "purchase_amount", 600),
        Check(streaming_feature("c_last_1h", pb.STRING, "last", "product_id", 60), "last", "product_id", 3600),
        Check(
            streaming_feature("c_products_24h", pb.INT64, "count_distinct", "product_id", 1440),
            "count_distinct",
            "product_id",
            86400,
        ),
        Check(
            streaming_feature("c_web_10m", pb.INT64, "count", "", 10, steps=[web, times10]),
            "count",
            "",
            600,
            keep=lambda e: e["channel"] == "web",
            post=lambda v: v * 10,
        ),
        # Its filter reads the clock (pinned to each batch's stream time, which no kept event is after):
        # the inputs are then computed after the batch's events are read, not during the read.
        Check(
            streaming_feature(
                "c_until_now_1h",
                pb.INT64,
                "count",
                "",
                60,
                steps=[pb.Transformation(type="filter", expression="event_time <= current_timestamp()")],
            ),
            "count",
            "",
            3600,
        ),
    ]


def reference(check: Check, events: Sequence[dict[str, Any]], entity: str, as_of: int) -> Any:
    """The feature of `entity` as of stream time `as_of` (micros): its window's tiles up to A's tile."""
    last = as_of // TILE
    start, end = (last - check.window_s * 1_000_000 // TILE + 1) * TILE, (last + 1) * TILE
    mine = [
        e
        for e in events
        if e["customer_id"] == entity
        and start <= micros(datetime.fromisoformat(e["event_time"])) < end
        and check.keep(e)
    ]
    xs = [e[check.column] for e in mine] if check.column else [1] * len(mine)
    xs = [x for x in xs if x is not None]
    f = check.function
    if f == "count":
        value: Any = len(xs)
    elif f == "sum":
        value = sum(xs)
    elif f == "avg":
        value = sum(xs) / len(xs) if xs else None
    elif f in ("min", "max"):
        value = (min if f == "min" else max)(xs) if xs else None
    elif f == "last":
        pairs = [(micros(datetime.fromisoformat(e["event_time"])), e[check.column]) for e in mine]
        value = max(pairs)[1] if pairs else None
    else:
        value = len(set(xs))
    return None if value is None else check.post(value)


def purchase(rng: random.Random, at: datetime, customers: int) -> dict[str, Any]:
    return {
        "customer_id": f"customer{rng.randrange(customers)}",
        "product_id": f"product{rng.randrange(12)}",
        "purchase_amount": round(rng.uniform(1, 100), 2),
        "channel": rng.choice(["web", "app", "store"]),
        "event_time": at.isoformat(),
    }


def events_over(
    rng: random.Random, start: datetime, span: timedelta, n: int, customers: int, jitter_s: int = 120
) -> list[dict[str, Any]]:
    """`n` events in stream order, over `span` from `start`, each at most `jitter_s` behind the newest before it."""
    step = span / n
    return [purchase(rng, start + step * i - timedelta(seconds=rng.uniform(0, jitter_s)), customers) for i in range(n)]


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def served(client: FeatureStoreClient, entities: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{entity: {feature: (value, event time micros)}} of the values found."""
    request = fs.BatchGetFeaturesRequest(entity_type="customer", entity_ids=entities, feature_names=names)
    out: dict[str, dict[str, Any]] = {}
    for entity in client.store.BatchGetFeatures(request).entities:
        for f in entity.features:
            if f.status != fs.NOT_FOUND:
                at = micros(f.event_time.ToDatetime(tzinfo=UTC))
                out.setdefault(entity.entity_id, {})[f.name] = (python_value(f.value), at)
    return out

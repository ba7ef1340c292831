"""Demo purchase events for the streaming pipeline, and a way to append one by hand.

The demo stream `purchases` carries JSON events
`{"customer_id", "product_id", "purchase_amount", "channel", "event_time"}`; the
demo STREAMING features (`DEMO_FEATURES`) count and sum them per customer.

    python -m jobs.demo_events --rate 20                # customers customer0..customer999, forever
    python -m jobs.demo_events --event '{"customer_id": "customer123", "purchase_amount": 12.5}'

`--event` appends one event (its `event_time` defaults to now) and prints the entry id.
The Valkey/Redis URL is --redis-url (default: the stack `make up` runs).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import redis
from google.protobuf.duration_pb2 import Duration

from featurestore.registry.v1 import feature_pb2 as pb
from jobs._valkey_source import EVENT_FIELD, stream_key
from server import add_arguments, local_environment

STREAM = "purchases"
_FIELDS = [
    pb.EventField(name="customer_id", type=pb.STRING),
    pb.EventField(name="product_id", type=pb.STRING),
    pb.EventField(name="purchase_amount", type=pb.FLOAT),
    pb.EventField(name="channel", type=pb.STRING),
    pb.EventField(name="event_time", type=pb.TIMESTAMP),
]
_SOURCE = pb.SourceConfig(
    stream=STREAM, entity_column="customer_id", timestamp_column="event_time", fields=_FIELDS,
    watermark=Duration(seconds=300),
)  # fmt: skip


def _feature(name: str, description: str, value_type: int, function: str, column: str, hours: int) -> pb.Feature:
    window = Duration(seconds=hours * 3600)
    step = pb.Transformation(type="aggregation", function=function, column=column, window=window)
    return pb.Feature(
        name=name,
        description=description,
        entity_type="customer",
        value_type=value_type,  # type: ignore[arg-type]
        source=pb.STREAMING,
        category=pb.DERIVED,
        frequency=pb.REALTIME,
        owner="data-science-team",
        tags=["purchase", "realtime"],
        source_config=_SOURCE,
        transformations=[step],
    )


DEMO_FEATURES = (
    _feature("customer_purchase_count_1h", "Purchases by the customer in the last hour", pb.INT64, "count", "", 1),
    _feature(
        "customer_purchase_amount_sum_1h", "Purchase amount in the last hour", pb.FLOAT, "sum", "purchase_amount", 1
    ),
    _feature(
        "customer_purchase_amount_avg_24h",
        "Average purchase amount in the last 24 hours",
        pb.FLOAT,
        "avg",
        "purchase_amount",
        24,
    ),
)


def append(client: Any, event: Mapping[str, Any], *, stream: str = STREAM, partitions: int = 1) -> str:
    """Append one event to the stream key of its customer; the entry id."""
    key = stream_key(stream, str(event.get("customer_id", "")), partitions)
    entry_id = client.xadd(key, {EVENT_FIELD: json.dumps(event).encode()})
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def random_event(rng: random.Random, customers: int, now: datetime) -> dict[str, Any]:
    return {
        "customer_id": f"customer{rng.randrange(customers)}",
        "product_id": f"product{rng.randrange(200)}",
        "purchase_amount": round(rng.uniform(5, 300), 2),
        "channel": rng.choice(["web", "app", "store"]),
        "event_time": now.isoformat(),
    }


def produce(client: Any, rate: float, customers: int, partitions: int, seed: int | None = None) -> None:
    """Append `rate` random events per second, forever (customer123 gets one every few seconds)."""
    rng = random.Random(seed)
    tick, sent = time.monotonic(), 0
    while True:
        now = datetime.now(UTC)
        pipe = client.pipeline(transaction=False)
        due = max(1, int((time.monotonic() - tick) * rate) - sent)
        for i in range(due):
            event = random_event(rng, customers, now)
            if (sent + i) % max(1, int(rate * 3)) == 0:
                event["customer_id"] = "customer123"  # the seed's customer changes visibly
            key = stream_key(STREAM, event["customer_id"], partitions)
            pipe.xadd(key, {EVENT_FIELD: json.dumps(event).encode()})
        pipe.execute()
        sent += due
        time.sleep(max(0.0, tick + sent / rate - time.monotonic()))


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    environ = local_environment(os.environ) | os.environ if env is None else env
    p = argparse.ArgumentParser(prog="demo_events", description=__doc__.split("\n\n")[0])
    add_arguments(p, ["redis_url"], environ)
    p.add_argument("--rate", type=float, default=5.0, help="events per second")
    p.add_argument("--customers", type=int, default=1000)
    p.add_argument("--stream-partitions", type=int, default=int(environ.get("FEATURESTORE_STREAM_PARTITIONS", "1")))
    p.add_argument("--event", help="append this one JSON event and exit")
    args = p.parse_args(argv)
    client = redis.Redis.from_url(args.redis_url)
    if args.event:
        event = json.loads(args.event)
        event.setdefault("event_time", datetime.now(UTC).isoformat())
        print(append(client, event, partitions=args.stream_partitions))
        return 0
    try:
        produce(client, args.rate, args.customers, args.stream_partitions)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Demo purchase events for the streaming pipeline, and a way to append one by hand.

The demo stream `purchases` carries JSON events
`{"customer_id", "product_id", "purchase_amount", "channel", "event_time"}`; the
demo STREAMING features (definitions/streaming/) count and sum them per customer.

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

from jobs import EVENT_FIELD, stream_key
from server import add_arguments, local_environment

STREAM = "purchases"


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

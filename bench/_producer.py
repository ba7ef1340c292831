"""A steady event producer in a process of its own, for bench/streaming_bench.py.

    python bench/_producer.py valkey redis://127.0.0.1:6379/0 --rate 30000 --seconds 120
    python bench/_producer.py kafka 127.0.0.1:9092 --rate 30000 --seconds 120

Appends the demo purchase events (jobs.demo_events' shape, event time = now) at `--rate`
events/s, and once a second a `probe` customer's event. It is lean so that it takes little
of the machine the pipeline runs on: Valkey XADDs are written as pre-encoded RESP on a raw
socket (replies drained, not parsed), Kafka messages through confluent-kafka's C producer.
Prints `sent <seconds> <events>` every second and `probe <k> <event time>` for each probe
event, flushed, for the benchmark to read.
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs import EVENT_FIELD, stream_key

STREAM = "purchases"
_CHANNELS = ("web", "app", "store")


def _payload(rng: random.Random, customer: str, at: str, amount: float | None = None) -> bytes:
    amount = round(rng.uniform(5, 300), 2) if amount is None else amount
    return (
        f'{{"customer_id": "{customer}", "product_id": "product{rng.randrange(200)}", '
        f'"purchase_amount": {amount}, "channel": "{rng.choice(_CHANNELS)}", "event_time": "{at}"}}'
    ).encode()


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


class ValkeySink:
    """XADD <key> * <field> <payload>, pipelined on one socket; replies are read and dropped."""

    def __init__(self, url: str, partitions: int) -> None:
        parsed = urlparse(url)
        self.sock = socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379))
        self.sock.setblocking(False)
        if parsed.password:
            self.sock.setblocking(True)
            self.sock.sendall(b"*2\r\n" + _bulk(b"AUTH") + _bulk(str(parsed.password).encode()))
            self.sock.recv(64)
            self.sock.setblocking(False)
        self.partitions = partitions
        self.keys: dict[str, bytes] = {}
        self.field = _bulk(EVENT_FIELD)

    def key(self, customer: str) -> bytes:
        key = self.keys.get(customer)
        if key is None:
            key = self.keys[customer] = _bulk(stream_key(STREAM, customer, self.partitions).encode())
        return key

    def send(self, events: list[tuple[str, bytes]]) -> None:
        head = b"*5\r\n$4\r\nXADD\r\n"
        out = b"".join(head + self.key(c) + b"$1\r\n*\r\n" + self.field + _bulk(p) for c, p in events)
        view = memoryview(out)
        while view:
            self.drain()
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            view = view[sent:]
        self.drain()

    def drain(self) -> None:
        try:
            while self.sock.recv(1 << 20):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.sock.setblocking(True)
        self.sock.settimeout(2)
        self.drain_until_quiet()
        self.sock.close()

    def drain_until_quiet(self) -> None:
        try:
            while self.sock.recv(1 << 20):
                pass
        except (TimeoutError, OSError):
            pass


class KafkaSink:
    """confluent-kafka's producer, keyed by customer (one customer's events stay in one partition)."""

    def __init__(self, bootstrap: str, partitions: int) -> None:
        from confluent_kafka import Producer

        del partitions  # the topic's own; the key picks the partition
        self.producer: Any = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})

    def send(self, events: list[tuple[str, bytes]]) -> None:
        produce = self.producer.produce
        for customer, payload in events:
            while True:
                try:
                    produce(STREAM, payload, customer.encode())
                    break
                except BufferError:
                    self.producer.poll(0.01)
        self.producer.poll(0)

    def close(self) -> None:
        self.producer.flush(30)


def run(send: Callable[[list[tuple[str, bytes]]], None], rate: float, seconds: float, customers: int) -> int:
    rng = random.Random(3)
    names = [f"customer{i}" for i in range(customers)]
    start = time.monotonic()
    sent, probes, reported = 0, 0, 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) - sent
        at = datetime.now(UTC).isoformat()
        events = [(c, _payload(rng, c, at)) for c in (names[rng.randrange(customers)] for _ in range(due))]
        if int(elapsed) >= probes:
            probes += 1
            events.append(("probe", _payload(rng, "probe", at, 1.0)))
            print(f"probe {probes} {at}", flush=True)
        if events:
            send(events)
            sent += due
        if int(elapsed) > reported:
            reported = int(elapsed)
            print(f"sent {elapsed:.3f} {sent}", flush=True)
        time.sleep(0.005)
    print(f"sent {time.monotonic() - start:.3f} {sent}", flush=True)
    return sent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", choices=("valkey", "kafka"))
    p.add_argument("address", help="a redis:// URL, or Kafka bootstrap servers")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--customers", type=int, default=10_000)
    p.add_argument("--partitions", type=int, default=1)
    args = p.parse_args()
    sink: ValkeySink | KafkaSink = (
        ValkeySink(args.address, args.partitions)
        if args.source == "valkey"
        else KafkaSink(args.address, args.partitions)
    )
    run(sink.send, args.rate, args.seconds, args.customers)
    sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A steady event producer in a process of its own, for bench/streaming_bench.py.

    python bench/_producer.py valkey redis://127.0.0.1:6379/0 --rate 30000 --seconds 120
    python bench/_producer.py kafka 127.0.0.1:9092 --rate 30000 --seconds 120

Appends the demo purchase events (jobs.demo_events' shape, event time = now) at `--rate`
events/s, and once a second a `probe` customer's event. It stands in for producers that run
elsewhere, so it is lean, to take little of the machine the pipeline runs on: events are
assembled from precomputed parts, Valkey XADDs written as pre-encoded RESP on a raw socket
(replies drained, not parsed), Kafka messages through confluent-kafka's C producer.
Prints `sent <seconds> <events>` every second and `probe <k> <event time>` for each probe
event, flushed, for the benchmark to read.
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs import EVENT_FIELD, stream_key

STREAM = "purchases"
_CHANNELS = ("web", "app", "store")


class Events:
    """Demo purchase events, cheaply: each is a customer's precomputed head, one of 4,096 precomputed
    middles (product, amount, channel) and the tick's event time."""

    def __init__(self, customers: int, seed: int = 3) -> None:
        self.rng = random.Random(seed)
        self.customers = [f"customer{i}" for i in range(customers)] + ["probe"]
        self.heads = [f'{{"customer_id": "{c}", '.encode() for c in self.customers]
        self.middles = [self._middle(round(self.rng.uniform(5, 300), 2)) for _ in range(4096)]
        self.probe_middle = self._middle(1.0)

    def _middle(self, amount: float) -> bytes:
        product, channel = self.rng.randrange(200), self.rng.choice(_CHANNELS)
        text = f'"product_id": "product{product}", "purchase_amount": {amount}, "channel": "{channel}", '
        return (text + '"event_time": "').encode()

    def batch(self, n: int, at: bytes, probe: bool) -> list[tuple[int, bytes]]:
        """n random customers' events (customer index, JSON), then the probe's if `probe`."""
        picks = self.rng.choices(range(len(self.customers) - 1), k=n)
        middles = self.rng.choices(self.middles, k=n)
        tail = at + b'"}'
        events = [(c, self.heads[c] + m + tail) for c, m in zip(picks, middles, strict=True)]
        if probe:
            events.append((len(self.customers) - 1, self.heads[-1] + self.probe_middle + tail))
        return events


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


class ValkeySink:
    """XADD <key> * data <event>, pipelined on one socket as pre-encoded RESP; replies read and dropped."""

    def __init__(self, url: str, partitions: int, events: Events) -> None:
        parsed = urlparse(url)
        self.sock = socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379))
        if parsed.password:
            self.sock.sendall(b"*2\r\n" + _bulk(b"AUTH") + _bulk(str(parsed.password).encode()))
            self.sock.recv(64)
        self.sock.setblocking(False)
        field = _bulk(EVENT_FIELD)
        self.prefixes = [
            b"*5\r\n$4\r\nXADD\r\n" + _bulk(stream_key(STREAM, c, partitions).encode()) + b"$1\r\n*\r\n" + field
            for c in events.customers
        ]

    def send(self, events: list[tuple[int, bytes]]) -> None:
        prefixes = self.prefixes
        view = memoryview(b"".join(prefixes[c] + b"$%d\r\n%s\r\n" % (len(e), e) for c, e in events))
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
        self.sock.settimeout(1)
        try:
            while self.sock.recv(1 << 20):
                pass
        except (TimeoutError, OSError):
            pass
        self.sock.close()


class KafkaSink:
    """confluent-kafka's producer, keyed by customer (one customer's events stay in one partition)."""

    def __init__(self, bootstrap: str, events: Events) -> None:
        from confluent_kafka import Producer

        self.producer: Any = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.keys = [c.encode() for c in events.customers]

    def send(self, events: list[tuple[int, bytes]]) -> None:
        produce, keys = self.producer.produce, self.keys
        for customer, payload in events:
            while True:
                try:
                    produce(STREAM, payload, keys[customer])
                    break
                except BufferError:
                    self.producer.poll(0.01)
        self.producer.poll(0)

    def close(self) -> None:
        self.producer.flush(30)


def run(sink: ValkeySink | KafkaSink, events: Events, rate: float, seconds: float) -> int:
    start = time.monotonic()
    sent, probes, reported = 0, 0, 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) - sent
        at = datetime.now(UTC).isoformat()
        probe = int(elapsed) >= probes
        if due > 0 or probe:
            sink.send(events.batch(max(0, due), at.encode(), probe))
            sent += max(0, due)
        if probe:
            probes += 1
            print(f"probe {probes} {at}", flush=True)
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
    events = Events(args.customers)
    sink = (
        ValkeySink(args.address, args.partitions, events)
        if args.source == "valkey"
        else KafkaSink(args.address, events)
    )
    run(sink, events, args.rate, args.seconds)
    sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Streaming pipeline benchmark: drain rate of a backlog, and event-to-servable latency at a steady rate.

    .venv/bin/python bench/streaming_bench.py --backlog 200000 --rate 5000 --seconds 60

Starts PostgreSQL, Valkey and the server on loopback, registers the three streaming demo
features, and runs the streaming pipeline (jobs.streaming_pipeline's Streams) in a local[2]
Spark in this process. Then, in one run:

1. **drain**: --backlog demo purchases are appended to the source (--source: a Valkey
   stream, or a Kafka topic on Tansu) before the query starts; the micro-batches
   (--max-events-per-batch) are timed and the events/s of the batches after the first
   (Python workers warm) are reported: the sustained rate the pipeline keeps up with is at
   most this.
2. **ceiling**: the same events read back (redis-py XRANGE, or a confluent-kafka consumer)
   and parsed by the same parser (jobs._events), in this process: the source side alone.
3. **latency**: a producer process (bench/_producer.py) appends --rate events/s (event time =
   now) for --seconds, and once a second an event of a probe customer; a reader polls
   GetFeatures (gRPC) for the probe's `customer_purchase_count_1h` every 20 ms: the latency of
   probe event k is when the count first reaches k minus its event time. p50/p99 are
   reported, and the stream time's lag at the end.
4. **sustained**: the producer appends --sustain-rate events/s for --sustain-seconds (default
   30,000 for 120 s); the lag in events (sent minus processed) is sampled every 5 s and the
   run says whether it grew (see `sustain`).

The machine is shared and small: compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")  # before gRPC initializes: Spark forks its JVM

from devstack import (  # noqa: E402
    STREAMING_DEMO_FEATURES,
    free_port,
    start_postgres,
    start_server,
    start_tansu,
    start_valkey,
)
from featurestore import FeatureStoreClient  # noqa: E402
from featurestore.registry.v1 import feature_pb2 as pb  # noqa: E402
from featurestore.registry.v1 import registry_service_pb2 as rs  # noqa: E402
from featurestore.serving.v1 import feature_store_service_pb2 as fs  # noqa: E402
from jobs import (  # noqa: E402
    EVENT_FIELD,
    EventSchema,
    SessionConfig,
    StreamConfig,
    Streams,
    build_session,
    select_streaming,
    stream_key,
    to_batch,
    watch_streams,
)
from jobs.batch_pipeline import load_features  # noqa: E402
from jobs.demo_events import random_event  # noqa: E402

STREAM = "purchases"


def event_schema() -> EventSchema:
    feature = STREAMING_DEMO_FEATURES[0]
    fields = tuple((f.name, pb.ValueType.Name(f.type)) for f in feature.source_config.fields)
    return EventSchema(fields, "customer_id", "event_time")


class ValkeySource:
    """Events appended to the stream's keys (entities hashed over `partitions` keys)."""

    name = "Valkey Streams"

    def __init__(self, url: str, partitions: int) -> None:
        self.client: Any = redis.Redis.from_url(url)
        self.url, self.partitions = url, partitions

    def add(self, events: list[dict[str, Any]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            key = stream_key(STREAM, event["customer_id"], self.partitions)
            pipe.xadd(key, {EVENT_FIELD: json.dumps(event).encode()})
        pipe.execute()

    def ceiling(self) -> float:
        """Events/s of reading and parsing one key's backlog with one Python process (XRANGE + parse)."""
        key = stream_key(STREAM, "", self.partitions)  # the first key: its events are a share of the backlog
        schema, n = event_schema(), self.client.xlen(key)
        started, begin, read = time.perf_counter(), "-", 0
        while read < n:
            entries = self.client.xrange(key, min=begin, max="+", count=5000)
            if not entries:
                break
            to_batch(schema, ((STREAM, i.decode(), f.get(EVENT_FIELD, b"")) for i, f in entries))
            read += len(entries)
            begin = "(" + entries[-1][0].decode()
        return read / (time.perf_counter() - started)

    def config(self) -> dict[str, Any]:
        return {"source_url": self.url, "partitions": self.partitions}

    def producer_args(self) -> list[str]:
        return ["valkey", self.url, "--partitions", str(self.partitions)]


class KafkaSource:
    """Events produced to a topic of `partitions` partitions on Tansu (keyed by customer)."""

    name = "Kafka (Tansu)"

    def __init__(self, bootstrap: str, partitions: int, backlog: int, dead_letters_url: str) -> None:
        from confluent_kafka import Producer

        self.bootstrap, self.partitions, self.backlog = bootstrap, partitions, backlog
        self.dead_letters_url = dead_letters_url  # the pipeline's dead letters go to Valkey (--source-url)
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})

    def add(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            while True:
                try:
                    self.producer.produce(STREAM, key=event["customer_id"].encode(), value=json.dumps(event).encode())
                    break
                except BufferError:  # the local queue is full: let it drain
                    self.producer.poll(0.05)
        self.producer.flush(30)

    def ceiling(self) -> float:
        """Events/s of consuming and parsing the backlog with one Python process (confluent-kafka + parse)."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "ceiling", "enable.auto.commit": False})
        consumer.assign([TopicPartition(STREAM, p, OFFSET_BEGINNING) for p in range(self.partitions)])
        schema, read, started, deadline = event_schema(), 0, time.perf_counter(), time.monotonic() + 60
        while read < self.backlog and time.monotonic() < deadline:
            messages = [m for m in consumer.consume(5000, timeout=1.0) if m.error() is None]
            to_batch(schema, ((STREAM, str(m.offset()), m.value() or b"") for m in messages))
            read += len(messages)
        consumer.close()
        return read / (time.perf_counter() - started)

    def config(self) -> dict[str, Any]:
        return {"source": "kafka", "kafka_bootstrap": self.bootstrap, "source_url": self.dead_letters_url}

    def producer_args(self) -> list[str]:
        return ["kafka", self.bootstrap, "--partitions", str(self.partitions)]


class Producer:
    """bench/_producer.py in a process of its own (so that it does not take the driver's GIL); its
    progress (events sent, probe events' times) read from its output by a thread."""

    def __init__(self, target: list[str], rate: int, seconds: int, customers: int) -> None:
        command = [sys.executable, str(ROOT / "bench" / "_producer.py"), *target]
        command += ["--rate", str(rate), "--seconds", str(seconds), "--customers", str(customers)]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.started, self.sent, self.probes = time.monotonic(), 0, dict[int, float]()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            kind, first, second = line.split()
            if kind == "sent":
                self.sent = int(second)
            elif kind == "probe":
                self.probes[int(first)] = datetime.fromisoformat(second).timestamp()

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self) -> None:
        if self.proc.wait(60) != 0:
            raise RuntimeError(f"the producer failed: {self.proc.returncode}")
        self.reader.join(10)


def spark_phases(streams: Streams) -> str:
    """Where a micro-batch's time went, by Spark's own progress reports (the last 100 batches): planning
    (latestOffset: the source finding the batch's end), addBatch (our foreachBatch), the log commits."""
    totals: dict[str, list[float]] = {}
    for running in streams.running.values():
        for progress in running.query.recentProgress:
            for phase, ms in (progress.durationMs or {}).items():
                totals.setdefault(phase, []).append(float(ms))
    return ", ".join(f"{phase} {statistics.mean(v):,.0f}" for phase, v in sorted(totals.items()))


def sustain(
    reports: Callable[[], list[Any]],
    processed: Callable[[], int],
    streams: Streams,
    source: ValkeySource | KafkaSource,
    args: argparse.Namespace,
) -> None:
    """--sustain-rate events/s for --sustain-seconds from a producer process: does the lag grow?

    The lag (events sent minus events processed) is sampled every 5 s; after a 15 s warm-up its
    growth is the slope of a least-squares line through the samples. The pipeline keeps up when
    the lag grows by less than 2% of the rate per second and the stream time at the end is
    within 10 s of now.
    """
    before, first_batch = processed(), max((x.batch_id for x in reports()), default=-1)
    producer = Producer(source.producer_args(), args.sustain_rate, args.sustain_seconds, args.customers)
    samples: list[tuple[float, int, int]] = []
    while producer.running():
        time.sleep(5)
        samples.append((time.monotonic() - producer.started, producer.sent, processed() - before))
    producer.wait()
    last = reports()[-1] if reports() else None
    behind = (datetime.now(UTC) - last.stream_time).total_seconds() if last and last.stream_time else float("nan")
    warm = [(t, sent - done) for t, sent, done in samples if t >= 15]
    slope = statistics.linear_regression([t for t, _ in warm], [lag for _, lag in warm]).slope if len(warm) > 1 else 0.0
    first = next((x for x in samples if x[0] >= 15), samples[0])
    rate = (samples[-1][2] - first[2]) / max(1e-9, samples[-1][0] - first[0])
    for t, sent, done in samples:
        print(f"    t={t:5.1f}s sent {sent:>9,} processed {done:>9,} lag {sent - done:>8,} events")
    keeps_up = slope < 0.02 * args.sustain_rate and behind < 10
    ran = [x for x in reports() if x.batch_id > first_batch]
    if ran:
        count = ran[-1].batch_id - first_batch
        print(
            f"    {count} micro-batches, {(processed() - before) / count:,.0f} events each on average; "
            f"the last {len(ran)} took {statistics.mean(x.seconds for x in ran):.2f}s each in foreachBatch"
        )
    print(f"    per micro-batch (Spark's progress, mean ms): {spark_phases(streams)}")
    print(
        f"sustained run: {args.sustain_rate:,} events/s for {args.sustain_seconds}s, {args.customers:,} customers: "
        f"processed {rate:,.0f} events/s after warm-up; lag growth {slope:,.0f} events/s; stream time "
        f"{behind:.1f}s behind at the end: {'KEPT UP' if keeps_up else 'FELL BEHIND'}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backlog", type=int, default=200_000)
    p.add_argument("--max-events-per-batch", type=int, default=50_000)
    p.add_argument("--rate", type=int, default=5000)
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument("--trigger-seconds", type=float, default=0.5, help="the pipeline's --trigger-seconds")
    p.add_argument("--partitions", type=int, default=1, help="stream keys or topic partitions (read in parallel)")
    p.add_argument("--source", choices=("valkey", "kafka"), default="valkey", help="kafka: Tansu (Kafka protocol)")
    p.add_argument("--sustain-rate", type=int, default=30_000, help="events/s of the sustained run (0: skip it)")
    p.add_argument("--sustain-seconds", type=int, default=120)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="streaming-bench-"))
    procs = []
    try:
        pg = start_postgres(tmp / "pg", free_port(), durable=False)
        procs.append(pg)
        valkey = start_valkey(tmp / "valkey", free_port(), durable=False)
        procs.append(valkey)
        server = start_server(tmp, free_port(), str(pg.extra["dsn"]), str(valkey.extra["url"]))  # it migrates
        procs.append(server)
        target = f"127.0.0.1:{server.port}"
        client = FeatureStoreClient(target)
        for f in STREAMING_DEMO_FEATURES:
            client.registry.CreateFeature(rs.CreateFeatureRequest(feature=f))
        source: ValkeySource | KafkaSource
        if args.source == "kafka":
            broker = start_tansu(tmp / "tansu", free_port(), {STREAM: args.partitions})
            procs.append(broker)
            bootstrap = str(broker.extra["bootstrap"])
            source = KafkaSource(bootstrap, args.partitions, args.backlog, str(valkey.extra["url"]))
        else:
            source = ValkeySource(str(valkey.extra["url"]), args.partitions)
        rng = random.Random(1)
        t0 = time.perf_counter()
        for start in range(0, args.backlog, 5000):
            at = datetime.now(UTC)
            source.add([random_event(rng, args.customers, at) for _ in range(min(5000, args.backlog - start))])
        print(f"backlog: {args.backlog} events appended to {source.name} in {time.perf_counter() - t0:.1f}s")
        ceiling = source.ceiling()
        print(f"ceiling: reading + parsing in one process: {ceiling:,.0f} events/s")

        spark = build_session(
            SessionConfig(master="local[2]", shuffle_partitions=2, conf={"spark.ui.enabled": "false"}),
            "streaming-bench",
        )
        config = StreamConfig(
            redis_url=str(valkey.extra["url"]),
            postgres_dsn=str(pg.extra["dsn"]),
            checkpoint_dir=str(tmp / "checkpoints"),
            max_events_per_batch=args.max_events_per_batch,
            trigger_seconds=args.trigger_seconds,
            **source.config(),
        )
        lines: list[str] = []
        streams = Streams(spark, config, lines.append)
        stop = threading.Event()
        watcher = threading.Thread(
            target=watch_streams,
            args=(streams, lambda: select_streaming(load_features(target, ["customer"]), ["customer"])),
            kwargs={"poll": 2.0, "stop": stop},
            daemon=True,
        )
        watcher.start()

        def reports() -> list[Any]:
            return [x for running in list(streams.running.values()) for x in running.batch.reports]

        def processed() -> int:
            return sum(running.batch.rows_read for running in list(streams.running.values()))

        while processed() < args.backlog:
            time.sleep(0.5)
        drained = reports()
        warm = drained[1:] or drained
        rows, seconds = sum(x.rows for x in warm), sum(x.seconds for x in warm)
        drain = rows / seconds if seconds else 0.0
        print(f"drain: {len(drained)} batches; warm batches {rows:,} events in {seconds:.1f}s = {drain:,.0f} events/s")
        print(f"    per micro-batch (Spark's progress, mean ms): {spark_phases(streams)}")
        for line in lines[-3:]:
            print("   ", line[:200])

        # Latency at a steady rate: the producer runs in a process of its own.
        before = processed()
        producer = Producer(source.producer_args(), args.rate, args.seconds, args.customers)
        request = fs.GetFeaturesRequest(
            entity_type="customer", entity_id="probe", feature_names=["customer_purchase_count_1h"]
        )
        latencies: list[float] = []
        seen = 0
        while producer.running() or time.monotonic() < producer.started + args.seconds:
            reply = client.store.GetFeatures(request)
            value = reply.features[0]
            count = value.value.int64_value if value.status == fs.PRESENT else 0
            now = time.time()
            for k in range(seen + 1, count + 1):
                if k in producer.probes:
                    latencies.append(now - producer.probes[k])
            seen = max(seen, count)
            time.sleep(0.02)
        producer.wait()
        last = reports()[-1] if reports() else None
        lag = (datetime.now(UTC) - last.stream_time).total_seconds() if last and last.stream_time else float("nan")
        print(
            f"latency run: {args.rate} events/s for {args.seconds}s; {producer.sent:,} sent, "
            f"{processed() - before:,} processed; "
            f"lag at the end {lag:.1f}s; probe events servable: {len(latencies)} of {len(producer.probes)}"
        )
        if latencies:
            ordered = sorted(latencies)
            p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
            print(f"event-to-servable: p50 {statistics.median(ordered):.2f}s, p99 {p99:.2f}s (target p99 <= 3 s)")
        if args.sustain_rate:
            sustain(reports, processed, streams, source, args)
        print(f"drain {drain:,.0f} events/s ({drain / 30000:.2f} of 30,000); source ceiling {ceiling:,.0f}/s")
        stop.set()
        watcher.join(30)
        streams.stop()
        spark.stop()
    finally:
        for proc in reversed(procs):
            proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

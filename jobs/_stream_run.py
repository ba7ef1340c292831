"""One streaming query per (entity type, stream): micro-batches from events to online and offline values.

Each micro-batch (`MicroBatch`, Spark's foreachBatch) of a query:

1. reads the stream clock: the greatest event time of the batches before it
   (kept in Valkey per query and batch id, so a replayed batch sees the same);
   the watermark is that time minus the stream's `watermark`;
2. dead-letters the malformed events (reason and original bytes) to
   `<stream>:dead-letter` with ids derived from the batch id (a replay adds nothing);
3. drops and counts the events older than the watermark;
4. aggregates the others into tiles, merges them into the tile store (once per
   batch id per entity), combines each touched entity's tiles into its windows as
   of the new stream time, and writes the values through the batch pipeline's
   sink (the same encoder, history first, only-newer online writes), with the
   stream time as event time: a replay writes the same rows again.

Spark reads the batch (the source partitions in parallel, with the features'
inputs computed in the same pass unless they read the clock) and hands it to
the driver as Arrow; steps 1-4 run there, in one process: no shuffle and no
Python stages on the executors, so a small batch costs little.

A kill -9 anywhere replays the unfinished batch with the same offsets (Spark's
checkpoint), and every step above is idempotent per batch id: nothing is lost,
nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import redis
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming.query import StreamingQuery

from jobs import _tiles
from jobs._events import ERROR, KEY, OFFSET, RAW
from jobs._freshness import note_freshness
from jobs._guard import disallowed_expressions
from jobs._kafka_source import NAME as KAFKA_SOURCE
from jobs._kafka_source import KafkaEvents, parse_records
from jobs._metrics import PipelineMetrics
from jobs._sink import SinkConfig, write_batches
from jobs._stream_plan import StreamPlan
from jobs._valkey_source import NAME as VALKEY_SOURCE
from jobs._valkey_source import ValkeyStreams

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FRESHNESS_WRITER = "streaming_pipeline"


def _moment(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """Where a streaming query reads and writes."""

    redis_url: str  # the online store (and the tile store beside it)
    postgres_dsn: str
    source_url: str  # the Valkey/Redis holding the event streams
    checkpoint_dir: str
    partitions: int = 1  # stream keys per stream
    max_events_per_batch: int = 100_000  # 0 = everything available
    trigger_seconds: float = 1.0
    online_ttl: int = 0
    redis_cluster: bool = False
    source: str = "valkey"  # or "kafka"
    kafka_bootstrap: str = ""
    kafka_reader: str = "python"  # or "native": Spark's Kafka connector (format "kafka") when on the classpath
    kafka_options: tuple[tuple[str, str], ...] = ()  # librdkafka / Kafka client settings (SASL, SSL, ...)


@dataclass(slots=True)
class BatchReport:
    """What one micro-batch did."""

    query: str
    batch_id: int
    rows: int = 0
    dead_lettered: int = 0
    late_dropped: int = 0
    entities: int = 0
    values: int = 0
    seconds: float = 0.0
    watermark: datetime | None = None
    stream_time: datetime | None = None

    def line(self) -> str:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        wm = self.watermark.isoformat() if self.watermark else "-"
        lag = f"{(datetime.now(UTC) - self.stream_time).total_seconds():.1f}s" if self.stream_time else "-"
        return (
            f"streaming {self.query} batch {self.batch_id}: {self.rows} events in {self.seconds:.2f}s "
            f"({rate:.0f}/s), {self.dead_lettered} dead-lettered, {self.late_dropped} late dropped, "
            f"{self.entities} entities -> {self.values} values, watermark {wm}, "
            f"stream time {self.stream_time.isoformat() if self.stream_time else '-'} (lag {lag})"
        )


def query_id(checkpoint: Path) -> str:
    """The query's id, kept in its checkpoint: a new checkpoint starts from fresh tiles and clock."""
    return str(json.loads((checkpoint / "metadata").read_text())["id"])


_WRITE_ROWS = 2_000  # entities per sink batch: encoding, history COPY and online writes overlap across them
DEAD_LETTERS_PER_BATCH = 10_000  # malformed events written to the dead-letter stream per micro-batch, at most
DEAD_LETTERS_KEPT = 1_000_000  # entries the dead-letter stream keeps, about (XADD MAXLEN ~)


def dead_letter_key(stream: str) -> str:
    return f"{stream}:dead-letter"


class _Clock:
    """The greatest event time seen before and after each batch, per query (replays see the same)."""

    def __init__(self, client: Any, key: str) -> None:
        self.client, self.key = client, key

    def before(self, batch_id: int) -> int | None:
        stored = self.client.hgetall(self.key)
        if stored and int(stored[b"batch"]) == batch_id:  # a replay: the time it saw the first time
            raw = stored[b"before"]
        else:
            raw = stored.get(b"after", b"") if stored else b""
        return int(raw) if raw else None

    def commit(self, batch_id: int, before: int | None, after: int | None) -> None:
        self.client.hset(
            self.key,
            mapping={"batch": batch_id, "before": "" if before is None else before, "after": after or ""},
        )


def guard_problems(spark: SparkSession, plan: StreamPlan) -> dict[str, str]:
    """The features whose computation Spark does not accept, or whose analyzed plan is not allow-listed."""
    events = spark.createDataFrame([], plan.schema.sql())
    now = datetime.now(UTC)
    failed = {}
    for feature in plan.features:
        try:
            computed = events.select(_tiles.feature_input(feature, now))
            value = spark.range(0).select(F.lit(None).cast("double").alias(feature.name))
            single = StreamPlan(plan.entity_type, plan.stream, plan.schema, plan.watermark_seconds, (feature,))
            refused = disallowed_expressions(computed) + disallowed_expressions(_tiles.finish(value, single, now))
        except (PySparkException, ValueError) as err:
            failed[feature.name] = str(err).strip().splitlines()[0]
            continue
        if refused:
            failed[feature.name] = f"refused: its computation uses {', '.join(sorted(set(refused)))}"
    return failed


@dataclass
class MicroBatch:
    """The foreachBatch function of one query; `plan` may be swapped while it runs (new features)."""

    plan: StreamPlan
    config: StreamConfig
    checkpoint: Path
    progress: Callable[[str], None] = print
    reports: list[BatchReport] = field(default_factory=list)  # the last 100
    rows_read: int = 0  # events of every batch run so far (replays included)
    metrics: PipelineMetrics | None = None  # each micro-batch is a run: rows read, values written
    _query_id: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, plan: StreamPlan) -> None:
        with self._lock:
            self.plan = plan

    def __call__(self, df: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        with self._lock:
            plan = self.plan
        if self._query_id is None:
            self._query_id = query_id(self.checkpoint)
        report = BatchReport(plan.query_name, batch_id)
        if self.metrics is not None:
            self.metrics.started()
        online = redis.Redis.from_url(self.config.redis_url, socket_timeout=30)
        source = redis.Redis.from_url(self.config.source_url, socket_timeout=30)
        try:
            self._process(df, batch_id, plan, report, online, source)
        finally:
            online.close()
            source.close()
        report.seconds = time.monotonic() - started
        self.reports.append(report)
        del self.reports[:-100]
        self.rows_read += report.rows
        self.progress(report.line())
        if self.metrics is not None:
            self.metrics.finished(rows_read=report.rows, values_written=report.values, failed_features=0)
            applied = report.rows - report.dead_lettered - report.late_dropped
            self.metrics.events(applied=applied, dead_lettered=report.dead_lettered, late_dropped=report.late_dropped)

    def _process(
        self, df: DataFrame, batch_id: int, plan: StreamPlan, report: BatchReport, online: Any, source: Any
    ) -> None:
        clock = _Clock(online, f"fs:stream-clock:{self._query_id}")
        before = clock.before(batch_id)
        watermark = None if before is None else before - plan.watermark_seconds * 1_000_000
        good_rows = F.col(ERROR).isNull()
        clockless = not _tiles.uses_clock(plan)  # then the inputs are computed in the same pass as the read
        read = _tiles.with_inputs(df, plan, good_rows) if clockless else df
        events = read.toArrow()  # the one distributed step: the sources' partitions read and parsed in parallel
        good = pc.is_null(events.column(ERROR))
        micros = pc.cast(events.column(plan.schema.time), pa.int64())
        keep = good if watermark is None else pc.and_(good, pc.greater_equal(micros, watermark))
        report.rows = events.num_rows
        bad = report.rows - pc.sum(good).as_py() if report.rows else 0
        kept = pc.sum(keep).as_py() or 0
        report.late_dropped = report.rows - bad - kept
        report.watermark = _moment(watermark) if watermark is not None else None
        if bad:
            report.dead_lettered = self._dead_letter(events.filter(pc.invert(good)), batch_id, plan, source)
        newest = pc.max(pc.filter(micros, good)).as_py() if report.rows > bad else None
        after = max(x for x in (before, newest) if x is not None) if (before, newest) != (None, None) else None
        clock.commit(batch_id, before, after)
        report.stream_time = _moment(after) if after is not None else None
        if after is None or not kept:
            return
        as_of = _moment(after)
        spark = df.sparkSession
        if clockless:
            inputs = _tiles.added_inputs(events.filter(keep), plan)
        else:
            fields = events.filter(keep).select([name for name, _ in plan.schema.fields])
            inputs = _tiles.transform_inputs(spark.createDataFrame(fields), plan, as_of).toArrow()
        # Each chunk of merged entities goes to the sink as it is merged: its encoding, COPY and online
        # write overlap the next chunk's merge (the sink pulls batches from a thread of its own).
        windows = _tiles.merge_windows(online, self._query_id or "", batch_id, plan, after, inputs.to_batches())
        if _tiles.needs_finish(plan):
            merged = pa.Table.from_batches(list(windows))
            windows = iter(_tiles.finish(spark.createDataFrame(merged), plan, as_of).toArrow().to_batches(_WRITE_ROWS))
        sink = SinkConfig(
            redis_url=self.config.redis_url,
            redis_cluster=self.config.redis_cluster,
            postgres_dsn=self.config.postgres_dsn,
            entity_type=plan.entity_type,
            features=tuple((f.name, f.value_kind) for f in plan.features),
            event_micros=after,
            online_ttl=self.config.online_ttl,
        )
        totals = asyncio.run(write_batches(sink, windows))
        report.values, report.entities = totals.values, totals.entities
        self._record_freshness(plan, as_of)

    def _record_freshness(self, plan: StreamPlan, as_of: datetime) -> None:
        """The server's freshness gauges: the plan's features now hold values as of the stream time."""
        newest = {f.name: (as_of, plan.entity_type) for f in plan.features}
        if problem := note_freshness(self.config.postgres_dsn, newest, FRESHNESS_WRITER):
            self.progress(f"streaming: freshness summary not updated: {problem}")

    def _dead_letter(self, malformed: pa.Table, batch_id: int, plan: StreamPlan, source: Any) -> int:
        """Append the batch's malformed events to the dead-letter stream; how many there were.

        At most DEAD_LETTERS_PER_BATCH of them are kept per batch: a flood of malformed events is
        counted, not all appended; the stream keeps about DEAD_LETTERS_KEPT entries (MAXLEN ~)."""
        total: int = malformed.num_rows
        first = pc.sort_indices(malformed, [(KEY, "ascending"), (OFFSET, "ascending")])[:DEAD_LETTERS_PER_BATCH]
        bad = malformed.take(first).select([KEY, OFFSET, ERROR, RAW]).to_pylist()  # the same ones on a replay
        if total > len(bad):
            self.progress(
                f"streaming: {total} malformed events in batch {batch_id}, the first {len(bad)} dead-lettered"
            )
        pipe = source.pipeline(transaction=False)
        for seq, row in enumerate(bad, start=1):
            entry = {"reason": row[ERROR], "source": row[KEY], "offset": row[OFFSET], "batch": batch_id}
            entry["data"] = bytes(row[RAW] or b"")
            pipe.xadd(
                dead_letter_key(plan.stream),
                entry,
                id=f"{batch_id + 1}-{seq}",
                maxlen=DEAD_LETTERS_KEPT,
                approximate=True,
            )
        for result in pipe.execute(raise_on_error=False):
            if isinstance(result, redis.ResponseError) and "equal or smaller" not in str(result):
                raise result
        return total


def _events(spark: SparkSession, plan: StreamPlan, config: StreamConfig) -> DataFrame:
    """The stream's event rows (jobs/_events.py) from the configured source."""
    if config.source == "kafka" and config.kafka_reader == "native":
        reader = (
            spark.readStream.format("kafka")
            .option("kafka.bootstrap.servers", config.kafka_bootstrap)
            .option("subscribe", plan.stream)
            .option("startingOffsets", "earliest")
            .option("failOnDataLoss", "true")
        )
        for key, value in config.kafka_options:
            reader = reader.option(f"kafka.{key}", value)
        if config.max_events_per_batch:
            reader = reader.option("maxOffsetsPerTrigger", str(config.max_events_per_batch))
        records = reader.load().select("topic", "partition", "offset", "value")
        return records.mapInArrow(parse_records(plan.schema), plan.schema.sql())
    if config.source == "kafka":
        spark.dataSource.register(KafkaEvents)
        reader = (
            spark.readStream.format(KAFKA_SOURCE)
            .option("bootstrap", config.kafka_bootstrap)
            .option("topic", plan.stream)
            .option("kafka_config", json.dumps(dict(config.kafka_options)))
        )
    else:
        spark.dataSource.register(ValkeyStreams)
        reader = (
            spark.readStream.format(VALKEY_SOURCE)
            .option("url", config.source_url)
            .option("stream", plan.stream)
            .option("partitions", str(config.partitions))
        )
    reader = reader.option("schema", plan.schema.to_json())
    return reader.option("max_events_per_batch", str(config.max_events_per_batch)).load()


def start_query(spark: SparkSession, batch: MicroBatch) -> StreamingQuery:
    """Start (or resume from its checkpoint) the query computing `batch.plan`."""
    plan, config = batch.plan, batch.config
    writer = (
        _events(spark, plan, config)
        .writeStream.queryName(plan.query_name)
        .foreachBatch(batch)
        .option("checkpointLocation", str(batch.checkpoint))
        .trigger(processingTime=f"{config.trigger_seconds} seconds")
    )
    return writer.start()

"""Kafka as a Spark streaming source (PySpark's Python Data Source API, confluent-kafka).

A topic's partitions are the Spark partitions; producers key events by entity id,
so one entity's events stay in order in one partition. Offsets are
{partition: next offset to read}, checkpointed by Spark. The end of a partition
is found by reading to end-of-partition (some brokers' ListOffsets "latest"
lags the real end), at most `max_events_per_batch` spread over the partitions.
A checkpointed offset below the partition's first retained offset (deleted by
retention) or above its end (the topic was recreated) fails the query loudly.
The broker's high watermark is trusted as a lower bound of the end: a batch reads
only the messages beyond it to find the real end, for at most 0.2 s (a producer
writing faster than that read is not chased: the next batch goes on from there).

Where Spark's own Kafka connector is on the classpath (production images),
`--kafka-reader=native` reads with `format("kafka")` instead and `parse_records`
turns its rows into the same event rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadLimit, ReadMaxRows
from pyspark.sql.types import StructType

from jobs._events import EventSchema, to_batch
from jobs._valkey_source import SourceDataLoss

NAME = "kafka_events"
_POLL_SECONDS = 0.1
_CHASE_SECONDS = 0.2  # at most this long reading past the high watermarks to find a batch's end
_IDLE_POLLS_MAX = 600  # a minute without a message or end-of-partition: the broker lost the range


def _consumer(config: dict[str, str]) -> Any:
    from confluent_kafka import Consumer

    settings = {
        "group.id": "featurestore-streaming",  # never committed: Spark's checkpoint holds the offsets
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "session.timeout.ms": 6000,
        "fetch.wait.max.ms": 20,  # a micro-batch waits for end-of-partition, not for a full fetch
        "auto.offset.reset": "error",  # an offset no longer there is an error (data loss), never a jump
        **config,
    }
    return Consumer(settings)


class _Range(InputPartition):
    def __init__(self, partition: int, start: int, end: int) -> None:
        self.partition, self.start, self.end = partition, start, end


def _end_of_partition(error: Any, topic: str, partition: int, at: int) -> None:
    """Returns when a message's `error` is end-of-partition; raises for any other (an offset no longer
    there, with auto.offset.reset=error, is SourceDataLoss)."""
    from confluent_kafka import KafkaError

    if error.code() == KafkaError._AUTO_OFFSET_RESET:
        raise SourceDataLoss(f"kafka {topic}[{partition}]: offset {at} is gone: {error}")
    if error.code() != KafkaError._PARTITION_EOF:
        raise RuntimeError(f"kafka {topic}[{partition}]: {error}")


def _read(consumer: Any, topic: str, partition: int, start: int, end: int) -> Iterator[list[Any]]:
    """Messages of one partition from `start` to `end` (exclusive), in chunks: a planned batch's range,
    known to exist, so reaching end-of-partition before `end` means the events are gone: SourceDataLoss."""
    from confluent_kafka import TopicPartition

    consumer.assign([TopicPartition(topic, partition, start)])
    at, idle = start, 0
    while at < end:
        # Never ask for more than the range holds: consume() waits out its timeout for a full count.
        messages = consumer.consume(num_messages=min(5000, end - at), timeout=_POLL_SECONDS)
        chunk, eof = [], False
        for m in messages:
            error = m.error()
            if error is not None:
                _end_of_partition(error, topic, partition, at)
                eof = True
                continue
            if m.offset() >= end:
                break
            chunk.append(m)
            at = m.offset() + 1
        if chunk:
            yield chunk
        idle = 0 if messages else idle + 1
        if eof and at < end:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
            if high < end:
                raise SourceDataLoss(f"kafka {topic}[{partition}]: offsets {at} to {end} are gone")
            return  # the range's last offsets hold no messages (transaction markers, compaction)
        if idle > _IDLE_POLLS_MAX:
            raise SourceDataLoss(f"kafka {topic}[{partition}]: offsets {at} to {end} are gone")


def _chase(consumer: Any, topic: str, starts: dict[int, int], stops: dict[int, int | None]) -> dict[int, int]:
    """How far each partition's messages reach past `starts` (the broker's high watermarks, which may lag):
    read to end-of-partition or `stops`, for at most _CHASE_SECONDS, all partitions at once. What is read
    by then is a valid end; a producer writing faster than this reads is not chased (the next batch
    continues from here)."""
    from confluent_kafka import TopicPartition

    ends = dict(starts)
    waiting = {p for p, at in starts.items() if stops[p] is None or at < (stops[p] or 0)}
    if not waiting:
        return ends
    consumer.assign([TopicPartition(topic, p, starts[p]) for p in sorted(waiting)])
    deadline = time.monotonic() + _CHASE_SECONDS
    while waiting and time.monotonic() < deadline:
        for m in consumer.consume(num_messages=5000, timeout=0.02):
            p, error, stop = m.partition(), m.error(), stops.get(m.partition())
            if p not in waiting:
                continue
            if error is not None:
                _end_of_partition(error, topic, p, starts[p])
                waiting.discard(p)
            elif stop is not None and m.offset() >= stop:
                waiting.discard(p)
            elif m.offset() >= ends[p]:
                ends[p] = m.offset() + 1
    return ends


class KafkaStreamReader(DataSourceStreamReader):
    def __init__(self, options: dict[str, str]) -> None:
        self.topic = options["topic"]
        self.config = {"bootstrap.servers": options["bootstrap"], **json.loads(options.get("kafka_config", "{}"))}
        self.schema = EventSchema.from_json(options["schema"])
        self.max_rows = int(options.get("max_events_per_batch", "0"))

    def _partitions(self, consumer: Any) -> list[int]:
        topics = consumer.list_topics(self.topic, timeout=30).topics
        meta = topics.get(self.topic)
        if meta is None or meta.error is not None:
            raise RuntimeError(f"kafka topic {self.topic} not found")
        return sorted(meta.partitions)

    def initialOffset(self) -> dict[str, int]:
        from confluent_kafka import TopicPartition

        consumer = _consumer(self.config)
        try:
            return {
                str(p): consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=30)[0]
                for p in self._partitions(consumer)
            }
        finally:
            consumer.close()

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxRows(self.max_rows) if self.max_rows > 0 else ReadAllAvailable()

    def latestOffset(self, start: dict[str, int], limit: ReadLimit) -> dict[str, int]:
        consumer = _consumer(self.config)
        try:
            partitions = self._partitions(consumer)
            budget = limit.max_rows if isinstance(limit, ReadMaxRows) else 0
            begins = {p: int(start.get(str(p), 0)) for p in partitions}
            highs = self._highs(consumer, begins)
            shares = self._shares(begins, highs, budget)
            # The broker's high watermark is trusted as a lower bound of the end (some brokers' lags):
            # only the messages past it are read.
            stops = {p: begins[p] + shares[p] if budget else None for p in partitions}
            known = {p: max(begins[p], highs[p]) for p in partitions}
            ends = {p: stop for p, stop in stops.items() if stop is not None and stop <= known[p]}
            ends.update(_chase(consumer, self.topic, {p: known[p] for p in partitions if p not in ends}, stops))
            for p in partitions:
                if ends[p] == begins[p] and begins[p] > 0:
                    self._check_not_beyond(consumer, p, begins[p])
            return {str(p): ends[p] for p in partitions}
        finally:
            consumer.close()

    def _highs(self, consumer: Any, begins: dict[int, int]) -> dict[int, int]:
        """Each partition's high watermark; fails on a checkpointed offset before the retained data."""
        from confluent_kafka import TopicPartition

        highs = {}
        for p, begin in begins.items():
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=30)
            if begin < low:
                raise SourceDataLoss(
                    f"kafka {self.topic}[{p}]: checkpointed offset {begin} is before the first retained "
                    f"offset {low}: events were deleted before they were read; refusing to continue"
                )
            highs[p] = high
        return highs

    @staticmethod
    def _shares(begins: dict[int, int], highs: dict[int, int], budget: int) -> dict[int, int]:
        """Each partition's part of a batch's budget, in proportion to its backlog (as Spark's Kafka source
        does), so that partitions progress alike in event time."""
        backlog = {p: max(0, highs[p] - begin) for p, begin in begins.items()}
        total = sum(backlog.values())
        if not budget or not total:
            return {p: budget // max(1, len(begins)) or 1 for p in begins}
        return {p: max(1, budget * n // total) if n else 1 for p, n in backlog.items()}

    def _check_not_beyond(self, consumer: Any, partition: int, begin: int) -> None:
        """Nothing new after `begin`: fail loudly if the partition does not even reach it (recreated)."""
        from confluent_kafka import TopicPartition

        _, high = consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=30, cached=True)
        if high >= 0 and high < begin:
            raise SourceDataLoss(
                f"kafka {self.topic}[{partition}]: checkpointed offset {begin} is beyond the partition's end "
                f"{high} (was the topic recreated?); refusing to continue"
            )

    def partitions(self, start: dict[str, int], end: dict[str, int]) -> Sequence[InputPartition]:
        return [
            _Range(int(p), int(start.get(p, 0)), int(stop))
            for p, stop in end.items()
            if int(stop) > int(start.get(p, 0))
        ]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        assert isinstance(partition, _Range)
        consumer = _consumer(self.config)
        key = f"{self.topic}:{partition.partition}"
        try:
            for chunk in _read(consumer, self.topic, partition.partition, partition.start, partition.end):
                yield to_batch(self.schema, ((key, str(m.offset()), m.value() or b"") for m in chunk))
        finally:
            consumer.close()

    def commit(self, end: dict[str, int]) -> None:
        pass


class KafkaEvents(DataSource):
    """`spark.readStream.format("kafka_events")`: bootstrap, topic, schema, kafka_config, max_events_per_batch."""

    @classmethod
    def name(cls) -> str:
        return NAME

    def schema(self) -> str:
        return EventSchema.from_json(self.options["schema"]).sql()

    def streamReader(self, schema: StructType) -> DataSourceStreamReader:
        return KafkaStreamReader(dict(self.options))


def parse_records(schema: EventSchema) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """mapInArrow over Spark's Kafka rows (topic, partition, offset, value): the event rows."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            topics, partitions = batch.column("topic").to_pylist(), batch.column("partition").to_pylist()
            offsets, values = batch.column("offset").to_pylist(), batch.column("value").to_pylist()
            records = zip(topics, partitions, offsets, values, strict=True)
            yield to_batch(schema, ((f"{t}:{p}", str(o), v or b"") for t, p, o, v in records))

    return run

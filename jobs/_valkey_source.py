"""Valkey/Redis Streams as a Spark streaming source (PySpark's Python Data Source API).

A logical stream is N stream keys (`<stream>` when N = 1, else `<stream>:0` ...
`<stream>:<N-1>`); a producer appends an entity's events to key
`stream_key(stream, entity_id, N)`, so one entity's events stay in order in one
key and the keys are read in parallel, one Spark partition each. An event is a
stream entry whose field `data` holds the JSON document.

Offsets are {key: last entry id read}; Spark checkpoints them, and a restarted
query replays a batch with the same offsets (the sink is idempotent per batch).
A batch's end is found from XINFO STREAM (newest entry, entries ever added)
without reading the entries, unless the backlog may exceed the batch's budget.
A checkpointed offset beyond a key's data (the key was deleted or recreated), or
every entry from it to the oldest one left deleted (XDEL) before it was read,
fails the query loudly instead of skipping. Other removals (XDEL in between,
XTRIM, MAXLEN/MINID) are not detected: remove entries only behind every
consumer's checkpoint.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadLimit, ReadMaxRows
from pyspark.sql.types import StructType

from jobs._events import EventSchema, to_batch

NAME = "valkey_streams"
EVENT_FIELD = b"data"
_READ_COUNT = 5_000  # entries per XRANGE call


def stream_keys(stream: str, partitions: int) -> list[str]:
    return [stream] if partitions == 1 else [f"{stream}:{i}" for i in range(partitions)]


def stream_key(stream: str, entity_id: str, partitions: int) -> str:
    """The key an entity's events go to: a stable hash of its id over the stream's keys."""
    return stream_keys(stream, partitions)[zlib.crc32(entity_id.encode()) % partitions]


def _id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class SourceDataLoss(RuntimeError):
    """The checkpointed position is not in the stream any more: reading on would lose or skip events."""


class _Range(InputPartition):
    def __init__(self, key: str, start: str, end: str) -> None:
        self.key, self.start, self.end = key, start, end


def _connect(url: str) -> Any:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=30)
    client.set_response_callback("XRANGE", _entries)
    return client


def _entries(response: Any, **_options: Any) -> list[tuple[bytes, list[bytes]]]:
    """XRANGE's reply as the parser built it, [id, [field, value, ...]] per entry (redis-py would build a
    dict per entry in Python: a third of the read's cost)."""
    return response or []


def _event(fields: list[bytes]) -> bytes:
    """The entry's `data` field (b"" when it has none)."""
    if fields and fields[0] == EVENT_FIELD:
        return fields[1]
    pairs = dict(zip(fields[::2], fields[1::2], strict=False))
    return pairs.get(EVENT_FIELD, b"")


class ValkeyStreamReader(DataSourceStreamReader):
    def __init__(self, options: dict[str, str]) -> None:
        self.url = options["url"]
        self.keys = stream_keys(options["stream"], int(options.get("partitions", "1")))
        self.schema = EventSchema.from_json(options["schema"])
        self.max_rows = int(options.get("max_events_per_batch", "0"))
        self._client: Any = None
        # key -> (an id a batch ended at, how many entries had been added up to it, at most): the backlog
        # after that id is then at most XINFO's entries-added minus it, found without reading the entries.
        self._ordinals: dict[str, tuple[str, int]] = {}

    def __getstate__(self) -> dict[str, Any]:  # pickled to the Python workers without its connection
        return {k: v for k, v in self.__dict__.items() if k != "_client"} | {"_client": None}

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _connect(self.url)
        return self._client

    def initialOffset(self) -> dict[str, str]:
        return dict.fromkeys(self.keys, "0-0")

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxRows(self.max_rows) if self.max_rows > 0 else ReadAllAvailable()

    def _check(self, key: str, start: str, info: dict[Any, Any] | None) -> None:
        if start == "0-0":
            return
        last = _text(info["last-generated-id"]) if info else "0-0"
        if _id(last) < _id(start):
            raise SourceDataLoss(
                f"stream {key}: checkpointed offset {start} is beyond the stream's last entry {last} "
                "(was the key deleted or recreated?); refusing to continue"
            )
        deleted = _text(info.get("max-deleted-entry-id", "0-0")) if info else "0-0"
        first = info.get("first-entry") if info else None
        first_id = _text(first[0]) if first else last
        if _id(deleted) > _id(start) and _id(first_id) > _id(start):
            raise SourceDataLoss(f"stream {key}: entries after offset {start} were trimmed before they were read")

    def _info(self, key: str) -> dict[Any, Any] | None:
        import redis

        try:
            return dict(self.client.xinfo_stream(key))
        except redis.ResponseError:  # no such key
            return None

    def latestOffset(self, start: dict[str, str], limit: ReadLimit) -> dict[str, str]:
        end = {}
        budget = limit.max_rows if isinstance(limit, ReadMaxRows) else 0
        per_key = max(1, budget // len(self.keys)) if budget else 0
        for key in self.keys:
            begin = start.get(key, "0-0")
            info = self._info(key)
            self._check(key, begin, info)
            oldest = info.get("first-entry") if info else None
            if oldest and _id(_text(oldest[0])) > _id(begin):  # nothing left up to `begin` (recreated?)
                self._ordinals.pop(key, None)  # so its count cannot be derived from the cached one
            newest = info.get("last-entry") if info else None  # (a batch never ends at a deleted entry's id)
            last = _text(newest[0]) if newest else begin
            if per_key and info and _id(last) > _id(begin):
                # entries-added counts the entries up to the last generated id: the newest entry's count
                # only when that is its id (else the count is unknown and not used)
                whole = last == _text(info["last-generated-id"])
                last = self._bounded_end(key, begin, last, int(info.get("entries-added", -1)) if whole else -1, per_key)
            end[key] = last if _id(last) > _id(begin) else begin
        return end

    def _bounded_end(self, key: str, begin: str, last: str, added: int, budget: int) -> str:
        """The end of a batch of at most `budget` entries after `begin` (`last`: the key's newest entry,
        `added`: how many entries were ever added up to it, -1 if unknown; both from one XINFO). The
        entries are read only when the backlog may exceed the budget, or when the position's count is
        not known (the first batch of a run)."""
        known = self._ordinals.get(key)
        begun = 0 if begin == "0-0" else known[1] if known and known[0] == begin else None
        if begun is not None and 0 <= added - begun <= budget:
            self._ordinals[key] = (last, added)
            return last
        ids = self.client.xrange(key, min=f"({begin}", max=last, count=budget)
        if len(ids) < budget and added >= 0:  # all the entries up to `last`: its count is `added`
            self._ordinals[key] = (last, added)
            return last
        end = _text(ids[-1][0]) if ids else begin
        if begun is not None:  # at most its count: entries between may have been deleted
            self._ordinals[key] = (end, begun + len(ids))
        return end

    def partitions(self, start: dict[str, str], end: dict[str, str]) -> Sequence[InputPartition]:
        return [
            _Range(key, start.get(key, "0-0"), end[key])
            for key in self.keys
            if _id(end[key]) > _id(start.get(key, "0-0"))
        ]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        assert isinstance(partition, _Range)
        client = _connect(self.url)
        try:
            begin = partition.start
            while _id(begin) < _id(partition.end):
                entries = client.xrange(partition.key, min=f"({begin}", max=partition.end, count=_READ_COUNT)
                if not entries:
                    raise SourceDataLoss(f"stream {partition.key}: entries up to {partition.end} are gone")
                yield to_batch(self.schema, [(partition.key, i.decode(), _event(fields)) for i, fields in entries])
                begin = entries[-1][0].decode()
        finally:
            client.close()

    def commit(self, end: dict[str, str]) -> None:
        pass  # the stream keeps its entries (trim them with XTRIM MINID behind every consumer)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()


class ValkeyStreams(DataSource):
    """`spark.readStream.format("valkey_streams")`: options url, stream, partitions, schema, max_events_per_batch."""

    @classmethod
    def name(cls) -> str:
        return NAME

    def schema(self) -> str:
        return EventSchema.from_json(self.options["schema"]).sql()

    def streamReader(self, schema: StructType) -> DataSourceStreamReader:
        return ValkeyStreamReader(dict(self.options))

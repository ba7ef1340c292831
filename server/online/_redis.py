"""The online store on Redis / Valkey (standalone or cluster).

Key layout
----------
One hash per entity: key ``f:<entity_type>:<entity_id>`` (entity_type is a
lowercase identifier without ':', so the key is unambiguous; the entity id is
its UTF-8 bytes, as is). Each hash field is a feature name followed by ``#``
and the number of the Value member the value holds (``clicks#2`` for an
INT64, ``clicks:j#2`` for its JSON form); its value is the stored form
described in ``server.core.codec`` (8-byte event time, then the pre-framed
FeatureValue).

Why the kind is in the field name: a feature deleted and registered again
with another value type must never be served the old type's bytes. Reads ask
for ``<name>#<kind of the feature now>``, so values of another kind are simply
not found; reads stay one round trip with no per-value Python. Writers pass
feature names (``<name>`` and ``<name>:j``) and the store files each value
under the kind the value itself holds (read off its bytes: ~0.2 µs a value),
so no writer (the server or the batch pipeline) can file a value under the
wrong kind. The cost: values of a feature's former kind stay in the hash until
the entity's TTL or an overwrite of the entity (they are never read). A
store written before this layout reads as NOT_FOUND until rewritten (run the
pipeline, or rebuild the online store from history).

Round trips
-----------
Reading one entity is one HMGET. Reading many is, per piece of ``chunk_values``
values, one EVALSHA of a script that runs HMGET per key server-side and returns
one flat array: one reply to parse, the least server CPU. Past
``SCRIPT_READ_VALUES`` (1,000) values, each piece is instead one HMGET per key
sent in one write and answered as one list (``RespClient.execute_many``): the
script costs Valkey about twice the CPU (5.3 against 2.7 ms for 1,000 keys x 10
fields, Lua turning each reply into a table and back), and Valkey's time adds to
a large read's latency, while the extra replies cost the server ~0.2 µs a value
more (100x10: 1.19 against 0.98 ms of server CPU, so those keep the script).
The pieces are sent together: one round trip; they come back one after the
other while Valkey works through the rest, and ``read_each`` hands each to the
caller as it arrives (BatchGetFeatures frames its entities then, not after the
last piece: 1,000 x 10, ~0.7 ms less latency, bench/README.md). The pipelined
pieces of one read share one connection: Valkey reads 16 KB of a connection
(about one piece) per pass over its clients and answers at the end of the pass,
so over one connection the pieces come back one by one, each framed while
Valkey works on the next; spread over four, they came back four at a time and
the last four were framed after Valkey was done (1,000 x 10: ~0.5 ms more).
That connection is one of its own (``RespClient``'s ``large``), so other reads
wait for about one piece of a large read, never for all of it (large reads
queue behind each other: Valkey would run their pieces one after the other
anyway). Standalone servers are
reached through the pipelining client in ``_resp`` (requests of concurrent
calls share a few connections). In a cluster (redis-py's cluster client) the
keys are grouped by hash slot (a script may only touch one slot) and the
groups go out in one pipeline, one round trip per node, the nodes in
parallel.

Writes are a script too: a value replaces the stored one only if its event
time is not older (compared on the 8 leading bytes), atomically per value, so
concurrent and out-of-order writers converge on the newest value. The script
reads an entity's stored protobuf forms with one HMGET and writes the newer
values (both forms) with one HSET: Valkey's cost is per command more than per
field, and a value's two forms are decided together.

Valkey's work per value
-----------------------
Valkey is one thread shared by every reader and writer, so each microsecond the
script spends per value is taken from reads and from write throughput alike. An
entity that is not stored yet (EXISTS, the bulk load case) gets its values in one
HSET of the script's own argument range, without the HMGET; a stored entity whose
values are all newer (the streaming case) too, after the HMGET; only a mix of newer
and older values builds a Lua table of the ones to keep. Measured with `INFO
commandstats` over 500,000 values (10 per entity, 250 per call): 2.4-2.9 -> 1.5-1.7 µs
a value inside the script for new entities, 3.8-5.2 -> 2.8-3.2 for newer values of stored
ones (bench/README.md).

Bounded work per command
------------------------
Valkey runs one command at a time, so one long script delays every other
caller. A write is cut into script calls of at most ``write_chunk_values`` values
(250 by default: 0.4-0.8 ms of Valkey time at the ~1.5-3 µs a value measured for
new and all-newer values; a call mixing newer and older values takes the slower
path, 3.5-7 µs a value as measured for the earlier script, so up to ~2 ms; an
entity's values may span calls, which changes nothing since each value is
compared on its own), sent over the client's bulk connections with at most
``chunks_in_flight`` (2) of them outstanding per process. Valkey runs the commands
it has read from one connection back to back, so a read may wait behind the chunks
in flight on a bulk connection: measured under a maximal write load, a 1x10 read's
p99 was about half with 250 values x 2 in flight what it was with 1,000 x 4, for
~10% less write throughput (bench/README.md). Each call's timeout covers one bounded
piece of work with a bounded queue ahead of it (a write call's timeout is the
client's times max(4, ``chunks_in_flight``): it may wait for the calls sent before
it, its process's and others'). Reads of more than ``chunk_values`` values (1,000
by default) are cut the same way, by entity (each piece a pipeline of HMGETs, so
Valkey runs other callers' commands between them). A call that times out fails alone
(UNAVAILABLE naming the read or write that got no answer); the connection and the
other calls on it carry on.

TTL
---
Expiry for serving is decided per request from the event time and the
feature's max age (status EXPIRED), so stale values are never served as
fresh. Separately, with ``ttl_seconds > 0`` each write sets the entity key's
Redis TTL, so entities nobody writes any more are eventually removed.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from server import _metrics, _tracing
from server.core import KeyWrite
from server.core.codec import FIELDS_PER_VALUE, TIME_BYTES
from server.core.errors import ServiceError, translated, unavailable
from server.online._resp import ReplyError, RespClient, pack

P = ParamSpec("P")
R = TypeVar("R")
Each = Callable[[int, list[bytes | None]], R]  # a read piece's first key index and values -> the caller's result

READ_SCRIPT = """
local out, n = {}, 0
for i = 1, #KEYS do
  local values = redis.call('HMGET', KEYS[i], unpack(ARGV))
  for j = 1, #values do
    n = n + 1
    out[n] = values[j]
  end
end
return out
"""

# KEYS: entity keys. ARGV: the TTL, then per key the number of values n and n times
# (field, stored value, JSON field, stored JSON value). Both forms of a value are
# written, or skipped, together, on the protobuf form's event time. The common cases
# cost Valkey the least (see "Valkey's work per value" above): an entity not stored yet
# takes its values in one HSET straight from ARGV; otherwise one HMGET of the stored
# protobuf forms, and if no value is older than what is stored, again one HSET of the
# ARGV range; only a mix builds a table of the values to keep.
WRITE_SCRIPT = """
local function halves(s)
  local a, b, c, d, e, f, g, h = string.byte(s, 1, 8)
  return ((a * 256 + b) * 256 + c) * 256 + d, ((e * 256 + f) * 256 + g) * 256 + h
end
local function not_older(new, old)
  local n1, n2 = halves(new)
  local o1, o2 = halves(old)
  return n1 > o1 or (n1 == o1 and n2 >= o2)
end
local CHUNK = 500  -- values per command: 2,000 arguments, well under Lua's unpack limit
local ttl = tonumber(ARGV[1])
local pos, written = 2, 0
for k = 1, #KEYS do
  local key, n = KEYS[k], tonumber(ARGV[pos])
  local base = pos + 1
  local stored = redis.call('EXISTS', key) == 1
  for s = 0, n - 1, CHUNK do
    local last = math.min(s + CHUNK, n) - 1
    local keep, every = nil, true
    if stored then
      local fields = {}
      for i = s, last do fields[i - s + 1] = ARGV[base + 4 * i] end
      local old = redis.call('HMGET', key, unpack(fields))
      keep = {}
      for i = s, last do
        local prev = old[i - s + 1]
        local ok = (not prev) or not_older(ARGV[base + 4 * i + 1], prev)
        keep[i - s + 1] = ok
        every = every and ok
      end
    end
    if every then
      redis.call('HSET', key, unpack(ARGV, base + 4 * s, base + 4 * last + 3))
      written = written + last - s + 1
    else
      local out, m = {}, 0
      for i = s, last do
        if keep[i - s + 1] then
          local at = base + 4 * i
          out[m + 1] = ARGV[at]
          out[m + 2] = ARGV[at + 1]
          out[m + 3] = ARGV[at + 2]
          out[m + 4] = ARGV[at + 3]
          m = m + 4
          written = written + 1
        end
      end
      if m > 0 then redis.call('HSET', key, unpack(out, 1, m)) end
    end
  end
  pos = base + 4 * n
  if ttl > 0 then redis.call('EXPIRE', key, ttl) end
end
return written
"""

# What a Redis reply error starts with -> what the client is told (the rest is UNAVAILABLE too).
_REPLY_ERRORS = {
    "LOADING": "loading its data",
    "BUSY": "busy",
    "MASTERDOWN": "no primary",
    "READONLY": "failing over",
    "TRYAGAIN": "resharding",
    "CLUSTERDOWN": "cluster down",
    "NOSCRIPT": "restarting",
}


def redis_error(exc: Exception) -> ServiceError | None:
    """The ServiceError a Redis failure means for the client; None if `exc` is not one.

    Every failure of the store is UNAVAILABLE (retryable): a lost or refused connection,
    a timeout, and any error reply, among them those of a server loading its data after
    a restart (LOADING), busy with a script (BUSY) or failing over. No driver text
    (hosts, addresses, class names) reaches the client.
    """
    if isinstance(exc, (ReplyError, redis_errors.ResponseError)):
        word = str(exc).split(" ", 1)[0]
        return unavailable("redis", _REPLY_ERRORS.get(word, "error reply"))
    if isinstance(exc, (TimeoutError, redis_errors.TimeoutError)):
        return unavailable("redis", "timed out")
    if isinstance(exc, (ConnectionError, OSError, redis_errors.RedisError)):
        return unavailable("redis", "cannot connect")
    return None


_translated = translated(redis_error)


KIND_SEPARATOR = b"#"
_KIND_SUFFIXES = tuple(KIND_SEPARATOR + str(n).encode() for n in range(32))


def value_field(field: bytes, kind_number: int) -> bytes:
    """The hash field holding `field`'s values (a feature name, or `<name>:j`) of Value member `kind_number`."""
    return field + _KIND_SUFFIXES[kind_number]


def _skip_varint(data: bytes, pos: int) -> int:
    while data[pos] & 0x80:
        pos += 1
    return pos + 1


def stored_kind(stored: bytes) -> int:
    """The number of the Value member in a stored protobuf form (see server.core.codec).

    8-byte time, 0x1a and a varint length (the frame), then the FeatureValue: 0x0a, the
    name's length and the name (field 1), 0x12 and a varint length (field 2, the Value),
    whose first byte is the tag of the member it holds.
    """
    if stored[9] < 0x80 and stored[11] < 0x80:  # one-byte frame and name lengths: the usual case
        pos = 12 + stored[11]
        if stored[pos] == 0x12 and stored[pos + 1] < 0x80:
            return stored[pos + 2] >> 3
    pos = _skip_varint(stored, TIME_BYTES + 1) + 1
    name_len, shift = 0, 0
    while True:
        byte = stored[pos]
        name_len |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            break
        shift += 7
    pos += name_len
    if stored[pos] != 0x12:
        raise ValueError("not a stored feature value")
    return stored[_skip_varint(stored, pos + 1)] >> 3


def connect(url: str, *, cluster: bool, connections: int, timeout: float) -> RespClient | RedisCluster:
    """The pipelining client for a standalone server, redis-py's cluster client for a cluster.

    Both fail fast: the cluster client retries once (a stale socket) without backoff.
    """
    if not cluster:
        return RespClient(url, size=connections, timeout=timeout)
    return RedisCluster.from_url(
        url,
        max_connections=16 * connections,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
    )


class _Script:
    """A Lua script run by EVALSHA, loaded on first use and again after a server restart."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - the name Redis gives scripts

    async def run(
        self,
        client: RespClient,
        keys: Sequence[bytes],
        args: Sequence[bytes | int],
        *,
        bulk: bool = False,
        timeout: float | None = None,
    ) -> Any:
        packed = pack("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            return await client.execute_packed(packed, bulk=bulk, timeout=timeout)
        except ReplyError as err:
            if not str(err).startswith("NOSCRIPT"):
                raise
        await client.execute("SCRIPT", "LOAD", self.source)
        return await client.execute_packed(packed, bulk=bulk, timeout=timeout)


class _Chunk:
    """One write script call: its keys, arguments and how many values it carries."""

    __slots__ = ("args", "keys", "values")

    def __init__(self, ttl: int) -> None:
        self.keys: list[bytes] = []
        self.args: list[bytes | int] = [ttl]
        self.values = 0


def write_chunks(writes: Sequence[KeyWrite], ttl: int, most: int) -> Iterator[_Chunk]:
    """The script calls for `writes`, each of at most `most` values (an entity's values may span calls)."""
    chunk = _Chunk(ttl)
    suffixes = _KIND_SUFFIXES
    for w in writes:
        values = w.values
        start, end = 0, len(values)
        while True:
            take = min(end - start, (most - chunk.values) * FIELDS_PER_VALUE)
            chunk.keys.append(w.key)
            args = chunk.args
            args.append(take // FIELDS_PER_VALUE)
            for i in range(start, start + take, FIELDS_PER_VALUE):
                (field, proto), (json_field, as_json) = values[i], values[i + 1]
                suffix = suffixes[stored_kind(proto)]
                args += (field + suffix, proto, json_field + suffix, as_json)
            chunk.values += take // FIELDS_PER_VALUE
            start += take
            if chunk.values >= most:
                yield chunk
                chunk = _Chunk(ttl)
            if start >= end:
                break
    if chunk.keys:
        yield chunk


@functools.lru_cache(maxsize=256)
def _hmget_parts(fields: tuple[bytes, ...]) -> tuple[bytes, bytes]:
    """HMGET's RESP before the key and after it, for these fields (a plan's fields repeat)."""
    head = b"*%d\r\n$5\r\nHMGET\r\n" % (len(fields) + 2)
    return head, b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in fields)


async def _all(calls: Sequence[Awaitable[R]]) -> list[R]:
    """Await every call concurrently; the first failure cancels the others and is raised."""
    if len(calls) == 1:
        return [await calls[0]]
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


_READ, _WRITE = _Script(READ_SCRIPT), _Script(WRITE_SCRIPT)
# Reads of more values than this go as pipelined HMGETs rather than script calls (see above).
SCRIPT_READ_VALUES = 1000


def _values(first: int, values: list[bytes | None]) -> list[bytes | None]:
    return values


def _timed_out(client: RespClient, what: str, values: int, seconds: float | None = None) -> ServiceError:
    """UNAVAILABLE naming the read or write that got no answer in time."""
    within = seconds or client.timeout
    return unavailable("redis", f"timed out: a {what} of {values} values got no answer within {within:g} s")


class _Transport(Protocol):
    """How the store reaches Redis: one server (pipelined RESP) or a cluster (by hash slot)."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...

    async def read(self, keys: Sequence[bytes], fields: Sequence[bytes]) -> list[bytes | None]: ...

    async def read_each(self, keys: Sequence[bytes], fields: Sequence[bytes], each: Each[R]) -> list[R]: ...

    async def write(self, writes: Sequence[KeyWrite], ttl: int) -> int: ...


class _Standalone:
    """One server through the pipelining client: a read is one HMGET or script call per `chunk_values`
    values; writes go in script calls of at most `write_chunk_values` values, `in_flight` outstanding."""

    def __init__(self, client: RespClient, chunk_values: int, write_chunk_values: int, in_flight: int) -> None:
        self._client = self.client = client
        self._chunk_values = chunk_values
        self._write_chunk_values = write_chunk_values
        self._in_flight = in_flight
        self._window = asyncio.Semaphore(in_flight)

    async def ping(self) -> None:
        await self._client.execute("PING")

    async def close(self) -> None:
        await self._client.close()

    async def read(self, keys: Sequence[bytes], fields: Sequence[bytes]) -> list[bytes | None]:
        if len(keys) == 1:
            try:
                return await self._client.execute_packed(pack("HMGET", keys[0], *fields))  # type: ignore[no-any-return]
            except TimeoutError:
                raise _timed_out(self._client, "read", len(fields)) from None
        return [value for part in await self.read_each(keys, fields, _values) for value in part]

    async def read_each(self, keys: Sequence[bytes], fields: Sequence[bytes], each: Each[R]) -> list[R]:
        if len(keys) == 1:  # one HMGET, not the script (half of Valkey's time for one key)
            return [each(0, await self.read(keys, fields))]
        per_call = max(1, self._chunk_values // max(1, len(fields)))
        if len(keys) > per_call and len(keys) * len(fields) > SCRIPT_READ_VALUES:
            connection = self._client.large_connection()  # every piece over one: see "Round trips" above

            def piece(keys: Sequence[bytes]) -> Awaitable[list[bytes | None]]:
                return self._read_pipelined(keys, fields, connection)
        else:

            def piece(keys: Sequence[bytes]) -> Awaitable[list[bytes | None]]:
                return self._read_script(keys, fields)

        async def then(first: int) -> R:
            return each(first, await piece(keys[first : first + per_call]))

        return await _all([then(first) for first in range(0, len(keys), per_call)])

    async def _read_script(self, keys: Sequence[bytes], fields: Sequence[bytes]) -> list[bytes | None]:
        """A piece of a read of at most SCRIPT_READ_VALUES values: one script call."""
        try:
            return await _READ.run(self._client, keys, fields)  # type: ignore[no-any-return]
        except TimeoutError:
            raise _timed_out(self._client, "read", len(keys) * len(fields)) from None

    async def _read_pipelined(
        self, keys: Sequence[bytes], fields: Sequence[bytes], connection: int
    ) -> list[bytes | None]:
        """A piece of a large read: one HMGET per key, pipelined in one write; the values key by key."""
        head, tail = _hmget_parts(tuple(fields))
        packed = b"".join([b"%s$%d\r\n%s\r\n%s" % (head, len(key), key, tail) for key in keys])
        try:
            replies = await self._client.execute_many(packed, len(keys), connection)
        except TimeoutError:
            raise _timed_out(self._client, "read", len(keys) * len(fields)) from None
        return list(itertools.chain.from_iterable(replies))

    async def write(self, writes: Sequence[KeyWrite], ttl: int) -> int:
        chunks = write_chunks(writes, ttl, self._write_chunk_values)
        sent: list[asyncio.Task[int]] = []
        try:
            while not any(task.done() and task.exception() for task in sent[-self._in_flight :]):
                await self._window.acquire()  # room first, then the next chunk is built and sent
                chunk = next(chunks, None)
                if chunk is None:
                    self._window.release()
                    break
                sent.append(asyncio.ensure_future(self._write_chunk(chunk)))
            return sum(await asyncio.gather(*sent))
        except BaseException:
            for task in sent:
                task.cancel()
            raise

    async def _write_chunk(self, chunk: _Chunk) -> int:
        """One script call; it holds a place in the window, taken by `write`, until it is answered."""
        timeout = self._client.timeout * max(4, self._in_flight)  # it may queue behind other chunks in flight
        try:
            return int(await _WRITE.run(self._client, chunk.keys, chunk.args, bulk=True, timeout=timeout))
        except TimeoutError:
            raise _timed_out(self._client, "write", chunk.values, timeout) from None
        finally:
            self._window.release()


class _Clustered:
    """A Redis Cluster through redis-py: keys grouped by hash slot (a script may touch one slot),
    the groups in one pipeline, one round trip per node."""

    def __init__(self, client: RedisCluster, chunk_values: int, write_chunk_values: int, in_flight: int) -> None:
        self._client = client
        self._chunk_values = chunk_values
        self._write_chunk_values = write_chunk_values
        self._in_flight = in_flight

    async def ping(self) -> None:
        await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose()

    async def read(self, keys: Sequence[bytes], fields: Sequence[bytes]) -> list[bytes | None]:
        by_slot: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            by_slot.setdefault(key_slot(key), []).append(i)
        pipe = self._client.pipeline(transaction=False)
        for positions in by_slot.values():
            group = [keys[i] for i in positions]
            pipe.execute_command("EVAL", READ_SCRIPT, len(group), *group, *fields)
        replies = await pipe.execute()
        out: list[bytes | None] = [None] * (len(keys) * len(fields))
        width = len(fields)
        for positions, reply in zip(by_slot.values(), replies, strict=True):
            for n, i in enumerate(positions):
                out[i * width : (i + 1) * width] = reply[n * width : (n + 1) * width]
        return out

    async def read_each(self, keys: Sequence[bytes], fields: Sequence[bytes], each: Each[R]) -> list[R]:
        return [each(0, await self.read(keys, fields))]  # one round trip per node: one piece

    async def write(self, writes: Sequence[KeyWrite], ttl: int) -> int:
        """Chunks within one slot each, in pipelines of `in_flight` chunks."""
        by_slot: dict[int, list[KeyWrite]] = {}
        for w in writes:
            by_slot.setdefault(key_slot(w.key), []).append(w)
        chunks = [c for group in by_slot.values() for c in write_chunks(group, ttl, self._write_chunk_values)]
        step, written = self._in_flight, 0
        for start in range(0, len(chunks), step):
            pipe = self._client.pipeline(transaction=False)
            for chunk in chunks[start : start + step]:
                pipe.execute_command("EVAL", WRITE_SCRIPT, len(chunk.keys), *chunk.keys, *chunk.args)
            written += sum(int(n) for n in await pipe.execute())
        return written


_READ_SECONDS, _READ_ERRORS = _metrics.store_timer("redis", "read")


def _write_attributes(writes: Sequence[KeyWrite]) -> dict[str, str | int]:
    return {"db.system": "redis", "entities": len(writes)}


def _span_attributes(keys: Sequence[bytes], fields: Sequence[bytes]) -> dict[str, str | int]:
    return {
        "db.system": "redis",
        "db.operation": "HMGET" if len(keys) == 1 else "EVALSHA",
        "values": len(keys) * len(fields),
    }


_WRITE_SECONDS, _WRITE_ERRORS = _metrics.store_timer("redis", "write")


class RedisOnlineStore:
    """Latest feature values per entity in Redis; driver failures become UNAVAILABLE (see redis_error)."""

    def __init__(
        self,
        client: RespClient | RedisCluster,
        *,
        ttl_seconds: int = 0,
        chunk_values: int = 1000,
        write_chunk_values: int = 250,
        chunks_in_flight: int = 2,
    ) -> None:
        chunk_values, in_flight = max(1, chunk_values), max(1, chunks_in_flight)
        write_chunk = max(1, write_chunk_values)
        self._transport: _Transport = (
            _Standalone(client, chunk_values, write_chunk, in_flight)
            if isinstance(client, RespClient)
            else _Clustered(client, chunk_values, write_chunk, in_flight)
        )
        self._ttl = ttl_seconds

    @_translated
    async def ping(self) -> None:
        await self._transport.ping()

    def pending(self) -> int:
        """Requests sent to Redis and not answered yet (standalone; 0 for a cluster), for metrics."""
        transport = self._transport
        return transport.client.pending() if isinstance(transport, _Standalone) else 0

    async def close(self) -> None:
        await self._transport.close()

    @_translated
    async def read(self, keys: Sequence[bytes], fields: Sequence[bytes]) -> list[bytes | None]:
        """Values of `fields` for each key, flat and key-major; None where nothing is stored."""
        if not _metrics.enabled and not _tracing.enabled:
            return await self._transport.read(keys, fields)
        with _tracing.StoreCall("redis read", lambda: _span_attributes(keys, fields), _READ_SECONDS, _READ_ERRORS):
            return await self._transport.read(keys, fields)

    @_translated
    async def read_each(self, keys: Sequence[bytes], fields: Sequence[bytes], each: Each[R]) -> list[R]:
        """`read` in pieces: `each(first, values)` of every piece as soon as it arrives (its values, flat
        and key-major, are those of `keys[first:]`'s first ones), the results in key order.

        A large read's pieces arrive one after the other while Valkey works through the rest, so
        what the caller does per piece (framing the answer) runs in that time instead of after it.
        Its time counts in the read's metrics and trace span.
        """
        if not _metrics.enabled and not _tracing.enabled:
            return await self._transport.read_each(keys, fields, each)
        with _tracing.StoreCall("redis read", lambda: _span_attributes(keys, fields), _READ_SECONDS, _READ_ERRORS):
            return await self._transport.read_each(keys, fields, each)

    @_translated
    async def write(self, writes: Sequence[KeyWrite]) -> int:
        """Store the values that are not older than what is stored; returns how many values were stored.

        In script calls of at most `write_chunk_values` values each, at most `chunks_in_flight` of
        them outstanding per process (see "Bounded work per command" above).
        """
        if not writes:
            return 0
        attributes = functools.partial(_write_attributes, writes)
        with _tracing.StoreCall("redis write", attributes, _WRITE_SECONDS, _WRITE_ERRORS):
            return await self._transport.write(writes, self._ttl)

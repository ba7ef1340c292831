"""The online store on Redis / Valkey (standalone or cluster).

Key layout
----------
One hash per entity: key ``f:<entity_type>:<entity_id>`` (entity_type is a
lowercase identifier without ':', so the key is unambiguous; the entity id is
its UTF-8 bytes, as is). Each hash field is a feature name; its value is the
stored form described in ``server.online._codec`` (8-byte event time, then the
pre-framed FeatureValue).

Round trips
-----------
Reading one entity is one HMGET. Reading many is one EVALSHA of a script that
runs HMGET per key server-side and returns one flat array, so a request costs
one round trip and one reply parse whatever its size. In a cluster the keys
are grouped by hash slot (a script may only touch one slot) and the groups go
out in one pipeline, one round trip per node, the nodes in parallel.

Writes are a script too: a value replaces the stored one only if its event
time is not older (compared on the 8 leading bytes), atomically per key, so
concurrent and out-of-order writers converge on the newest value.

TTL
---
Expiry for serving is decided per request from the event time and the
feature's max age (status EXPIRED), so stale values are never served as
fresh. Separately, with ``ttl_seconds > 0`` each write sets the entity key's
Redis TTL, so entities nobody writes any more are eventually removed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from server._errors import unavailable

P = ParamSpec("P")
R = TypeVar("R")

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

WRITE_SCRIPT = """
local function not_older(new, old)
  for i = 1, 8 do
    local a, b = string.byte(new, i), string.byte(old, i)
    if a ~= b then return a > b end
  end
  return true
end
local ttl = tonumber(ARGV[1])
local pos, written = 2, 0
for k = 1, #KEYS do
  local key, count = KEYS[k], tonumber(ARGV[pos])
  pos = pos + 1
  for _ = 1, count do
    local field, value = ARGV[pos], ARGV[pos + 1]
    pos = pos + 2
    local old = redis.call('HGET', key, field)
    if (not old) or not_older(value, old) then
      redis.call('HSET', key, field, value)
      written = written + 1
    end
  end
  if ttl > 0 then redis.call('EXPIRE', key, ttl) end
end
return written
"""

_UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    OSError,
    TimeoutError,
)


def entity_key(entity_type: str, entity_id: str) -> bytes:
    """The Redis key of an entity's hash."""
    return b"f:" + entity_type.encode() + b":" + entity_id.encode()


@dataclass(frozen=True, slots=True)
class KeyWrite:
    """The values to write into one entity's hash: (field, stored value) pairs."""

    key: bytes
    values: Sequence[tuple[bytes, bytes]]


def _translated(method: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except _UNAVAILABLE as exc:
            raise unavailable("redis", f"{type(exc).__name__}: {exc}") from exc

    return wrapper


def connect(url: str, *, cluster: bool, max_connections: int, timeout: float) -> aioredis.Redis | RedisCluster:
    """A client with bounded pools and fast failure: one quick retry (a stale socket), no backoff."""
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 1),
    }
    if cluster:
        return RedisCluster.from_url(url, max_connections=max_connections, **common)
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=timeout, **common)
    return aioredis.Redis(connection_pool=pool)


def _write_args(writes: Sequence[KeyWrite], ttl: int) -> tuple[list[bytes], list[bytes | int]]:
    keys = [w.key for w in writes]
    args: list[bytes | int] = [ttl]
    for w in writes:
        args.append(len(w.values))
        for field, value in w.values:
            args += (field, value)
    return keys, args


class RedisOnlineStore:
    """Latest feature values per entity in Redis."""

    def __init__(self, client: aioredis.Redis | RedisCluster, *, ttl_seconds: int = 0) -> None:
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._ttl = ttl_seconds
        self._read_script = client.register_script(READ_SCRIPT)
        self._write_script = client.register_script(WRITE_SCRIPT)

    @_translated
    async def ping(self) -> None:
        await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose()

    @_translated
    async def read(self, keys: Sequence[bytes], fields: Sequence[bytes]) -> list[bytes | None]:
        """Values of `fields` for each key, flat and key-major; None where nothing is stored."""
        if self._cluster:
            return await self._read_by_slot(keys, fields)
        if len(keys) == 1:
            return await self._client.execute_command("HMGET", keys[0], *fields)  # type: ignore[no-any-return]
        return await self._read_script(keys=keys, args=fields)  # type: ignore[no-any-return]

    @_translated
    async def write(self, writes: Sequence[KeyWrite]) -> int:
        """Store the values that are not older than what is stored; returns how many were stored."""
        if not writes:
            return 0
        if self._cluster:
            return await self._write_by_slot(writes)
        keys, args = _write_args(writes, self._ttl)
        return int(await self._write_script(keys=keys, args=args))

    async def _read_by_slot(self, keys: Sequence[bytes], fields: Sequence[bytes]) -> list[bytes | None]:
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

    async def _write_by_slot(self, writes: Sequence[KeyWrite]) -> int:
        by_slot: dict[int, list[KeyWrite]] = {}
        for w in writes:
            by_slot.setdefault(key_slot(w.key), []).append(w)
        pipe = self._client.pipeline(transaction=False)
        for group in by_slot.values():
            keys, args = _write_args(group, self._ttl)
            pipe.execute_command("EVAL", WRITE_SCRIPT, len(keys), *keys, *args)
        return sum(int(n) for n in await pipe.execute())

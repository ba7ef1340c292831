"""A lean, pipelining Redis client for the serving hot path (standalone Redis / Valkey).

Every request from every task goes out on one of a few long-lived
connections and waits on a future; replies come back in order (RESP), so
each connection keeps a FIFO of waiting futures and the hiredis parser
resolves them as bytes arrive. Under concurrency, requests that arrive
together share one socket write and one read: pipelining without batching
code. Compared with a pooled client this saves, per request, the pool
checkout and release, the stream-reader machinery and one event-loop wake-up.

Failure handling: a lost connection fails its waiting requests with
ConnectionError and is re-dialled by the next request. A request not answered
within its timeout fails alone, with TimeoutError: its place in the connection's
reply order is kept, so its reply, when it comes, is read and dropped, and the
requests of other calls sharing the connection carry on. Only a connection on
which nothing at all has arrived for `stall` seconds while requests wait (a hung
server, a broken network path) is closed, failing what waits on it. Callers
translate both to UNAVAILABLE.

Bulk work (the online store's write chunks) goes over connections of its own
(`bulk` of them), so a read never waits in a connection's reply order behind
writes: it waits at most for the one command Valkey is running. The pieces of
a large read go over one connection of their own (`large`), for the same reason:
other reads wait for about one piece of it (Valkey takes ~16 KB of commands
from each connection per pass), not for all of it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import ssl
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis


def pack(*args: Any) -> bytes:
    """A command in RESP, packed by hiredis (C)."""
    packed: bytes = hiredis.pack_command(args)
    return packed


# hiredis moves the unread rest of its buffer after each reply: fed 256 KB at once (uvloop's
# reads), 1,000 small replies cost 2 ms to parse, fed 16 KB at a time 0.5 ms.
_FEED_BYTES = 16384


class ReplyError(Exception):
    """An error reply from Redis (for example NOSCRIPT or WRONGTYPE)."""


class _Replies:
    """The replies of `count` pipelined commands, gathered in order; `future` gets the list.

    It waits in the connection's queue as one entry (the reply loop fills it, then moves on)
    and answers `done` and `set_exception` as a future would.
    """

    __slots__ = ("count", "future", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int) -> None:
        self.future, self.count = future, count
        self.replies: list[Any] = []

    def done(self) -> bool:
        return self.future.done()

    def set_exception(self, error: BaseException) -> None:
        self.future.set_exception(error)


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self._reader = hiredis.Reader(replyError=ReplyError)
        self._waiting: collections.deque[tuple[asyncio.Future[Any] | _Replies, float]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._outgoing: list[bytes] = []
        self._heard = time.monotonic()  # when a reply last arrived, or the connection last became busy
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's is not a subclass)

    def data_received(self, data: bytes) -> None:
        self._heard = time.monotonic()
        if len(data) <= _FEED_BYTES:
            self._reader.feed(data)
            self._dispatch()
            return
        for start in range(0, len(data), _FEED_BYTES):
            self._reader.feed(data, start, min(_FEED_BYTES, len(data) - start))
            self._dispatch()

    def _dispatch(self) -> None:
        """Hand the complete replies read so far to their waiters."""
        gets, waiting = self._reader.gets, self._waiting
        reply = gets()
        while reply is not False:
            waiter = waiting[0][0]
            if isinstance(waiter, _Replies):  # several replies: gather them
                replies, count = waiter.replies, waiter.count
                replies.append(reply)
                reply = gets()
                while reply is not False and len(replies) < count:
                    replies.append(reply)
                    reply = gets()
                if len(replies) < count:
                    return  # the rest is still to come
                waiting.popleft()
                if not waiter.done():
                    waiter.future.set_result(replies)
                continue
            waiting.popleft()
            if not waiter.done():
                waiter.set_result(reply)
            reply = gets()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        error = ConnectionError(f"Redis connection lost: {exc or 'closed by server'}")
        while self._waiting:
            future = self._waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)

    def send(self, packed: bytes, deadline: float) -> asyncio.Future[Any]:
        """Queue a command; commands queued in one loop iteration leave in one write."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue(packed, future, deadline)
        return future

    def send_many(self, packed: bytes, count: int, deadline: float) -> asyncio.Future[list[Any]]:
        """Queue `count` packed commands; the future gets their replies, in order, as one list."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue(packed, _Replies(future, count), deadline)
        return future

    def _queue(self, packed: bytes, waiter: asyncio.Future[Any] | _Replies, deadline: float) -> None:
        if self.lost:
            raise ConnectionError("Redis connection lost")
        idle = not self._waiting
        self._waiting.append((waiter, deadline))
        if idle:
            self._heard = time.monotonic()
        if idle and self._transport is not None:
            self._transport.write(packed)  # nothing in flight: no one to share the write with
            return
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(packed)

    def _flush(self) -> None:
        if self._transport is not None and not self.lost:
            self._transport.write(b"".join(self._outgoing))
        self._outgoing.clear()

    def expire(self, now: float, stall: float) -> None:
        """Fail the overdue requests (each alone); close the connection if it stalled.

        Deadlines grow along the queue (one timeout per client), so the scan stops at the
        first request still in time. The overdue keep their places: their replies are
        still to come, in order, and are dropped when they do.
        """
        for future, deadline in self._waiting:
            if deadline >= now:
                break
            if not future.done():
                future.set_exception(TimeoutError("Redis did not answer in time"))
        if self._waiting and now - self._heard > stall and self._transport is not None:
            error = TimeoutError("Redis sent nothing while requests waited")
            while self._waiting:
                future = self._waiting.popleft()[0]
                if not future.done():
                    future.set_exception(error)
            self._transport.abort()


class RespClient:
    """Requests over `size` shared connections to one Redis server."""

    def __init__(
        self, url: str, *, size: int = 4, timeout: float = 0.5, bulk: int = 1, large: int = 1, stall: float = 0.0
    ) -> None:
        """`size` connections for requests, `bulk` more for bulk work, `large` more for large reads'
        pipelined pieces (see `large_connection`); `timeout`: seconds per request.

        `stall`: seconds a connection may stay silent while requests wait before it is closed
        (0: four timeouts, at least 2 s).
        """
        parts = urlsplit(url)
        if parts.scheme not in {"redis", "rediss"}:
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r}: use redis:// or rediss://")
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 6379
        self._ssl = ssl.create_default_context() if parts.scheme == "rediss" else None
        self._setup: list[tuple[Any, ...]] = []
        if parts.password:
            user = unquote(parts.username) if parts.username else "default"
            self._setup.append(("AUTH", user, unquote(parts.password)))
        db = int(parts.path.lstrip("/") or 0)
        if db:
            self._setup.append(("SELECT", db))
        self._timeout = timeout
        self._stall = stall or max(4 * timeout, 2.0)
        self._slots: list[_Connection | None] = [None] * (size + bulk + large)
        self._dialing: list[asyncio.Future[_Connection] | None] = [None] * (size + bulk + large)
        self._next = itertools.cycle(range(size)).__next__
        self._next_bulk = itertools.cycle(range(size, size + bulk)).__next__ if bulk else self._next
        self._next_large = itertools.cycle(range(size + bulk, size + bulk + large)).__next__ if large else self._next
        self._sweeper: asyncio.Task[None] | None = None

    async def execute(self, *args: Any) -> Any:
        """Send one command and return its reply; ReplyError for an error reply."""
        return await self.execute_packed(pack(*args))

    @property
    def timeout(self) -> float:
        return self._timeout

    def pending(self) -> int:
        """Requests sent and not answered yet, over every connection (for metrics)."""
        return sum(len(conn._waiting) for conn in self._slots if conn is not None and not conn.lost)

    async def execute_packed(self, packed: bytes, *, bulk: bool = False, timeout: float | None = None) -> Any:
        """Send a packed command and return its reply; `bulk` sends it over the bulk connections.

        `timeout` (default: the client's) must be the same for every request of a kind: deadlines
        grow along a connection's queue (see _Connection.expire). The online store gives its write
        chunks, the only bulk requests, one longer timeout.
        """
        slot = self._next_bulk() if bulk else self._next()
        conn = self._slots[slot]
        if conn is None or conn.lost:
            conn = await self._connect(slot)
        reply = await conn.send(packed, time.monotonic() + (timeout or self._timeout))
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def large_connection(self) -> int:
        """A connection for the pieces of one large read (`execute_many`): one of the `large` ones, so
        that other requests never wait in its reply order behind a large read."""
        return self._next_large()

    async def execute_many(self, packed: bytes, count: int, connection: int | None = None) -> list[Any]:
        """Send `count` packed commands in one write and return their replies (ReplyError for the first error).

        `connection` (from `large_connection()`): send them over that one, else over the next in turn.
        """
        slot = self._next() if connection is None else connection
        conn = self._slots[slot]
        if conn is None or conn.lost:
            conn = await self._connect(slot)
        replies = await conn.send_many(packed, count, time.monotonic() + self._timeout)
        for reply in replies:
            if isinstance(reply, ReplyError):
                raise reply
        return replies

    async def _connect(self, slot: int) -> _Connection:
        """Dial (once, even if many requests need the slot at the same moment)."""
        pending = self._dialing[slot]
        if pending is None:
            pending = asyncio.ensure_future(self._dial())
            self._dialing[slot] = pending
            pending.add_done_callback(lambda _: self._dialing.__setitem__(slot, None))
        conn = await asyncio.shield(pending)
        self._slots[slot] = conn
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())
        return conn

    async def _dial(self) -> _Connection:
        loop = asyncio.get_running_loop()
        connect = loop.create_connection(_Connection, self._host, self._port, ssl=self._ssl)
        _, conn = await asyncio.wait_for(connect, self._timeout)
        try:
            for command in self._setup:  # not swept yet (not in a slot): each reply waited for within the timeout
                sent = conn.send(pack(*command), time.monotonic() + self._timeout)
                reply = await asyncio.wait_for(sent, self._timeout)
                if isinstance(reply, ReplyError):
                    raise reply
        except BaseException:
            if conn._transport is not None:
                conn._transport.abort()
            raise
        return conn

    async def _sweep(self) -> None:
        """Every quarter timeout, fail what was overdue already at the previous sweep.

        One sweep of grace: after the event loop was held up (a long callback, a starved
        process), timers may run before the socket is read (uvloop runs them first), and a
        reply that arrived in time must not be taken for a missing one. Between two sweeps
        the loop polls its sockets at least once.
        """
        before = time.monotonic()
        while True:
            await asyncio.sleep(self._timeout / 4)
            for conn in self._slots:
                if conn is not None and not conn.lost:
                    conn.expire(before, self._stall)
            before = time.monotonic()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in self._slots:
            if conn is not None and conn._transport is not None:
                conn._transport.close()
        self._slots = [None] * len(self._slots)

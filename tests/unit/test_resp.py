"""The RESP client's reply parsing (server/online/_resp.py): bytes in, replies to the waiting requests.

A connection is fed bytes as a socket would deliver them: whole, split anywhere, several
replies at once. Its transport is a stand-in that records writes (no socket, no Redis).
Timeouts are left to the server tests (tests/test_online_ops.py): their rules are the write
path's to change.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from server.online._redis import _hmget_parts
from server.online._resp import ReplyError, RespClient, _Connection, pack


class Transport:
    """Records what the connection writes."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True


def connected() -> tuple[_Connection, Transport]:
    conn, transport = _Connection(), Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


def outcome(future: asyncio.Future[Any]) -> Any:
    """A request's reply, its exception, or "pending"."""
    if not future.done():
        return "pending"
    return future.exception() or future.result()


def replies(chunks: list[bytes], requests: int = 1) -> list[Any]:
    """What `requests` requests get back when the server's bytes arrive in `chunks`."""

    async def go() -> list[Any]:
        conn, _ = connected()
        futures = [conn.send(pack("PING"), time.monotonic() + 60) for _ in range(requests)]
        for chunk in chunks:
            conn.data_received(chunk)
        return [outcome(f) for f in futures]

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("wire", "reply"),
    [
        (b"+OK\r\n", b"OK"),
        (b":42\r\n", 42),
        (b":-7\r\n", -7),
        (b"$5\r\nhello\r\n", b"hello"),
        (b"$0\r\n\r\n", b""),
        (b"$-1\r\n", None),
        (b"*-1\r\n", None),
        (b"*0\r\n", []),
        (b"$4\r\na\r\nb\r\n", b"a\r\nb"),  # a bulk string holds any bytes, CRLF too
        (b"$3\r\n\x00\xff\x80\r\n", b"\x00\xff\x80"),
        (b"*3\r\n$1\r\na\r\n$-1\r\n:3\r\n", [b"a", None, 3]),
        (b"*2\r\n*2\r\n$1\r\nx\r\n$-1\r\n*0\r\n", [[b"x", None], []]),
    ],
)
def test_each_reply_type_whole_and_split_at_every_byte(wire: bytes, reply: Any) -> None:
    assert replies([wire]) == [reply]
    assert replies([wire[i : i + 1] for i in range(len(wire))]) == [reply]
    for cut in range(1, len(wire)):
        assert replies([wire[:cut], wire[cut:]]) == [reply], cut


def test_an_incomplete_reply_resolves_nothing_until_its_last_byte() -> None:
    wire = b"*2\r\n$3\r\nabc\r\n$3\r\nde"
    assert replies([wire]) == ["pending"]
    assert replies([wire, b"f\r\n"]) == [[b"abc", b"def"]]


def test_replies_in_one_read_go_to_their_requests_in_order() -> None:
    wire = b"$1\r\na\r\n:2\r\n*1\r\n$1\r\nc\r\n$-1\r\n"
    assert replies([wire], requests=4) == [b"a", 2, [b"c"], None]
    assert replies([wire[:5], wire[5:12], wire[12:]], requests=4) == [b"a", 2, [b"c"], None]


def test_an_error_reply_is_a_reply_error_for_its_request_only() -> None:
    first, second, third = replies([b"+OK\r\n-NOSCRIPT No matching script\r\n:1\r\n"], requests=3)
    assert (first, third) == (b"OK", 1)
    assert isinstance(second, ReplyError)
    assert str(second) == "NOSCRIPT No matching script"


def test_an_error_inside_an_array_is_an_element() -> None:
    [reply] = replies([b"*2\r\n:1\r\n-WRONGTYPE Operation against a key\r\n"])
    assert reply[0] == 1
    assert isinstance(reply[1], ReplyError)


def test_a_large_nested_reply_in_small_chunks() -> None:
    values = [b"v" * (i % 300) for i in range(2_000)]
    wire = b"*2\r\n*%d\r\n" % len(values) + b"".join(b"$%d\r\n%s\r\n" % (len(v), v) for v in values) + b":9\r\n"
    chunks = [wire[i : i + 1000] for i in range(0, len(wire), 1000)]
    assert replies(chunks) == [[values, 9]]


def test_a_lost_connection_fails_the_waiting_requests() -> None:
    async def go() -> None:
        conn, _ = connected()
        answered = conn.send(pack("GET", "a"), time.monotonic() + 60)
        waiting = conn.send(pack("GET", "b"), time.monotonic() + 60)
        conn.data_received(b"$1\r\n1\r\n")
        conn.connection_lost(None)
        assert answered.result() == b"1"
        with pytest.raises(ConnectionError):
            waiting.result()
        with pytest.raises(ConnectionError):
            conn.send(pack("GET", "c"), time.monotonic() + 60)

    asyncio.run(go())


def test_requests_sent_together_leave_in_one_write() -> None:
    async def go() -> None:
        conn, transport = connected()
        conn.send(pack("GET", "a"), time.monotonic() + 60)  # nothing in flight: written at once
        conn.send(pack("GET", "b"), time.monotonic() + 60)
        conn.send(pack("GET", "c"), time.monotonic() + 60)
        await asyncio.sleep(0)  # one loop iteration: the queued commands are flushed
        assert transport.written == [pack("GET", "a"), pack("GET", "b") + pack("GET", "c")]

    asyncio.run(go())


def test_commands_are_packed_as_resp_arrays_of_bulk_strings() -> None:
    assert pack("HMGET", b"f:c:1", "x#2", 7) == b"*4\r\n$5\r\nHMGET\r\n$5\r\nf:c:1\r\n$3\r\nx#2\r\n$1\r\n7\r\n"


def test_replies_of_commands_sent_together_are_gathered_in_order() -> None:
    """send_many: one waiter for several replies, between single requests, split anywhere."""
    wire = b"+before\r\n" + b"*2\r\n$1\r\na\r\n$-1\r\n" + b":2\r\n" + b"*0\r\n" + b"+after\r\n"

    def go(chunks: list[bytes]) -> list[Any]:
        async def run() -> list[Any]:
            conn, _ = connected()
            deadline = time.monotonic() + 60
            futures = [
                conn.send(pack("PING"), deadline),
                conn.send_many(pack("HMGET", "k", "f") + pack("INCR", "n") + pack("HMGET", "j"), 3, deadline),
                conn.send(pack("PING"), deadline),
            ]
            for chunk in chunks:
                conn.data_received(chunk)
            return [outcome(f) for f in futures]

        return asyncio.run(run())

    expected = [b"before", [[b"a", None], 2, []], b"after"]
    assert go([wire]) == expected
    assert go([wire[i : i + 1] for i in range(len(wire))]) == expected
    assert go([wire[:-3]]) == [b"before", [[b"a", None], 2, []], "pending"]
    assert go([wire[:20]]) == [b"before", "pending", "pending"]


def test_many_replies_in_one_large_read() -> None:
    """A read larger than what the parser is fed at once (uvloop reads up to 256 KB)."""
    texts = [b"v" * (i % 50) for i in range(5_000)]
    values = [[v, None] for v in texts]
    wire = b"".join(b"*2\r\n$%d\r\n%s\r\n$-1\r\n" % (len(v), v) for v in texts)
    assert len(wire) > 100_000

    async def run() -> Any:
        conn, _ = connected()
        gathered = conn.send_many(b"", len(values), time.monotonic() + 60)
        single = conn.send(pack("PING"), time.monotonic() + 60)
        conn.data_received(wire + b"+PONG\r\n")
        return gathered.result(), single.result()

    assert asyncio.run(run()) == (values, b"PONG")


def test_a_lost_connection_fails_gathered_replies() -> None:
    async def go() -> None:
        conn, _ = connected()
        gathered = conn.send_many(pack("GET", "a") + pack("GET", "b"), 2, time.monotonic() + 60)
        conn.data_received(b"$1\r\n1\r\n")
        conn.connection_lost(None)
        with pytest.raises(ConnectionError):
            gathered.result()

    asyncio.run(go())


def test_the_read_pipeline_packs_hmget_as_pack_does() -> None:
    head, tail = _hmget_parts((b"a#1", b"bb#2"))
    assert head + b"$5\r\nf:c:1\r\n" + tail == pack("HMGET", b"f:c:1", b"a#1", b"bb#2")


def test_a_server_that_accepts_and_never_answers_the_setup_fails_the_request_within_the_timeout() -> None:
    """AUTH (a password in the URL) waits for its reply within the timeout too: a silent peer (a black hole after
    the handshake) fails the request, and the slot dials again for the next one, instead of hanging them all."""

    async def go() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = RespClient(f"redis://:secret@127.0.0.1:{port}", size=1, bulk=0, large=0, timeout=0.2)
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await client.execute("PING")
            assert time.monotonic() - started < 1.0
        assert len(accepted) == 2  # the second request dialled again
        await client.close()
        server.close()

    asyncio.run(go())

"""Client benchmark: the Python facade's overhead over the bare generated stub, and batch reads to a DataFrame.

    .venv/bin/python bench/client_bench.py

Starts PostgreSQL, Valkey and one server process on loopback, registers 10 features of
mixed value types (4 FLOAT, 3 INT64, a STRING, a BOOL, an 8-float EMBEDDING) and writes
1,000 entities. Then, in one run:

- **get_features, c=1**: `Client.get_features` (typed FeatureVector) against the bare stub
  `client.store.GetFeatures` on the same channel, in blocks of 100 calls in a rotating
  order so all see the same machine; also the bare stub on a channel without the retry
  service config, and `AsyncClient.get_features` against its bare grpc.aio stub. Median
  and p99 latency per call; the check is facade / bare stub (target <= 1.15).
- **batch_get_features -> DataFrame, 1,000 entities x 10 features**: the whole call
  (RPC + conversion) with `output="pandas"` and `output="arrow"`, the bare RPC alone,
  `output="records"` (FeatureVectors), and the DataFrame built from the parsed messages
  (the protobuf path the client falls back to). Medians of wall time, and of this process's CPU time
  per call (what the conversion costs, whatever the load); the target is < 10 ms for the
  DataFrame.
- **Floors of that read, in the same rotation**: Valkey alone (the same 1,000 HMGETs of 10
  fields the server sends, pipelined over a raw socket, replies parsed by hiredis) and gRPC
  alone (a bare grpc.aio server in its own process answering bytes of the response's size).
  Their sum is what the read costs with no server or client Python at all.

The load average is printed before and after the run.

The machine is shared: only ratios within one run mean much. Results go to
bench/results/client.json (not committed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import hiredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _report import print_checks, write_json  # noqa: E402

from devstack import free_port, start_postgres, start_server, start_valkey  # noqa: E402
from featurestore import AsyncClient, Client, FeatureStoreClient  # noqa: E402
from featurestore import _common as client_common  # noqa: E402  (the protobuf path, for comparison)
from featurestore.serving.v1 import feature_store_service_pb2 as fs  # noqa: E402

TYPES = ["FLOAT"] * 4 + ["INT64"] * 3 + ["STRING", "BOOL", "EMBEDDING"]
NAMES = [f"cb_f{i}" for i in range(len(TYPES))]
ENTITIES = 1000


def _value(vt: str, e: int) -> Any:
    return {
        "FLOAT": e / 7,
        "INT64": e * 1_000_003,
        "STRING": f"s{e}",
        "BOOL": e % 2 == 0,
        "EMBEDDING": [e / 3] * 8,
    }[vt]


def setup(client: Client) -> list[str]:
    for name, vt in zip(NAMES, TYPES, strict=True):
        client.create_feature({"name": name, "entity_type": "user", "value_type": vt})
    ids = [f"u{e}" for e in range(ENTITIES)]
    when = datetime.now(UTC).replace(microsecond=0)
    rows = [
        {"entity_id": i, "event_time": when, **{n: _value(vt, e) for n, vt in zip(NAMES, TYPES, strict=True)}}
        for e, i in enumerate(ids)
    ]
    client.write_features("user", rows)
    return ids


def timed(fn: Callable[[], object], n: int, cpu: list[float] | None = None) -> list[float]:
    """Wall seconds per call; with `cpu`, this process's CPU seconds per call are appended there."""
    out = []
    for _ in range(n):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        out.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(time.process_time() - start_cpu)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


async def run_async(target: str, calls: int) -> dict[str, Any]:
    """get_features through AsyncClient against its bare grpc.aio stub, c=1, rotating blocks."""
    async with AsyncClient(target) as client:
        await client.wait_ready()
        request = fs.GetFeaturesRequest(entity_type="user", entity_id="u1", feature_names=NAMES)

        async def facade() -> object:
            return await client.get_features("user", "u1", NAMES)

        async def bare() -> object:
            return await client.store.GetFeatures(request, timeout=10)

        variants: dict[str, Callable[[], Awaitable[object]]] = {"facade": facade, "bare_stub_same_channel": bare}
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for fn in variants.values():
            for _ in range(200):
                await fn()
        block = 100
        for round_ in range(max(1, calls // block)):
            order = list(variants.items())
            shift = round_ % len(order)
            for name, fn in order[shift:] + order[:shift]:
                for _ in range(block):
                    start = time.perf_counter()
                    await fn()
                    samples[name].append(time.perf_counter() - start)
    return {name: summary(v) for name, v in samples.items()}


class ValkeyFloor:
    """The read's 1,000 HMGETs (the hash fields the server asks for), pipelined over one raw socket."""

    def __init__(self, port: int, ids: list[str]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        [keys] = self._send(_resp(b"HKEYS", f"f:user:{ids[0]}".encode()), 1)
        by_name = {k.split(b"#")[0].decode(): k for k in keys if b":j#" not in k}
        fields = [by_name[name] for name in NAMES]
        self.request = b"".join(_resp(b"HMGET", f"f:user:{i}".encode(), *fields) for i in ids)
        self.count = len(ids)

    def _send(self, request: bytes, count: int) -> list[Any]:
        self.sock.sendall(request)
        reader = hiredis.Reader()
        replies: list[Any] = []
        while len(replies) < count:
            reader.feed(self.sock.recv(1 << 20))
            while (reply := reader.gets()) is not False:
                replies.append(reply)
        return replies

    def read(self) -> object:
        return self._send(self.request, self.count)


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def serve_bytes(port: int, size: int) -> None:
    """A bare grpc.aio server (uvloop, as the server) whose one method answers `size` fixed bytes."""
    import uvloop

    blob = os.urandom(size)

    async def answer(request: bytes, context: object) -> bytes:
        return blob

    async def main() -> None:
        handler = grpc.unary_unary_rpc_method_handler(answer)  # no (de)serializers: bytes as they are
        server = grpc.aio.server(options=[("grpc.max_send_message_length", 64 << 20)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("floor.Floor", {"Get": handler}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(main())


def run(target: str, calls: int, batches: int, valkey_port: int) -> dict[str, Any]:
    with Client(target) as client, FeatureStoreClient(target) as plain:
        client.wait_ready()
        ids = setup(client)
        request = fs.GetFeaturesRequest(entity_type="user", entity_id="u1", feature_names=NAMES)
        variants: dict[str, Callable[[], object]] = {
            "facade": lambda: client.get_features("user", "u1", NAMES),
            "bare_stub_same_channel": lambda: client.store.GetFeatures(request, timeout=10),
            "bare_stub_plain_channel": lambda: plain.store.GetFeatures(request, timeout=10),
        }
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for fn in variants.values():
            timed(fn, 200)  # warm-up
        block = 100
        for round_ in range(max(1, calls // block)):
            # Blocks in a rotating order: every variant sees the same machine, and none always runs first.
            order = list(variants.items())
            shift = round_ % len(order)
            for name, fn in order[shift:] + order[:shift]:
                samples[name] += timed(fn, block)

        batch = fs.BatchGetFeaturesRequest(entity_type="user", entity_ids=ids, feature_names=NAMES)
        frame = client.batch_get_features("user", ids, NAMES, output="pandas")
        assert frame.shape == (ENTITIES, len(NAMES) + 1), frame.shape
        assert str(frame["cb_f4"].dtype) == "Int64"
        assert frame["cb_f4"].iloc[999] == 999 * 1_000_003
        reads: dict[str, Callable[[], object]] = {
            "rpc": lambda: client.store.BatchGetFeatures(batch, timeout=10),
            "pandas": lambda: client.batch_get_features("user", ids, NAMES, output="pandas"),
            "arrow": lambda: client.batch_get_features("user", ids, NAMES, output="arrow"),
            "records": lambda: client.batch_get_features("user", ids, NAMES),
            # The DataFrame built from parsed messages (the path before the numpy reader; its fallback).
            "pandas_protobuf": lambda: client_common.batch_frame(
                client.store.BatchGetFeatures(batch, timeout=10), NAMES, False, False
            ).output(client.value_types(NAMES), "pandas"),
        }
        size = client.store.BatchGetFeatures(batch, timeout=10).ByteSize()
        port = free_port()
        floor = subprocess.Popen([sys.executable, __file__, "--serve-bytes", str(port), str(size)])
        valkey = ValkeyFloor(valkey_port, ids)
        floor_channel = grpc.insecure_channel(f"127.0.0.1:{port}", [("grpc.max_receive_message_length", 64 << 20)])
        try:
            grpc.channel_ready_future(floor_channel).result(timeout=30)
            floor_call = floor_channel.unary_unary("/floor.Floor/Get", None, None)
            reads["valkey_floor"] = valkey.read
            reads["grpc_floor"] = lambda: floor_call(b"", timeout=10)
            results: dict[str, list[float]] = {name: [] for name in reads}
            cpu: dict[str, list[float]] = {name: [] for name in reads}
            for fn in reads.values():
                timed(fn, 3)
            for round_ in range(batches):
                order = list(reads.items())
                shift = round_ % len(order)
                for name, fn in order[shift:] + order[:shift]:
                    results[name] += timed(fn, 1, cpu[name])
        finally:
            floor_channel.close()
            valkey.sock.close()
            floor.terminate()
            floor.wait()
    return {
        "get_features": {name: summary(v) for name, v in samples.items()},
        "batch_1000x10": {k: summary(v) for k, v in results.items()},
        "batch_1000x10_client_cpu": {k: summary(v) for k, v in cpu.items()},
        "response_bytes": size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000, help="get_features calls per variant")
    parser.add_argument("--batches", type=int, default=40, help="1,000-entity reads per variant")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "client.json")
    parser.add_argument("--serve-bytes", nargs=2, type=int, metavar=("PORT", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bytes:
        serve_bytes(*args.serve_bytes)
        return
    load_before = os.getloadavg()

    state = Path(tempfile.mkdtemp(prefix="fs-bench-client-"))
    pg = start_postgres(state / "postgres", free_port(), durable=False)
    valkey = start_valkey(state / "valkey", free_port(), durable=False)
    dsn, url = str(pg.extra["dsn"]), str(valkey.extra["url"])
    server = start_server(state, free_port(), dsn, url, ["--log-level", "WARNING"])
    try:
        report = run(f"127.0.0.1:{server.port}", args.calls, args.batches, valkey.port)
        report["get_features_async"] = asyncio.run(run_async(f"127.0.0.1:{server.port}", args.calls))
    finally:
        for proc in (server, valkey, pg):
            proc.stop()
        shutil.rmtree(state, ignore_errors=True)

    report["load_average_before_after"] = [load_before, os.getloadavg()]
    online, batch, cpu = report["get_features"], report["batch_1000x10"], report["batch_1000x10_client_cpu"]
    floors = batch["valkey_floor"]["p50_ms"] + batch["grpc_floor"]["p50_ms"]
    aio = report["get_features_async"]
    checks = [
        ("get_features 1x10 c=1, bare stub p50 ms", online["bare_stub_same_channel"]["p50_ms"], "-"),
        ("  bare stub, channel without retry config p50 ms", online["bare_stub_plain_channel"]["p50_ms"], "-"),
        ("  facade p50 ms", online["facade"]["p50_ms"], "-"),
        (
            "  facade / bare stub, p50",
            online["facade"]["p50_ms"] / online["bare_stub_same_channel"]["p50_ms"],
            "<= 1.15",
        ),
        ("  facade / bare stub, p99", online["facade"]["p99_ms"] / online["bare_stub_same_channel"]["p99_ms"], "-"),
        ("get_features 1x10 c=1 asyncio, bare stub p50 ms", aio["bare_stub_same_channel"]["p50_ms"], "-"),
        (
            "  AsyncClient / bare stub, p50",
            aio["facade"]["p50_ms"] / aio["bare_stub_same_channel"]["p50_ms"],
            "<= 1.15",
        ),
        ("batch 1000x10, bare RPC p50 ms", batch["rpc"]["p50_ms"], "-"),
        ("  -> records (FeatureVectors) p50 ms", batch["records"]["p50_ms"], "-"),
        ("  -> pyarrow Table p50 ms", batch["arrow"]["p50_ms"], "-"),
        ("  -> pandas DataFrame p50 ms", batch["pandas"]["p50_ms"], "< 10"),
        ("  DataFrame / bare RPC, p50", batch["pandas"]["p50_ms"] / batch["rpc"]["p50_ms"], "-"),
        ("  -> DataFrame through protobuf messages p50 ms", batch["pandas_protobuf"]["p50_ms"], "-"),
        ("  client CPU ms per call: bare RPC", cpu["rpc"]["p50_ms"], "-"),
        ("  client CPU ms per call: -> DataFrame", cpu["pandas"]["p50_ms"], "-"),
        ("  client CPU ms of the conversion alone", cpu["pandas"]["p50_ms"] - cpu["rpc"]["p50_ms"], "-"),
        (
            "  the same through protobuf messages",
            cpu["pandas_protobuf"]["p50_ms"] - cpu["rpc"]["p50_ms"],
            "-",
        ),
        ("floor: Valkey alone, the read's 1,000 HMGETs p50 ms", batch["valkey_floor"]["p50_ms"], "-"),
        (f"floor: gRPC alone, a {report['response_bytes']:,}-byte answer p50 ms", batch["grpc_floor"]["p50_ms"], "-"),
        ("  the two floors together, ms", floors, "-"),
        ("  DataFrame - floors: server and client Python, ms", batch["pandas"]["p50_ms"] - floors, "-"),
    ]
    print_checks(checks)
    print("load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}".format(*load_before))
    print("load average (1, 5, 15 min) after:  {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    write_json(args.out, report)


if __name__ == "__main__":
    main()

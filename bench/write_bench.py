"""Write benchmark: 1,000,000 values through WriteFeatures and PushFeatures, against raw ceilings.

    .venv/bin/python bench/write_bench.py            # or: make bench-write

Starts PostgreSQL (shared_buffers as on a server), Valkey and the server (one serving
process and one write worker, as `make up` runs it; see --server-args) on loopback,
registers a 10-feature group and measures, each phase on empty stores:

- the raw ceilings, back to back: pipelined HSETs of the same stored values (both
  forms, the same fields and bytes the server writes) from one Python process
  (redis-py + hiredis), then binary COPY (bytes built before the clock) of the same
  history rows from one connection. Every value goes to both stores, so the
  combined ceiling is 1 / (1/redis + 1/copy) values/s;
- WriteFeatures: 100,000 entities x 10 features in 1,000-row requests, 4 in flight,
  from one client process (requests are serialized before the clock starts);
- PushFeatures: the same rows as 4 concurrent streams of 25 messages each;
- bulk ingest (`jobs.bulk_ingest`, what `featurestore-ingest` runs) of the same rows
  from Parquet, on a local[2] Spark started (and warmed up) before the clock starts.

Valkey's own capacity for the same HSETs (every value's two fields per entity, values
of the stored sizes) is measured with a C client too (redis-benchmark, see
bench/_valkey_c.py), and each write phase's values/s is printed as a fraction of it.

During each write phase a second process (in a session of its own: it stands for a model
server on another machine) reads 1 entity x 10 features with GetFeatures and reports the
latency percentiles: by default an open-loop probe of 200 reads/s, each read timed from
when it was due (`--read-rate`; 0: a closed loop, each read right after the previous one);
the same reader runs alone first for a baseline. Prints values/s, CPU seconds of the
server, PostgreSQL and Valkey, the ratios against the ceilings, and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
# This checkout's code, not the installed one: run from a `git worktree` of an older commit,
# the benchmark starts and measures that commit's server (the before/after figures).
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import grpc  # noqa: E402
import redis  # noqa: E402
from _report import print_checks, write_json  # noqa: E402
from _serving import cpu_seconds, wait_servable  # noqa: E402
from _valkey_c import hset_capacity, require_tool  # noqa: E402

from devstack import SERVER_SETTINGS, free_port, start_postgres, start_server, start_valkey  # noqa: E402
from featurestore import FeatureStoreClient  # noqa: E402
from featurestore.registry.v1 import feature_pb2 as pb  # noqa: E402
from featurestore.registry.v1 import registry_service_pb2 as rs  # noqa: E402
from featurestore.serving.v1 import feature_store_service_pb2 as fs  # noqa: E402
from featurestore.serving.v1 import value_pb2 as vpb  # noqa: E402
from server.core import codec, copy_data, copy_tuples  # noqa: E402

STORE = "/featurestore.serving.v1.FeatureStoreService"
GROUP = "wbench"
FEATURES = 10
COLUMNS = ["entity_type", "entity_id", "feature_name", "event_time", "value", "frame"]


# -- CPU accounting -----------------------------------------------------------------------


class Cpu:
    def __init__(self, server: int, postgres: int, valkey: int) -> None:
        # the server's children: its serving and write workers (--write-workers), if any
        self.pids = {"server": (server, True), "postgres": (postgres, True), "valkey": (valkey, False)}

    def sample(self) -> dict[str, float]:
        out = {name: cpu_seconds(pid, children) for name, (pid, children) in self.pids.items()}
        out.update(self._roles())
        return out

    def _roles(self) -> dict[str, float]:
        """The server's CPU split by process: serving process(es) and write worker(s), when it has children."""
        parent = self.pids["server"][0]
        roles = {"serving": 0.0, "write_worker": 0.0}
        for pid, fields, cmdline in _processes():
            if int(fields[1]) == parent:
                role = "write_worker" if b"--write-worker-socket" in cmdline else "serving"
                roles[role] += cpu_seconds(pid)
        return roles if any(roles.values()) else {}

    def major_faults(self) -> dict[str, float]:
        """Page faults that read from disk, per process group: a page the kernel dropped (this machine's
        proactive reclaim, DAMON, drops pages unused for a minute) costs the process that needs it again
        a wait for the disk, seen as a stall of its reads."""
        out = dict.fromkeys(("serving", "write_worker", "postgres", "valkey"), 0.0)
        roots = {pid: name for name, (pid, _) in self.pids.items()}
        for pid, fields, cmdline in _processes():
            name = roots.get(pid) or roots.get(int(fields[1]))
            if name == "server" and pid != self.pids["server"][0]:
                name = "write_worker" if b"--write-worker-socket" in cmdline else "serving"
            if name in out:
                out[name] += int(fields[9])  # majflt
        return out

    @staticmethod
    def diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
        return {k: round(after[k] - before[k], 2) for k in after}


def _processes() -> Iterator[tuple[int, list[str], bytes]]:
    """Every process now: its pid, its /proc stat fields after the name, its command line."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        yield int(entry.name), stat[stat.rindex(")") + 2 :].split(), cmdline


# -- the data ------------------------------------------------------------------------------


def feature_names() -> list[str]:
    return [f"{GROUP}_f{i}" for i in range(FEATURES)]


def build_rows(entities: int) -> list[fs.EntityRow]:
    rng = random.Random(42)
    names = feature_names()
    return [
        fs.EntityRow(entity_id=f"u{e}", values={n: vpb.Value(float_value=rng.random()) for n in names})
        for e in range(entities)
    ]


def requests(rows: list[fs.EntityRow], when: datetime, batch: int) -> list[bytes]:
    """WriteFeaturesRequest bytes (PushFeaturesRequest has the same fields and numbers)."""
    for row in rows:
        row.event_time.FromDatetime(when)
    return [
        fs.WriteFeaturesRequest(entity_type="user", rows=rows[i : i + batch]).SerializeToString()
        for i in range(0, len(rows), batch)
    ]


def stored_forms(rows: list[fs.EntityRow]) -> tuple[list[tuple[bytes, dict[bytes, bytes]]], list[tuple[Any, ...]]]:
    """What the server stores for `rows`: per entity its hash fields, and the history records."""
    suffix = b"#1"  # float_value is member 1 of Value
    online, history = [], []
    for row in rows:
        when = row.event_time.ToDatetime(tzinfo=UTC)
        fields: dict[bytes, bytes] = {}
        for name, value in row.values.items():
            proto, as_json = codec.encode_stored(name, value, row.event_time)
            fields[name.encode() + suffix] = proto
            fields[name.encode() + b":j" + suffix] = as_json
            history.append(("user", row.entity_id, name, when, value.SerializeToString(), proto[codec.TIME_BYTES :]))
        online.append((b"f:user:" + row.entity_id.encode(), fields))
    return online, history


# -- ceilings ----------------------------------------------------------------------------


def raw_hset(url: str, online: list[tuple[bytes, dict[bytes, bytes]]]) -> float:
    """Seconds for pipelined HSETs of every entity's fields (1,000 entities per round trip)."""
    client = redis.Redis.from_url(url)
    started = time.perf_counter()
    for i in range(0, len(online), 1000):
        pipe = client.pipeline(transaction=False)
        for key, fields in online[i : i + 1000]:
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.execute()
    seconds = time.perf_counter() - started
    client.close()
    return seconds


async def raw_copy(dsn: str, history: list[tuple[Any, ...]]) -> float:
    """Seconds for binary COPY of the same history rows into feature_history (1,000,000 at once).

    The COPY's bytes are built before the clock starts (server.core.copy_data, what the write
    path sends), so the ceiling pays PostgreSQL's work alone, not a client's encoding of the rows.
    """
    data = copy_data(copy_tuples(history))

    async def source() -> AsyncIterator[bytes]:  # an iterable: bytes as they are would be taken for a path
        yield data

    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await conn.copy_to_table("feature_history", source=source(), columns=COLUMNS, format="binary")
        return time.perf_counter() - started
    finally:
        await conn.close()


async def empty_stores(dsn: str, url: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE feature_history")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()


# -- load ------------------------------------------------------------------------------------


async def write_load(target: str, bodies: list[bytes], in_flight: int) -> int:
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        call = channel.unary_unary(
            f"{STORE}/WriteFeatures", request_serializer=None, response_deserializer=fs.WriteFeaturesResponse.FromString
        )
        queue = list(reversed(bodies))
        written = 0

        async def worker() -> None:
            nonlocal written
            while queue:
                body = queue.pop()
                response = await call(body, timeout=60)
                written += response.written_values + response.skipped_values

        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return written


async def push_load(target: str, bodies: list[bytes], streams: int) -> int:
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        call = channel.stream_unary(
            f"{STORE}/PushFeatures", request_serializer=None, response_deserializer=fs.PushFeaturesResponse.FromString
        )

        async def messages(part: list[bytes]) -> AsyncIterator[bytes]:
            for body in part:
                yield body

        parts = [bodies[i::streams] for i in range(streams)]
        responses = await asyncio.gather(*(call(messages(p), timeout=120) for p in parts))
        return sum(r.written_values + r.skipped_values for r in responses)


# -- the concurrent reader -------------------------------------------------------------------


def _reader(
    target: str, entities: int, rate: float, probe: tuple[str, str], ready: Any, stop: Any, out: Connection
) -> None:
    # A session of its own, so a scheduling group of its own where the kernel groups by session
    # (autogroup): the reader stands for a model server on another machine, so it must not share
    # a group (and its CPU share) with this process's load generator or Spark.
    os.setsid()
    rng = random.Random(7)
    ids = [f"u{rng.randrange(entities)}" for _ in range(1000)]
    bodies = [
        fs.GetFeaturesRequest(entity_type="user", entity_id=i, feature_groups=[GROUP]).SerializeToString() for i in ids
    ]
    channel = grpc.insecure_channel(target)
    get = channel.unary_unary(
        f"{STORE}/GetFeatures", request_serializer=None, response_deserializer=fs.GetFeaturesResponse.FromString
    )
    ask: Callable[[int], Any] = lambda i: get(bodies[i % len(bodies)], timeout=10)  # noqa: E731
    kind, url = probe
    if kind == "health":  # the serving process alone: a gRPC round trip, no Valkey
        check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)
        ask = lambda _i: check(b"", timeout=10)  # noqa: E731 - an empty HealthCheckRequest
    elif kind == "hmget":  # Valkey alone: the serving process's one HMGET, from redis-py
        valkey = redis.Redis.from_url(url, socket_timeout=10)
        keys = [f"f:user:{i}".encode() for i in ids]
        fields = [f"{name}#1".encode() for name in feature_names()]
        ask = lambda i: valkey.hmget(keys[i % len(keys)], fields)  # noqa: E731
    for i in range(50):
        ask(i)
    ready.set()
    from_due: list[float] = []
    from_send: list[float] = []
    failures: dict[str, int] = {}

    def read(i: int, due: float) -> None:
        sent = time.perf_counter()
        try:
            ask(i)
            done = time.perf_counter()
            from_due.append((done - due) * 1000)
            from_send.append((done - sent) * 1000)
        except (grpc.RpcError, redis.RedisError) as err:
            code = f"{err.code().name}: {err.details()}" if isinstance(err, grpc.RpcError) else repr(err)
            failures[code] = failures.get(code, 0) + 1

    if rate > 0:
        _open_loop(read, rate, stop)
    else:
        i = 0
        while not stop.is_set():  # a closed loop: each read right after the previous one
            read(i, time.perf_counter())
            i += 1
    out.send((from_due, from_send, failures))
    channel.close()


def _open_loop(read: Callable[[int, float], None], rate: float, stop: Any) -> None:
    """An open-loop probe: a read is due every 1/rate s and starts then (on a thread of a pool),
    whether or not earlier ones have answered, so a stall delays no later read (no coordinated
    omission); its latency counts from when it was due, and apart from when it was sent (the
    difference: the probe's own wait for a CPU)."""
    with ThreadPoolExecutor(max_workers=64) as pool:
        i, due = 0, time.perf_counter()
        while not stop.is_set():
            due += 1 / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            pool.submit(read, i, due)
            i += 1


class Reader:
    """A 1x10 GetFeatures reader in a process (and session) of its own, for the duration of a `with` block.

    `rate` > 0: an open-loop probe of `rate` reads/s, each latency counted from when the read was due;
    `rate` 0: a closed loop (each read right after the previous one, sync grpcio), itself a load of
    about a third of this 2-core machine (its CPU and the serving process's), and blind to the reads a
    stall delays (coordinated omission).
    """

    def __init__(self, target: str, entities: int, rate: float = 0.0, probe: tuple[str, str] = ("get", "")) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._ready, self._stop = ctx.Event(), ctx.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        reader_args = (target, entities, rate, probe, self._ready, self._stop, send)
        self._proc = ctx.Process(target=_reader, args=reader_args)
        self.rate = rate
        self.latencies: list[float] = []
        self.from_send: list[float] = []
        self.failures: dict[str, int] = {}
        self.cpu_s = 0.0

    def __enter__(self) -> Reader:
        self._proc.start()
        self._ready.wait(60)
        assert self._proc.pid is not None
        self._cpu0 = cpu_seconds(self._proc.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc.pid is not None
        self.cpu_s = cpu_seconds(self._proc.pid) - self._cpu0
        self._stop.set()
        self.latencies, self.from_send, self.failures = self._recv.recv()
        self._proc.join()

    @staticmethod
    def _percentile(latencies: list[float], q: float) -> float:
        ordered = sorted(latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def percentile(self, q: float) -> float:
        return self._percentile(self.latencies, q)

    def summary(self) -> dict[str, Any]:
        out = {
            "reads": len(self.latencies),
            "reads_per_s_asked": self.rate,
            "failed": self.failures,
            "p50_ms": round(self.percentile(0.5), 3),
            "p99_ms": round(self.percentile(0.99), 3),
            "p999_ms": round(self.percentile(0.999), 3),
            "max_ms": round(max(self.latencies, default=float("nan")), 3),
            "reader_cpu_s": round(self.cpu_s, 2),
        }
        if self.rate > 0:  # the same reads timed from when they were sent, not from when they were due
            out["p99_from_send_ms"] = round(self._percentile(self.from_send, 0.99), 3)
        return out


# -- main ------------------------------------------------------------------------------------


def register(client: FeatureStoreClient) -> dict[str, pb.Feature]:
    names, registered = feature_names(), {}
    for name in names:
        feature = pb.Feature(name=name, entity_type="user", value_type=pb.FLOAT, frequency=pb.DAILY)
        registered[name] = client.registry.CreateFeature(rs.CreateFeatureRequest(feature=feature))
    group = pb.FeatureGroup(name=GROUP, entity_type="user", feature_names=names)
    client.registry.CreateFeatureGroup(rs.CreateFeatureGroupRequest(feature_group=group))
    wait_servable(client, GROUP)
    return registered


# -- bulk ingest -------------------------------------------------------------------------------


def write_parquet(folder: Path, rows: list[fs.EntityRow], when: datetime, files: int = 4) -> None:
    """The rows as a Parquet table (entity_id, event_time, one double column per feature), in `files` files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = feature_names()
    folder.mkdir(parents=True)
    step = -(-len(rows) // files)
    for n, start in enumerate(range(0, len(rows), step)):
        part = rows[start : start + step]
        columns = {
            "entity_id": pa.array([r.entity_id for r in part], pa.string()),
            "event_time": pa.array([when] * len(part), pa.timestamp("us", tz="UTC")),
        }
        for name in names:
            columns[name] = pa.array([r.values[name].float_value for r in part], pa.float64())
        pq.write_table(pa.table(columns), folder / f"part-{n}.parquet")


class Ingest:
    """A local[2] Spark session and bulk ingest of a Parquet folder into the benchmark's stores."""

    def __init__(self, state: Path, dsn: str, url: str, registered: dict[str, pb.Feature]) -> None:
        from jobs import IngestConfig, SessionConfig, build_session

        conf = {"spark.ui.enabled": "false", "spark.driver.port": str(free_port())}
        session = SessionConfig(master="local[2]", warehouse=str(state / "warehouse"), conf=conf)
        self.spark = build_session(session, "write-bench")
        self.registered = registered
        self.config = IngestConfig(
            entity_type="user",
            entity_column="entity_id",
            event_time_column="event_time",
            redis_url=url,
            redis_cluster=False,
            postgres_dsn=dsn,
        )

    def run(self, folder: Path) -> int:
        from jobs import bulk_ingest

        return bulk_ingest(self.spark.read.parquet(str(folder)), self.config, self.registered).values

    def close(self) -> None:
        self.spark.stop()


def _py_spy(folder: Path | None, name: str, pid: int) -> subprocess.Popen[bytes] | None:
    """`py-spy record` of the server until stopped (SIGINT), as a flame graph in `folder`."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if folder is None or spy is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [spy, "record", "--pid", str(pid), "--subprocesses", "--rate", "200", "-o", str(folder / f"{name}.svg")]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def commandstats(url: str, reset: bool = False) -> dict[str, dict[str, float]]:
    """Valkey's INFO commandstats (calls, usec per command), after CONFIG RESETSTAT if `reset`."""
    client = redis.Redis.from_url(url)
    try:
        if reset:
            client.config_resetstat()
        stats: dict[str, dict[str, float]] = client.info("commandstats")
        return stats
    finally:
        client.close()


def valkey_stalls(url: str, reset: bool = False) -> dict[str, list[int]]:
    """Valkey's own events of 2 ms or more since the last reset (LATENCY LATEST: event -> [latest ms,
    worst ms]): a command, an expiry cycle, a fork... what a read could have waited for inside Valkey."""
    client = redis.Redis.from_url(url)
    try:
        if reset:
            client.config_set("latency-monitor-threshold", 2)
            client.latency_reset()
            return {}
        events = cast(list[list[Any]], client.latency_latest())
        return {str(event, "utf-8"): [int(latest), int(worst)] for event, _, latest, worst, *_ in events}
    finally:
        client.close()


def valkey_commands(stats: dict[str, dict[str, float]], values: int) -> dict[str, dict[str, float]]:
    """Per command: calls, µs per call and µs per value written (of Valkey's time inside commands)."""
    out = {}
    for name, stat in sorted(stats.items(), key=lambda kv: -kv[1]["usec"]):
        if stat["usec"] >= 1000:  # commands that took at least a millisecond in all
            command = name.removeprefix("cmdstat_")
            out[command] = {
                "calls": stat["calls"],
                "usec_per_call": stat["usec_per_call"],
                "usec_per_value": round(stat["usec"] / values, 3),
            }
    return out


def phase(
    name: str, cpu: Cpu, target: str, args: argparse.Namespace, run: Any, values: int, url: str
) -> dict[str, Any]:
    commandstats(url, reset=True)
    valkey_stalls(url, reset=True)
    profile = args.profile
    with Reader(target, args.entities, args.read_rate, (args.read_probe, url)) as reader:
        spy = _py_spy(profile, name, cpu.pids["server"][0])
        before, faults = cpu.sample(), cpu.major_faults()
        started = time.perf_counter()
        written = run()
        seconds = time.perf_counter() - started
        after, faults_after = cpu.sample(), cpu.major_faults()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
    assert written == values, (name, written)
    result = {"seconds": round(seconds, 3), "values_per_s": round(values / seconds), "cpu_s": Cpu.diff(after, before)}
    result["read_1x10_during"] = reader.summary()
    result["major_faults"] = Cpu.diff(faults_after, faults)
    result["valkey_commands"] = valkey_commands(commandstats(url), values)
    result["valkey_stalls_ms"] = valkey_stalls(url)
    print(f"{name}: {result}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--batch-rows", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument(
        "--server-args",
        default="--write-workers 1",
        help="extra flags for the server, space-separated (default: the shape `make up` and kubernetes/ run)",
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy record the server during the write phases into this folder"
    )
    parser.add_argument(
        "--read-rate",
        type=float,
        default=200.0,
        help="1x10 reads/s of the concurrent reader, an open-loop probe timed from when each read is due "
        "(default 200); 0: back to back (sync grpcio), a closed loop that is itself a load",
    )
    parser.add_argument(
        "--read-probe",
        choices=["get", "health", "hmget"],
        default="get",
        help="what the reader asks: GetFeatures 1x10 (default); a gRPC health check of the serving process "
        "(the server's part without Valkey); the same HMGET straight to Valkey (Valkey's part, from redis-py)",
    )
    parser.add_argument(
        "--skip-bulk", action="store_true", help="no bulk ingest phase (a checkout from before `jobs.bulk_ingest`)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "write.json")
    args = parser.parse_args()

    require_tool()
    state = Path(tempfile.mkdtemp(prefix="fs-bench-write-"))
    pg = start_postgres(state / "postgres", free_port(), durable=False, settings=SERVER_SETTINGS)
    valkey = start_valkey(state / "valkey", free_port(), durable=False)
    dsn, url = str(pg.extra["dsn"]), str(valkey.extra["url"])
    server = start_server(state, free_port(), dsn, url, ["--log-level", "WARNING", *args.server_args.split()])
    target = f"127.0.0.1:{server.port}"
    try:
        report = run(args, state, target, dsn, url, Cpu(server.popen.pid, pg.popen.pid, valkey.popen.pid))
    finally:
        for proc in (server, valkey, pg):
            proc.stop()
        shutil.rmtree(state, ignore_errors=True)
    values = report["values"]
    ceiling = report["ceiling_both_values_per_s"]
    write, push = report["write_features"], report["push_features"]
    nan = float("nan")
    bulk = report["bulk_ingest"] or {"values_per_s": nan, "read_1x10_during": {"p99_ms": nan, "max_ms": nan}}
    reader = "open loop, from due" if args.read_rate > 0 else "closed loop"
    capacity = report["valkey_hset_capacity_values_per_s"]
    checks = [
        ("raw pipelined HSET, values/s (ceiling)", values / report["raw_hset_seconds"], "-"),
        ("raw binary COPY, rows/s (ceiling)", values / report["raw_copy_seconds"], "-"),
        ("raw HSET then COPY, values/s (ceiling)", ceiling, "-"),
        ("WriteFeatures values/s", write["values_per_s"], "-"),
        ("  / ceiling", write["values_per_s"] / ceiling, ">= 0.50"),
        ("  server CPU us per value", write["cpu_s"]["server"] / values * 1e6, "-"),
        (f"  1x10 read p99 ms while writing ({reader})", write["read_1x10_during"]["p99_ms"], "<= 5"),
        ("  1x10 read max ms while writing", write["read_1x10_during"]["max_ms"], "-"),
        ("PushFeatures values/s", push["values_per_s"], "-"),
        ("  / ceiling", push["values_per_s"] / ceiling, ">= 0.50"),
        ("  server CPU us per value", push["cpu_s"]["server"] / values * 1e6, "-"),
        (f"  1x10 read p99 ms while writing ({reader})", push["read_1x10_during"]["p99_ms"], "<= 5"),
        ("  1x10 read max ms while writing", push["read_1x10_during"]["max_ms"], "-"),
        ("Bulk ingest from Parquet values/s", bulk["values_per_s"], "-"),
        ("  / ceiling", bulk["values_per_s"] / ceiling, ">= 0.70"),
        (f"  1x10 read p99 ms while writing ({reader})", bulk["read_1x10_during"]["p99_ms"], "<= 5"),
        ("  1x10 read max ms while writing", bulk["read_1x10_during"]["max_ms"], "-"),
        ("1x10 read p99 ms, no writes", report["read_1x10_idle"]["p99_ms"], "-"),
        ("1x10 reads/s asked (0: back to back, closed loop)", args.read_rate, "-"),
        ("Valkey's HSET capacity, C client, values/s", capacity, "-"),
        ("  raw pipelined HSET from Python / it", values / report["raw_hset_seconds"] / capacity, "-"),
        ("  WriteFeatures / it", write["values_per_s"] / capacity, "-"),
        ("  PushFeatures / it", push["values_per_s"] / capacity, "-"),
        ("  bulk ingest / it", bulk["values_per_s"] / capacity, "-"),
    ]
    print()
    print_checks(checks)
    machine = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "when": datetime.now(UTC).isoformat()}
    write_json(args.out, {"machine": machine, "report": report, "checks": checks})
    print(f"\nwritten to {args.out}")
    return 0


def bulk_phase(
    args: argparse.Namespace,
    state: Path,
    target: str,
    dsn: str,
    url: str,
    cpu: Cpu,
    registered: dict[str, pb.Feature],
    values: int,
) -> dict[str, Any]:
    ingest = Ingest(state, dsn, url, registered)
    try:
        ingest.run(state / "warm-up")  # Spark's Python workers started before the clock
        asyncio.run(empty_stores(dsn, url))
        return phase("BulkIngest", cpu, target, args, lambda: ingest.run(state / "bulk"), values, url)
    finally:
        ingest.close()


def run(args: argparse.Namespace, state: Path, target: str, dsn: str, url: str, cpu: Cpu) -> dict[str, Any]:
    with FeatureStoreClient(target) as client:
        registered = register(client)
    now = datetime.now(UTC).replace(microsecond=0)
    first, second, third = now - timedelta(minutes=2), now - timedelta(minutes=1), now - timedelta(seconds=30)
    print("building requests and the Parquet table...", flush=True)
    rows = build_rows(args.entities)
    write_bodies = requests(rows, first, args.batch_rows)
    online, history = stored_forms(rows)
    push_bodies = requests(rows, second, args.batch_rows)
    if not args.skip_bulk:
        write_parquet(state / "bulk", rows, third)
        write_parquet(state / "warm-up", rows[:1000], third - timedelta(seconds=1), files=2)
    values = args.entities * FEATURES
    sizes = (len(online[0][1][b"wbench_f0#1"]), len(online[0][1][b"wbench_f0:j#1"]))
    del rows

    before = cpu.sample()
    commandstats(url, reset=True)
    hset = raw_hset(url, online)
    raw_commands = valkey_commands(commandstats(url), values)
    copy = asyncio.run(raw_copy(dsn, history))
    raw_cpu = Cpu.diff(cpu.sample(), before)
    del online, history
    print(f"raw HSET {values / hset:,.0f} values/s, raw COPY {values / copy:,.0f} rows/s ({raw_cpu})", flush=True)
    capacity = hset_capacity(url, feature_names(), sizes, keys=20_000, requests=200_000)
    print(f"Valkey's HSET capacity (C client): {capacity:,.0f} values/s", flush=True)
    asyncio.run(empty_stores(dsn, url))
    faults = cpu.major_faults()
    valkey_stalls(url, reset=True)
    with Reader(target, args.entities, args.read_rate, (args.read_probe, url)) as idle:
        time.sleep(5)
    faults = Cpu.diff(cpu.major_faults(), faults)
    print(f"1x10 reads alone: {idle.summary()}, major faults {faults}, Valkey {valkey_stalls(url)}", flush=True)

    write = phase(
        "WriteFeatures",
        cpu,
        target,
        args,
        lambda: asyncio.run(write_load(target, write_bodies, args.in_flight)),
        values,
        url,
    )
    asyncio.run(empty_stores(dsn, url))
    push = phase(
        "PushFeatures",
        cpu,
        target,
        args,
        lambda: asyncio.run(push_load(target, push_bodies, args.in_flight)),
        values,
        url,
    )
    bulk = None if args.skip_bulk else bulk_phase(args, state, target, dsn, url, cpu, registered, values)
    return {
        "values": values,
        "valkey_hset_capacity_values_per_s": round(capacity),
        "bulk_ingest": bulk,
        "raw_hset_seconds": round(hset, 3),
        "raw_copy_seconds": round(copy, 3),
        "raw_cpu_s": raw_cpu,
        "raw_hset_valkey_commands": raw_commands,
        "ceiling_both_values_per_s": round(values / (hset + copy)),
        "read_1x10_idle": idle.summary(),
        "write_features": write,
        "push_features": push,
    }


if __name__ == "__main__":
    raise SystemExit(main())

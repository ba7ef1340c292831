"""Write benchmark: 1,000,000 values through WriteFeatures and PushFeatures, against raw ceilings.

    .venv/bin/python bench/write_bench.py            # or: make bench-write

Starts PostgreSQL (shared_buffers as on a server), Valkey and the server (one serving
process and one write worker, as `make up` runs it; see --server-args) on loopback,
registers a 10-feature group and measures, each phase on empty stores:

- the raw ceilings, back to back: pipelined HSETs of the same stored values (both
  forms, the same fields and bytes the server writes) from one Python process
  (redis-py + hiredis), then binary COPY (`copy_records_to_table`) of the same
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

During each write phase a second process reads 1 entity x 10 features (GetFeatures,
one at a time) and reports the latency percentiles; the same reader runs alone first
for a baseline. Prints values/s, CPU seconds of the server, PostgreSQL and Valkey, the
ratios against the ceilings, and writes JSON.
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
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

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
from server.core import codec  # noqa: E402

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
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == parent:
                role = "write_worker" if b"--write-worker-socket" in cmdline else "serving"
                roles[role] += cpu_seconds(int(entry.name))
        return roles if any(roles.values()) else {}

    @staticmethod
    def diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
        return {k: round(after[k] - before[k], 2) for k in after}


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
    """Seconds for binary COPY of the same history rows into feature_history (1,000,000 at once)."""
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await conn.copy_records_to_table("feature_history", records=history, columns=COLUMNS)
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


def _reader(target: str, entities: int, rate: float, ready: Any, stop: Any, out: Connection) -> None:
    channel = grpc.insecure_channel(target)
    call = channel.unary_unary(
        f"{STORE}/GetFeatures", request_serializer=None, response_deserializer=fs.GetFeaturesResponse.FromString
    )
    rng = random.Random(7)
    bodies = [
        fs.GetFeaturesRequest(
            entity_type="user", entity_id=f"u{rng.randrange(entities)}", feature_groups=[GROUP]
        ).SerializeToString()
        for _ in range(1000)
    ]
    for body in bodies[:50]:
        call(body, timeout=10)
    ready.set()
    latencies: list[float] = []
    failures: dict[str, int] = {}
    i, due = 0, time.perf_counter()
    while not stop.is_set():
        if rate > 0:  # a paced probe: one read every 1/rate s (none skipped when one ran late)
            due += 1 / rate
            time.sleep(max(0.0, due - time.perf_counter()))
        t0 = time.perf_counter()
        try:
            call(bodies[i % len(bodies)], timeout=10)
            latencies.append((time.perf_counter() - t0) * 1000)
        except grpc.RpcError as err:
            code = f"{err.code().name}: {err.details()}"
            failures[code] = failures.get(code, 0) + 1
        i += 1
    out.send((latencies, failures))
    channel.close()


class Reader:
    """A 1x10 GetFeatures loop in a process of its own, for the duration of a `with` block.

    `rate` 0: each read right after the previous one (a closed loop: the reader is itself a
    load, about a core of client and server CPU); `rate` > 0: a probe of `rate` reads/s.
    """

    def __init__(self, target: str, entities: int, rate: float = 0.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._ready, self._stop = ctx.Event(), ctx.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_reader, args=(target, entities, rate, self._ready, self._stop, send))
        self.latencies: list[float] = []
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
        self.latencies, self.failures = self._recv.recv()
        self._proc.join()

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "reads": len(self.latencies),
            "failed": self.failures,
            "p50_ms": round(self.percentile(0.5), 3),
            "p99_ms": round(self.percentile(0.99), 3),
            "max_ms": round(max(self.latencies, default=float("nan")), 3),
            "reader_cpu_s": round(self.cpu_s, 2),
        }


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
    profile = args.profile
    with Reader(target, args.entities, args.read_rate) as reader:
        spy = _py_spy(profile, name, cpu.pids["server"][0])
        before = cpu.sample()
        started = time.perf_counter()
        written = run()
        seconds = time.perf_counter() - started
        after = cpu.sample()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
    assert written == values, (name, written)
    result = {"seconds": round(seconds, 3), "values_per_s": round(values / seconds), "cpu_s": Cpu.diff(after, before)}
    result["read_1x10_during"] = reader.summary()
    result["valkey_commands"] = valkey_commands(commandstats(url), values)
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
        default=0.0,
        help="1x10 reads/s of the concurrent reader; 0 (default): back to back, a closed loop that is itself a load",
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
    bulk = report["bulk_ingest"] or {"values_per_s": float("nan"), "read_1x10_during": {"p99_ms": float("nan")}}
    capacity = report["valkey_hset_capacity_values_per_s"]
    checks = [
        ("raw pipelined HSET, values/s (ceiling)", values / report["raw_hset_seconds"], "-"),
        ("raw binary COPY, rows/s (ceiling)", values / report["raw_copy_seconds"], "-"),
        ("raw HSET then COPY, values/s (ceiling)", ceiling, "-"),
        ("WriteFeatures values/s", write["values_per_s"], "-"),
        ("  / ceiling", write["values_per_s"] / ceiling, ">= 0.50"),
        ("  server CPU us per value", write["cpu_s"]["server"] / values * 1e6, "-"),
        ("  1x10 read p99 ms while writing", write["read_1x10_during"]["p99_ms"], "<= 5"),
        ("PushFeatures values/s", push["values_per_s"], "-"),
        ("  / ceiling", push["values_per_s"] / ceiling, ">= 0.50"),
        ("  server CPU us per value", push["cpu_s"]["server"] / values * 1e6, "-"),
        ("  1x10 read p99 ms while writing", push["read_1x10_during"]["p99_ms"], "<= 5"),
        ("Bulk ingest from Parquet values/s", bulk["values_per_s"], "-"),
        ("  / ceiling", bulk["values_per_s"] / ceiling, ">= 0.70"),
        ("  1x10 read p99 ms while writing", bulk["read_1x10_during"]["p99_ms"], "-"),
        ("1x10 read p99 ms, no writes", report["read_1x10_idle"]["p99_ms"], "-"),
        ("1x10 reads/s asked (0: back to back)", args.read_rate, "-"),
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
    with Reader(target, args.entities, args.read_rate) as idle:
        time.sleep(2)
    print(f"1x10 reads alone: {idle.summary()}", flush=True)

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

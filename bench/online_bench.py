"""Online serving benchmark: the real stack under h2load, against ceilings measured in the same run.

    .venv/bin/python bench/online_bench.py            # or: make bench

Starts PostgreSQL, Valkey, one server process and Envoy on loopback, loads
100,000 entities of a 10-feature group and 10,000 entities of a 250-feature
group through WriteFeatures, then drives load with h2load (a C HTTP/2 client,
not the bottleneck) using pre-encoded gRPC frames. Shapes: 1 entity x 10
features, 100 x 10, 1 x 250; transports: gRPC direct and REST through Envoy;
concurrency 1 and 64. Ceilings: a no-op RPC on the same server (the health
check), raw Redis reads of the same keys from Python (redis.asyncio +
hiredis, pipelined) and Valkey's own capacity for the same HMGETs measured
with a C client (redis-benchmark, bench/_valkey_c.py). Prints a table and the
target checks, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402
from _grpcio_driver import drive  # noqa: E402
from _report import print_checks, write_json  # noqa: E402
from _serving import cpu_seconds, wait_servable  # noqa: E402
from _valkey_c import hmget_capacity, hset_capacity, require_tool  # noqa: E402
from google.protobuf.message import Message  # noqa: E402

from devstack import free_port, start_envoy, start_postgres, start_server, start_valkey  # noqa: E402
from featurestore import FeatureStoreClient  # noqa: E402
from featurestore.registry.v1 import feature_pb2 as pb  # noqa: E402
from featurestore.registry.v1 import registry_service_pb2 as rs  # noqa: E402
from featurestore.serving.v1 import feature_store_service_pb2 as fs  # noqa: E402
from featurestore.serving.v1 import value_pb2 as vpb  # noqa: E402

STORE = "/featurestore.serving.v1.FeatureStoreService"
GROUP_10, GROUP_250 = "bench_10", "bench_250"


@dataclass
class Result:
    name: str
    transport: str
    concurrency: int
    requests_per_s: float
    values_per_s: float
    p50_ms: float
    p99_ms: float
    succeeded: int
    failed: int
    server_cpu_us: float = float("nan")  # the server process's CPU time per request


def _percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def h2load(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float, h1: bool
) -> dict[str, float]:
    """Run h2load for `seconds`; requests/s and latency percentiles from its per-request log."""
    with tempfile.TemporaryDirectory() as tmp:
        body_file, log_file = Path(tmp) / "body", Path(tmp) / "log"
        body_file.write_bytes(body)
        clients, streams = (1, 1) if concurrency == 1 else (8, concurrency // 8)
        if h1:
            clients, streams = concurrency, 1
        cmd = [
            "h2load",
            "-c",
            str(clients),
            "-m",
            str(streams),
            "-D",
            str(max(1, round(seconds))),
            "--warm-up-time",
            "1",
        ]
        cmd += ["-d", str(body_file), "--log-file", str(log_file)]
        for key, value in headers.items():
            cmd += ["-H", f"{key}: {value}"]
        cmd += ["--h1"] if h1 else []
        out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
        latencies = [int(line.split("\t")[2]) / 1000 for line in log_file.read_text().splitlines() if line]
        statuses = [line.split("\t")[1] for line in log_file.read_text().splitlines() if line]
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    assert done, out
    assert rps, out
    ok_status = sum(1 for s in statuses if s == "200")
    return {
        "rps": float(rps.group(1)),
        "p50": _percentile(latencies, 0.50),
        "p99": _percentile(latencies, 0.99),
        "succeeded": ok_status,
        "failed": len(statuses) - ok_status,
    }


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


GRPC_HEADERS = {"content-type": "application/grpc", "te": "trailers"}
JSON_HEADERS = {"content-type": "application/json"}


def register(client: FeatureStoreClient, group: str, count: int) -> list[str]:
    names = [f"{group}_f{i}" for i in range(count)]
    for name in names:
        feature = pb.Feature(name=name, entity_type="user", value_type=pb.FLOAT, frequency=pb.DAILY)
        client.registry.CreateFeature(rs.CreateFeatureRequest(feature=feature))
    fg = pb.FeatureGroup(name=group, entity_type="user", feature_names=names)
    client.registry.CreateFeatureGroup(rs.CreateFeatureGroupRequest(feature_group=fg))
    return names


def load(client: FeatureStoreClient, names: list[str], entities: int, batch_rows: int) -> float:
    """Write every entity's values through WriteFeatures; returns values/s."""
    rng = random.Random(42)
    now = datetime.now(UTC)
    started, written = time.perf_counter(), 0
    for start in range(0, entities, batch_rows):
        rows = []
        for e in range(start, min(entities, start + batch_rows)):
            row = fs.EntityRow(entity_id=f"u{e}", values={n: vpb.Value(float_value=rng.random()) for n in names})
            row.event_time.FromDatetime(now)
            rows.append(row)
        written += client.store.WriteFeatures(fs.WriteFeaturesRequest(entity_type="user", rows=rows)).written_values
    assert written == entities * len(names), written
    return written / (time.perf_counter() - started)


async def raw_redis(
    url: str, keys: list[bytes], fields: list[bytes], concurrency: int, seconds: float
) -> dict[str, float]:
    """Pipelined HMGETs of `keys` x `fields` per request from Python: the client-side ceiling."""
    client = aioredis.Redis.from_url(url, max_connections=concurrency)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            if len(keys) == 1:
                await client.execute_command("HMGET", keys[0], *fields)  # type: ignore[no-untyped-call]
            else:
                pipe = client.pipeline(transaction=False)
                for key in keys:
                    pipe.execute_command("HMGET", key, *fields)
                await pipe.execute()
            latencies.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.aclose()
    return {"rps": len(latencies) / elapsed, "p50": _percentile(latencies, 0.5), "p99": _percentile(latencies, 0.99)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--entities-250", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each h2load run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "online.json")
    parser.add_argument("--keep", action="store_true", help="leave the stack running for profiling")
    args = parser.parse_args()
    if not shutil.which("h2load"):
        sys.exit("h2load is missing: apt-get install nghttp2-client")
    require_tool()

    state = Path(tempfile.mkdtemp(prefix="fs-bench-"))
    pg = start_postgres(state / "postgres", free_port(), durable=False)
    valkey = start_valkey(state / "valkey", free_port(), durable=False)
    server = start_server(
        state, free_port(), str(pg.extra["dsn"]), str(valkey.extra["url"]), ["--log-level", "WARNING"]
    )
    envoy = start_envoy(state, free_port(), server.port)
    procs = [envoy, server, valkey, pg]
    try:
        return run(args, server.port, envoy.port, str(valkey.extra["url"]), server.popen.pid)
    finally:
        if args.keep:
            print(f"stack left running: gRPC 127.0.0.1:{server.port}, state {state}")
        else:
            for proc in procs:
                proc.stop()
            shutil.rmtree(state, ignore_errors=True)


def run(args: argparse.Namespace, grpc_port: int, http_port: int, redis_url: str, server_pid: int) -> int:
    print(f"server pid {server_pid}; loading data...", flush=True)
    with FeatureStoreClient(f"127.0.0.1:{grpc_port}") as client:
        names10 = register(client, GROUP_10, 10)
        names250 = register(client, GROUP_250, 250)
        wait_servable(client, GROUP_10)
        wait_servable(client, GROUP_250)
        load_rate = load(client, names10, args.entities, 1000)
        load(client, names250, args.entities_250, 100)
        print(f"loaded {args.entities} x 10 and {args.entities_250} x 250 values ({load_rate:,.0f} values/s written)")

        rng = random.Random(3)
        shapes: dict[str, fs.GetFeaturesRequest | fs.BatchGetFeaturesRequest] = {
            "1x10": fs.GetFeaturesRequest(entity_type="user", entity_id="u123", feature_groups=[GROUP_10]),
            "100x10": fs.BatchGetFeaturesRequest(
                entity_type="user",
                entity_ids=[f"u{rng.randrange(args.entities)}" for _ in range(100)],
                feature_groups=[GROUP_10],
            ),
            "1x250": fs.GetFeaturesRequest(entity_type="user", entity_id="u7", feature_groups=[GROUP_250]),
        }
        values_per_request = {"1x10": 10, "100x10": 1000, "1x250": 250}
        for name, request in shapes.items():  # correctness before speed
            if isinstance(request, fs.GetFeaturesRequest):
                features = list(client.store.GetFeatures(request).features)
            else:
                features = [f for e in client.store.BatchGetFeatures(request).entities for f in e.features]
            assert len(features) == values_per_request[name], name
            assert all(f.status == fs.PRESENT for f in features), name

    results: list[Result] = []
    base = f"http://127.0.0.1:{grpc_port}"
    for concurrency in (1, 64):
        noop = h2load(
            f"{base}/grpc.health.v1.Health/Check", grpc_frame(b""), GRPC_HEADERS, concurrency, args.seconds, False
        )
        results.append(
            Result(
                "no-op RPC",
                "grpc",
                concurrency,
                noop["rps"],
                0,
                noop["p50"],
                noop["p99"],
                int(noop["succeeded"]),
                int(noop["failed"]),
            )
        )
    for name, request in shapes.items():
        path = f"{STORE}/GetFeatures" if name != "100x10" else f"{STORE}/BatchGetFeatures"
        rest_path = "/api/feature-store/features" if name != "100x10" else "/api/feature-store/batch-features"
        body_json = json.dumps(_json_of(request)).encode()
        for concurrency in (1, 64):
            g = h2load(
                base + path, grpc_frame(request.SerializeToString()), GRPC_HEADERS, concurrency, args.seconds, False
            )
            results.append(
                Result(
                    name,
                    "grpc",
                    concurrency,
                    g["rps"],
                    g["rps"] * values_per_request[name],
                    g["p50"],
                    g["p99"],
                    int(g["succeeded"]),
                    int(g["failed"]),
                )
            )
            r = h2load(
                f"http://127.0.0.1:{http_port}{rest_path}", body_json, JSON_HEADERS, concurrency, args.seconds, True
            )
            results.append(
                Result(
                    name,
                    "rest",
                    concurrency,
                    r["rps"],
                    r["rps"] * values_per_request[name],
                    r["p50"],
                    r["p99"],
                    int(r["succeeded"]),
                    int(r["failed"]),
                )
            )
    for name, (n_keys, fields) in {"1x10": (1, 10), "100x10": (100, 10), "1x250": (1, 250)}.items():
        keys = [f"f:user:u{i}".encode() for i in range(n_keys)]
        group = GROUP_10 if fields == 10 else GROUP_250
        field_names = [f"{group}_f{i}#1".encode() for i in range(fields)]  # the stored fields: FLOAT is kind 1
        for concurrency in (1, 64):
            raw = asyncio.run(raw_redis(redis_url, keys, field_names, concurrency, min(args.seconds, 3)))
            results.append(
                Result(
                    name,
                    "raw-redis-python",
                    concurrency,
                    raw["rps"],
                    raw["rps"] * n_keys * fields,
                    raw["p50"],
                    raw["p99"],
                    0,
                    0,
                )
            )

    results += valkey_capacity(redis_url)
    results += real_clients(args, grpc_port, server_pid, shapes["1x10"])
    report(results, args.out)
    return 0


def valkey_capacity(url: str) -> list[Result]:
    """Valkey's own values/s for HMGET of 10 and of 250 fields per key (a C client, pipelined): one row per
    shape, 100x10 being 10-field HMGETs too. Keys of the stored values' sizes, filled first (and then deleted)."""
    import redis

    with redis.Redis.from_url(url) as r:
        proto, as_json = r.hmget("f:user:u1", f"{GROUP_10}_f0#1", f"{GROUP_10}_f0:j#1")
        assert proto is not None
        assert as_json is not None
        sizes = (len(proto), len(as_json))
    out = []
    for shape, fields, keys in (("1x10", 10, 20_000), ("1x250", 250, 1_000)):
        names = [f"cbench{fields}_f{i}" for i in range(fields)]
        hset_capacity(url, names, sizes, keys, requests=5 * keys)  # fills ~99% of the keys
        per_s = hmget_capacity(url, names, keys, requests=max(20_000, 4_000_000 // fields))
        out.append(Result(shape, "valkey-c", 50, per_s / fields, per_s, float("nan"), float("nan"), 0, 0))
        if shape == "1x10":
            out.append(Result("100x10", "valkey-c", 50, per_s / 1000, per_s, float("nan"), float("nan"), 0, 0))
        _delete_capacity_keys(url)
    return out


def _delete_capacity_keys(url: str) -> None:
    import redis

    with redis.Redis.from_url(url) as r:
        keys = list(r.scan_iter(match="f:cbench:*", count=10_000))
        for i in range(0, len(keys), 10_000):
            r.delete(*keys[i : i + 10_000])


def _measured(
    name: str, transport: str, concurrency: int, pid: int, run: Callable[[], dict[str, float]], seconds: float
) -> Result:
    """A run of one driver, with the server's CPU time per request over it (warm-up included): per
    call the driver counted (`calls`, grpcio), or at the measured rate over the warm-up too (h2load)."""
    before = cpu_seconds(pid)
    m = run()
    calls = m.get("calls") or m["rps"] * (seconds + 1)
    per_request = (cpu_seconds(pid) - before) / max(1.0, calls) * 1e6
    values = m["rps"] * (10 if name == "1x10" else 0)
    counts = int(m["succeeded"]), int(m["failed"])
    return Result(name, transport, concurrency, m["rps"], values, m["p50"], m["p99"], *counts, per_request)


def real_clients(args: argparse.Namespace, port: int, pid: int, one: Message) -> list[Result]:
    """The no-op RPC and 1x10 under grpcio clients and again under h2load, with the server's CPU per request."""
    target, base, out = f"127.0.0.1:{port}", f"http://127.0.0.1:{port}", []
    calls = {
        "no-op RPC": ("/grpc.health.v1.Health/Check", b""),
        "1x10": (f"{STORE}/GetFeatures", one.SerializeToString()),
    }
    for name, (method, body) in calls.items():
        for c in (1, 64):
            lean = functools.partial(h2load, base + method, grpc_frame(body), GRPC_HEADERS, c, args.seconds, False)
            out.append(_measured(name, "grpc-h2load", c, pid, lean, args.seconds))
            real = functools.partial(drive, target, method, body, c, args.seconds)
            out.append(_measured(name, "grpcio", c, pid, real, args.seconds))
    return out


def _json_of(request: fs.GetFeaturesRequest | fs.BatchGetFeaturesRequest) -> dict[str, object]:
    from google.protobuf import json_format

    return json_format.MessageToDict(request, preserving_proto_field_name=True)


def _find(results: list[Result], name: str, transport: str, concurrency: int) -> Result:
    return next(r for r in results if (r.name, r.transport, r.concurrency) == (name, transport, concurrency))


def report(results: list[Result], out: Path) -> None:
    header = ("shape", "transport", "conc", "req/s", "values/s", "p50 ms", "p99 ms", "failed", "cpu µs")
    print("\n{:10} {:17} {:>4} {:>9} {:>11} {:>7} {:>7} {:>6} {:>7}".format(*header))
    for r in results:
        cells = (r.name, r.transport, r.concurrency, r.requests_per_s, r.values_per_s, r.p50_ms, r.p99_ms, r.failed)
        print("{:10} {:17} {:>4} {:>9,.0f} {:>11,.0f} {:>7.3f} {:>7.3f} {:>6} {:>7.0f}".format(*cells, r.server_cpu_us))
    checks = []
    for c in (1, 64):
        noop = _find(results, "no-op RPC", "grpc", c)
        one = _find(results, "1x10", "grpc", c)
        checks.append((f"1x10 gRPC vs no-op RPC, c={c}", one.requests_per_s / noop.requests_per_s, ">= 0.80"))
    checks.append(("1x10 gRPC p99 ms, c=1", _find(results, "1x10", "grpc", 1).p99_ms, "< 1.0"))
    best_batch = max(_find(results, "100x10", "grpc", c).values_per_s for c in (1, 64))
    raw_batch = max(_find(results, "100x10", "raw-redis-python", c).values_per_s for c in (1, 64))
    checks.append(("100x10 gRPC values/s (best)", best_batch, ">= 1,000,000"))
    checks.append(("100x10 gRPC vs raw Redis from Python, values/s", best_batch / raw_batch, "(ratio)"))
    checks.append(("100x10 gRPC p99 ms, c=1", _find(results, "100x10", "grpc", 1).p99_ms, "< 3.0"))
    for shape in ("1x10", "100x10", "1x250"):
        best = max(_find(results, shape, "grpc", c).values_per_s for c in (1, 64))
        capacity = _find(results, shape, "valkey-c", 50).values_per_s
        checks.append((f"{shape} gRPC values/s / Valkey's HMGET capacity (C client)", best / capacity, "(ratio)"))
    checks.append(("1x250 gRPC p99 ms, c=1", _find(results, "1x250", "grpc", 1).p99_ms, "< 1.5"))
    for shape in ("1x10", "100x10", "1x250"):
        for c in (1, 64):
            ratio = _find(results, shape, "rest", c).requests_per_s / _find(results, shape, "grpc", c).requests_per_s
            checks.append((f"{shape} REST/gRPC throughput, c={c}", ratio, ">= 0.60"))
    for c in (1, 64):
        noop, one = _find(results, "no-op RPC", "grpcio", c), _find(results, "1x10", "grpcio", c)
        checks.append(
            (f"grpcio clients: 1x10 vs no-op RPC, c={c}", one.requests_per_s / noop.requests_per_s, ">= 0.80")
        )
        h2 = _find(results, "1x10", "grpc-h2load", c)
        ratio = one.server_cpu_us / h2.server_cpu_us
        checks.append((f"server CPU per 1x10 call, grpcio / h2load, c={c}", ratio, "<= 1.20"))
    print()
    print_checks(checks)
    machine = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "when": datetime.now(UTC).isoformat()}
    write_json(out, {"machine": machine, "results": [asdict(r) for r in results], "checks": checks})
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    raise SystemExit(main())

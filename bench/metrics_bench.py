"""What instrumentation costs: the online benchmark's 1x10 read with metrics on and off, in one run.

    .venv/bin/python bench/metrics_bench.py            # or: make bench-metrics

Starts PostgreSQL, Valkey and two servers on the same stores, one with metrics on (the
default) and one with `--metrics false`, loads the 10-feature group, then drives each with
h2load (gRPC, 1 entity x 10 features, concurrency 1 and 64), alternating servers over several
rounds so that machine noise falls on both alike. Prints each round, the median
throughput and server-CPU-per-call ratios on/off per concurrency (target >= 0.95), and the
instrumentation's own CPU per call timed in-process as a share of the server's CPU per
call (a figure machine load cannot swing as much; target <= 5%). Writes JSON.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _report import print_checks, write_json  # noqa: E402
from _serving import cpu_seconds, wait_servable  # noqa: E402
from online_bench import GROUP_10, GRPC_HEADERS, STORE, grpc_frame, h2load, load, register  # noqa: E402

from devstack import free_port, start_postgres, start_server, start_valkey  # noqa: E402
from featurestore import FeatureStoreClient  # noqa: E402
from featurestore.serving.v1 import feature_store_service_pb2 as fs  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each h2load run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "metrics.json")
    args = parser.parse_args()
    if not shutil.which("h2load"):
        sys.exit("h2load is missing: apt-get install nghttp2-client")
    state = Path(tempfile.mkdtemp(prefix="fs-metrics-bench-"))
    pg = start_postgres(state / "postgres", free_port(), durable=False)
    valkey = start_valkey(state / "valkey", free_port(), durable=False)
    dsn, url = str(pg.extra["dsn"]), str(valkey.extra["url"])
    quiet = ["--log-level", "WARNING"]
    on = start_server(state, free_port(), dsn, url, quiet)
    off = start_server(state, free_port(), dsn, url, [*quiet, "--metrics", "false"])
    try:
        return run(args, {"on": on.port, "off": off.port}, {"on": on.popen.pid, "off": off.popen.pid})
    finally:
        for proc in (off, on, valkey, pg):
            proc.stop()
        shutil.rmtree(state, ignore_errors=True)


def instrumentation_us(rounds: int = 200_000) -> float:
    """Microseconds of CPU the metrics add to one 1x10 GetFeatures, timed in this process.

    The same calls the hot path makes with metrics on: the RPC's duration, the values' status
    counts and request size, the Redis read's duration (and the clock reads around them).
    """
    from server import _metrics
    from server.online import Catalog, _servicer
    from server.registry import Feature, FeatureGroup

    catalog = Catalog()
    features = [Feature(name=f"f{i}", entity_type="user", value_type="FLOAT") for i in range(10)]
    group = FeatureGroup(name="g", entity_type="user", feature_names=tuple(f.name for f in features))
    catalog.replace(1, features, [group])
    plan = catalog.plan("user", (), ("g",), 1000)
    stored: list[bytes | None] = [b"x" * 40] * 9 + [None]
    rpc = _metrics.RPC_SECONDS.labels("GetFeatures").observe
    redis, _ = _metrics.store_timer("redis", "read")

    def one_call() -> None:
        started = time.perf_counter()
        redis(time.perf_counter() - started)
        expired = [0]
        if _metrics.enabled:
            _servicer._tally("GetFeatures", plan, len(stored), stored.count(None), expired[0])
        rpc(time.perf_counter() - started)

    return timeit.timeit(one_call, number=rounds) / rounds * 1e6


def run(args: argparse.Namespace, ports: dict[str, int], pids: dict[str, int]) -> int:
    request = fs.GetFeaturesRequest(entity_type="user", entity_id="u123", feature_groups=[GROUP_10])
    with FeatureStoreClient(f"127.0.0.1:{ports['on']}") as client:
        names = register(client, GROUP_10, 10)
        wait_servable(client, GROUP_10)
        load(client, names, args.entities, 1000)
    for port in ports.values():
        with FeatureStoreClient(f"127.0.0.1:{port}") as client:
            wait_servable(client, GROUP_10)
            assert len(client.store.GetFeatures(request).features) == 10
    body = grpc_frame(request.SerializeToString())
    rates: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    print(f"{'round':>5} {'conc':>4} {'metrics':>7} {'req/s':>9} {'p99 ms':>7} {'cpu µs':>7}")
    for n in range(args.rounds):
        for concurrency in (1, 64):
            order = ("on", "off") if n % 2 == 0 else ("off", "on")
            for mode in order:
                url = f"http://127.0.0.1:{ports[mode]}{STORE}/GetFeatures"
                before = cpu_seconds(pids[mode])
                m = h2load(url, body, GRPC_HEADERS, concurrency, args.seconds, False)
                per_call = (cpu_seconds(pids[mode]) - before) / max(1.0, m["rps"] * (args.seconds + 1)) * 1e6
                assert m["failed"] == 0, m
                rates.setdefault((mode, concurrency), []).append(m["rps"])
                cpu.setdefault((mode, concurrency), []).append(per_call)
                line = f"{n:>5} {concurrency:>4} {mode:>7} {m['rps']:>9,.0f} {m['p99']:>7.3f} {per_call:>7.0f}"
                print(line, flush=True)
    checks = []
    for concurrency in (1, 64):
        on, off = (statistics.median(rates[(mode, concurrency)]) for mode in ("on", "off"))
        checks.append((f"1x10 gRPC req/s, metrics on / off, c={concurrency} (median)", on / off, ">= 0.95"))
        on_cpu, off_cpu = (statistics.median(cpu[(mode, concurrency)]) for mode in ("on", "off"))
        checks.append((f"1x10 server CPU per call, off / on, c={concurrency} (median)", off_cpu / on_cpu, ">= 0.95"))
    added = statistics.median(instrumentation_us() for _ in range(5))
    off_cpu = statistics.median(cpu[("off", 64)])
    checks.append(("metrics' CPU per 1x10 call, in-process (µs)", added, "(measured)"))
    checks.append(("  ... as a share of the server's CPU per call, c=64", added / off_cpu, "<= 0.05"))
    print()
    print_checks(checks)
    results = {f"{mode}_c{c}": {"req_per_s": r, "cpu_us": cpu[(mode, c)]} for (mode, c), r in rates.items()}
    write_json(args.out, {"runs": results, "checks": checks})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

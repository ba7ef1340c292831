"""`python -m devstack up`: the whole system on loopback, until Ctrl-C.

PostgreSQL, Valkey, the feature store server and Envoy run as child
processes; their data and logs live in the state folder (default `.state/`)
and survive restarts. The demo definitions are loaded on every start
(existing ones are left alone). The batch pipeline computes the demo
features from generated source tables (`.state/warehouse`) at start, then
keeps running: hourly, and within seconds of a batch feature being created or
changed. The streaming pipeline computes the STREAMING demo features from the
Valkey stream `purchases`, which a demo producer feeds (--events-per-second).
Prometheus (with the rules of monitoring/prometheus) scrapes the server,
Envoy and the pipeline; a Pushgateway takes the metrics of `make pipeline` runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

# Before gRPC initializes (the demo loader's channels), as it starts the pipeline's JVM: see jobs/__init__.py.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from devstack import _demo
from devstack._auth import DevAuth, dev_auth
from devstack._monitoring import Targets, start_prometheus, start_pushgateway
from devstack._procs import (
    ROOT,
    Proc,
    can_listen,
    ensure_demo_tables,
    start_envoy,
    start_event_producer,
    start_pipeline,
    start_postgres,
    start_server,
    start_streaming_pipeline,
    start_valkey,
    wait_streaming,
)
from server import LOCAL_ENV_FILE
from server.tracing import TracingSettings


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--state-dir", type=Path, default=Path(os.environ.get("STATE_DIR", ROOT / ".state")))
    parser.add_argument("--http-port", type=int, default=_env_int("HTTP_PORT", 8080))
    parser.add_argument("--grpc-port", type=int, default=_env_int("GRPC_PORT", 50051))
    parser.add_argument("--postgres-port", type=int, default=_env_int("POSTGRES_PORT", 15432))
    parser.add_argument("--redis-port", type=int, default=_env_int("REDIS_PORT", 16379))
    parser.add_argument("--metrics-port", type=int, default=_env_int("METRICS_PORT", 9464))
    parser.add_argument("--prometheus-port", type=int, default=_env_int("PROMETHEUS_PORT", 9090))
    parser.add_argument("--pushgateway-port", type=int, default=_env_int("PUSHGATEWAY_PORT", 9091))
    parser.add_argument("--pipeline-metrics-port", type=int, default=_env_int("PIPELINE_METRICS_PORT", 9465))
    parser.add_argument("--streaming-metrics-port", type=int, default=_env_int("STREAMING_METRICS_PORT", 9466))
    parser.add_argument(
        "--events-per-second",
        type=float,
        default=float(os.environ.get("DEMO_EVENTS_RATE", "5")),
        help="rate of the demo purchase events the streaming pipeline reads (0: no producer)",
    )
    parser.add_argument(
        "--auth",
        choices=["off", "on"],
        default=os.environ.get("AUTH", "off") or "off",
        help="on: tokens required, from a local identity provider whose reader and admin tokens are printed",
    )
    return parser.parse_args(argv)


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _start_all(args: argparse.Namespace, procs: list[Proc]) -> None:
    state: Path = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    postgres = start_postgres(state / "postgres", args.postgres_port)
    procs.append(postgres)
    print(f"  PostgreSQL  127.0.0.1:{postgres.port}")
    valkey = start_valkey(state / "valkey", args.redis_port)
    procs.append(valkey)
    print(f"  Valkey      127.0.0.1:{valkey.port}")
    auth = dev_auth(state / "auth") if args.auth == "on" else None
    write_metrics = args.metrics_port + 10
    server = start_server(
        state,
        args.grpc_port,
        str(postgres.extra["dsn"]),
        str(valkey.extra["url"]),
        # writes in a process of their own (docs/operations.md), its metrics on metrics port + 10
        [*(auth.server_args() if auth else []), "--write-workers", "1", "--write-metrics-port", str(write_metrics)],
        metrics_port=args.metrics_port,
    )
    procs.append(server)
    print(f"  gRPC        127.0.0.1:{server.port}")
    also = (80,) if args.http_port != 80 and can_listen(80) else ()
    otel = TracingSettings.from_environ(os.environ)  # OTEL_TRACES_EXPORTER=otlp: Envoy's spans go there too
    envoy = start_envoy(
        state, args.http_port, server.port, also, tracing=otel.endpoint if otel.exporter == "otlp" else ""
    )
    procs.append(envoy)
    print(f"  REST+gRPC   http://localhost:{args.http_port}  (Envoy)")
    if also:
        print("              and http://localhost (port 80), as the seed's examples call it")
    elif args.http_port != 80:
        print("              port 80 is taken or not allowed here: use :8080 in the seed's http://localhost/ examples")
    print(f"  metrics     http://localhost:{args.metrics_port}/metrics (the write worker's: port {write_metrics})")
    token = auth.admin_token if auth else ""
    created = _demo.load(f"127.0.0.1:{server.port}", token)
    print(f"  demo data   {', '.join(created) if created else 'already loaded'}")
    streaming_created = _demo.load_streaming(f"127.0.0.1:{server.port}", token)
    print(f"  streaming   {', '.join(streaming_created) if streaming_created else 'demo features already loaded'}")
    _demo.load_history(f"127.0.0.1:{server.port}", token=token)
    if args.events_per_second > 0:
        procs.append(start_event_producer(state, str(valkey.extra["url"]), args.events_per_second))
        print(f"  events      {args.events_per_second:g} demo purchases/s into the Valkey stream `purchases`")
    streaming = start_streaming_pipeline(
        state,
        f"127.0.0.1:{server.port}",
        str(postgres.extra["dsn"]),
        str(valkey.extra["url"]),
        registry_token=auth.reader_token if auth else "",
        metrics_port=args.streaming_metrics_port,
    )
    procs.append(streaming)
    ensure_demo_tables(state / "warehouse", state / "pipeline.log")
    gateway = start_pushgateway(state, args.pushgateway_port)
    procs.append(gateway)
    pipeline = start_pipeline(
        state,
        f"127.0.0.1:{server.port}",
        str(postgres.extra["dsn"]),
        str(valkey.extra["url"]),
        "customer,product",
        metrics_port=args.pipeline_metrics_port,
        registry_token=auth.reader_token if auth else "",
    )
    procs.append(pipeline)
    print(f"  pipeline    {pipeline.extra['summary']}")
    print("              (recomputes hourly, and new or changed batch features within seconds)")
    print(f"  streaming   {wait_streaming(streaming)[:110]}")
    print(
        '              append an event: .venv/bin/python -m jobs.demo_events --event \'{"customer_id": "customer123"}\''
    )
    targets = Targets(
        servers=[f"127.0.0.1:{args.metrics_port}", f"127.0.0.1:{args.metrics_port + 10}"],  # + the write worker
        envoy_admin=f"127.0.0.1:{envoy.extra['admin_port']}",
        pushgateway=f"127.0.0.1:{gateway.port}",
        pipelines=[f"127.0.0.1:{args.pipeline_metrics_port}", f"127.0.0.1:{args.streaming_metrics_port}"],
    )
    procs.append(start_prometheus(state, args.prometheus_port, targets))
    print(f"  Prometheus  http://localhost:{args.prometheus_port}  (scrapes the server, Envoy, the pipeline;")
    print(f"              rules from monitoring/prometheus; Pushgateway on :{gateway.port} for `make pipeline` runs)")
    local = {
        "FEATURESTORE_REGISTRY": f"127.0.0.1:{server.port}",
        "FEATURESTORE_POSTGRES_DSN": str(postgres.extra["dsn"]),
        "FEATURESTORE_REDIS_URL": str(valkey.extra["url"]),
        "FEATURESTORE_WAREHOUSE": str(state / "warehouse"),
        "FEATURESTORE_METRICS_PUSH_URL": f"127.0.0.1:{gateway.port}",
    } | ({"FEATURESTORE_REGISTRY_TOKEN": auth.reader_token} if auth else {})
    LOCAL_ENV_FILE.parent.mkdir(parents=True, exist_ok=True)
    LOCAL_ENV_FILE.write_text(
        "# Written by `make up` for the tools' defaults; removed when it stops.\n"
        + "".join(f"{k}={v}\n" for k, v in local.items())
    )
    print(f"  settings    {LOCAL_ENV_FILE} (the pipeline, reconcile and server default to this stack)")
    print(f"  logs        {state}/*.log")
    _print_auth(auth, args.http_port)


def _print_auth(auth: DevAuth | None, http_port: int) -> None:
    if auth is None:
        print("  auth        off: no token needed on loopback (the seed's curls work as written);")
        print("              `make up AUTH=on` requires tokens and prints a reader's and an admin's")
        return
    print(f"  auth        required: tokens of a local identity provider, valid {auth.hours} h")
    print(f"              (also in {auth.folder}/reader.token and admin.token; docs/security.md)")
    print(f"  reader      {auth.reader_token}")
    print(f"  admin       {auth.admin_token}")
    print(f'              curl -H "Authorization: Bearer $(cat {auth.folder}/reader.token)" \\')
    print(f"                   http://localhost:{http_port}/api/feature-registry/features")


def _watch(procs: list[Proc]) -> None:
    while True:
        for proc in procs:
            if not proc.running():
                print(f"{proc.name} exited with {proc.popen.returncode}; last log lines:\n{proc.log_tail()}")
                return
        time.sleep(0.5)


def main(argv: list[str]) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    procs: list[Proc] = []
    print("starting the feature store stack:")
    try:
        _start_all(args, procs)
        print("ready; press Ctrl-C to stop")
        _watch(procs)
        return 1
    except _Stop:
        return 0
    finally:
        print("stopping...")
        LOCAL_ENV_FILE.unlink(missing_ok=True)
        for proc in reversed(procs):
            proc.stop()
        print("stopped")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

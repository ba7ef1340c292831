"""Write workers (--write-workers): writes run in processes of their own, passed there by the serving process."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack import Proc, dev_auth, free_port
from featurestore import FeatureStoreClient
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from tests._helpers import FAST_SERVER_ARGS, Processes, eventually
from tests._online import ago, f64, get, i64, register, row, wait_servable, write

WORKERS = [*FAST_SERVER_ARGS, "--write-workers", "1", "--write-nice", "5"]


def _writable(client: FeatureStoreClient, *names: str, **values: Any) -> None:
    """Until the write worker knows the INT64 features `names` and the features of `values` (a Value each)
    too: it learns registry changes by notification, as other processes do (the serving process that made
    the change knows it at once)."""

    def known() -> bool:
        try:
            write(client, [row("probe", ago(days=300), **{n: i64(0) for n in names}, **values)])
            return True
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            return False

    eventually(known, timeout=30)


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _calls(metrics_port: int, method: str) -> float:
    """How many calls of `method` the process serving /metrics on `metrics_port` handled."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    key = f'featurestore_rpc_duration_seconds_count{{method="{method}"}} '
    return sum(float(line[len(key) :]) for line in text.splitlines() if line.startswith(key))


def _violations(err: grpc.RpcError) -> list[str]:
    trailing: Any = err.trailing_metadata()
    status = next(status_pb2.Status.FromString(v) for k, v in trailing if k == "grpc-status-details-bin")
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return fields


@pytest.fixture
def workers(processes: Processes, postgres_dsn: str, redis_url: str) -> Proc:
    return processes.server(postgres_dsn, redis_url, WORKERS)


def test_writes_run_in_the_write_worker_and_read_back_from_the_serving_one(workers: Proc) -> None:
    eventually(lambda: len(_children(workers.popen.pid)) == 2)
    niceness = {pid: os.getpriority(os.PRIO_PROCESS, pid) for pid in _children(workers.popen.pid)}
    assert sorted(niceness.values()) == [0, 5], niceness  # the write worker runs at a lower priority
    metrics = int(str(workers.extra["metrics_port"]))  # the serving worker's; the write worker's is the next one
    with FeatureStoreClient(f"127.0.0.1:{workers.port}") as client:
        register(client, "ww_x", pb.INT64)
        register(client, "ww_y", pb.FLOAT)
        wait_servable(client, "customer", "ww_x", "ww_y")
        _writable(client, "ww_x", ww_y=f64(0.0))  # both: the write below names both
        response = write(client, [row("c1", ago(minutes=1), ww_x=i64(7), ww_y=f64(0.5))])
        assert (response.written_values, response.skipped_values) == (2, 0)
        assert write(client, [row("c1", ago(minutes=2), ww_x=i64(1))]).skipped_values == 1  # only newer
        pushed = client.store.PushFeatures(
            iter(
                fs.PushFeaturesRequest(entity_type="customer", rows=[row(f"p{i}", ago(minutes=1), ww_x=i64(i))])
                for i in range(3)
            )
        )
        assert (pushed.written_values, pushed.batches) == (3, 3)
        assert get(client, "c1", "ww_x", "ww_y")["ww_x"].value.int64_value == 7
        assert get(client, "p2", "ww_x")["ww_x"].value.int64_value == 2
        # the caller's validation error comes back whole: code, message and the field it names
        with pytest.raises(grpc.RpcError) as caught:
            write(client, [row("c2", ago(minutes=1), ww_x=f64(1.5))])
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert any("ww_x" in field for field in _violations(caught.value)), _violations(caught.value)
        raw = client.channel.unary_unary("/featurestore.serving.v1.FeatureStoreService/WriteFeatures", None, None)
        with pytest.raises(grpc.RpcError) as caught:
            raw(b"\xff\xff", timeout=10)  # not a message: the worker's parser says so
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _violations(caught.value) == ["request"]
    calls = {(port, m): _calls(port, m) for port in (metrics, metrics + 1) for m in ("WriteFeatures", "PushFeatures")}
    assert calls[metrics, "WriteFeatures"] == calls[metrics, "PushFeatures"] == 0, calls
    assert calls[metrics + 1, "WriteFeatures"] >= 5, calls  # the probe, 2 written, 2 refused
    assert calls[metrics + 1, "PushFeatures"] == 1, calls
    assert _calls(metrics, "GetFeatures") > 0
    assert _calls(metrics + 1, "GetFeatures") == 0


def test_a_write_worker_that_died_is_unavailable_then_restarted(workers: Proc) -> None:
    eventually(lambda: len(_children(workers.popen.pid)) == 2)
    writer = max(_children(workers.popen.pid), key=lambda pid: os.getpriority(os.PRIO_PROCESS, pid))
    with FeatureStoreClient(f"127.0.0.1:{workers.port}") as client:
        register(client, "ww_z", pb.INT64)
        wait_servable(client, "customer", "ww_z")
        _writable(client, "ww_z")
        os.kill(writer, 9)
        eventually(lambda: writer not in _children(workers.popen.pid))
        errors: list[tuple[grpc.StatusCode, str]] = []

        def written() -> bool:
            try:
                return write(client, [row("c3", ago(minutes=1), ww_z=i64(3))]).written_values == 1
            except grpc.RpcError as err:  # until it is back
                errors.append((err.code(), err.details() or ""))
                return False

        eventually(written, timeout=60)
        assert errors, "the first write after the kill must fail: the worker cannot be back yet"
        assert {code for code, _ in errors} == {grpc.StatusCode.UNAVAILABLE}, errors
        assert not [details for _, details in errors if "sock" in details or "unix" in details], errors  # no internals
        assert get(client, "c3", "ww_z")["ww_z"].value.int64_value == 3
    workers.stop()
    assert workers.popen.returncode == 0


def test_the_serving_process_checks_the_caller_before_passing_a_write(
    processes: Processes, tmp_path: Path, postgres_dsn: str, redis_url: str
) -> None:
    auth = dev_auth(tmp_path / "auth")
    server = processes.server(postgres_dsn, redis_url, [*WORKERS, *auth.server_args()])
    target = f"127.0.0.1:{server.port}"

    def client(token: str) -> FeatureStoreClient:
        call = grpc.access_token_call_credentials(token)
        creds = grpc.composite_channel_credentials(grpc.local_channel_credentials(), call)
        return FeatureStoreClient(target, channel=grpc.secure_channel(target, creds))

    with client(auth.admin_token) as admin, client(auth.reader_token) as reader:
        register(admin, "ww_auth", pb.INT64)
        wait_servable(admin, "customer", "ww_auth")
        _writable(admin, "ww_auth")
        assert write(admin, [row("c4", ago(minutes=1), ww_auth=i64(4))]).written_values == 1
        with pytest.raises(grpc.RpcError) as caught:
            write(reader, [row("c4", ago(minutes=1), ww_auth=i64(5))])
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert get(reader, "c4", "ww_auth")["ww_auth"].value.int64_value == 4
    with FeatureStoreClient(target) as anonymous, pytest.raises(grpc.RpcError) as caught:
        write(anonymous, [row("c4", ago(minutes=1), ww_auth=i64(6))])
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_write_worker_serves_the_writes_alone_on_its_private_socket(workers: Proc) -> None:
    eventually(lambda: len(_children(workers.popen.pid)) == 2)
    writer = max(_children(workers.popen.pid), key=lambda pid: os.getpriority(os.PRIO_PROCESS, pid))
    argv = Path(f"/proc/{writer}/cmdline").read_bytes().decode().split("\0")
    socket = argv[argv.index("--write-worker-socket") + 1]
    assert os.stat(Path(socket).parent).st_mode & 0o777 == 0o700
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        list_features = channel.unary_unary("/featurestore.registry.v1.RegistryService/ListFeatures", None, None)
        get_features = channel.unary_unary("/featurestore.serving.v1.FeatureStoreService/GetFeatures", None, None)
        for call in (list_features, get_features):
            with pytest.raises(grpc.RpcError) as refused:
                call(b"", timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_write_worker_refuses_a_socket_folder_others_may_enter(tmp_path: Path) -> None:
    folder = tmp_path / "open"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    done = _server_start(f"--write-worker-socket={folder / 'w.sock'}", "--metrics", "false")
    assert done.returncode != 0
    assert b"must be this user's, mode 0700" in done.stderr


def test_a_hung_write_worker_is_watched_but_reads_stay_ready(workers: Proc) -> None:
    eventually(lambda: len(_children(workers.popen.pid)) == 2)
    writer = max(_children(workers.popen.pid), key=lambda pid: os.getpriority(os.PRIO_PROCESS, pid))
    serving = health_pb2.HealthCheckResponse.SERVING
    metrics = f"http://127.0.0.1:{workers.extra['metrics_port']}/metrics"

    def up() -> bytes:
        text: bytes = urllib.request.urlopen(metrics, timeout=5).read()
        return next(
            line for line in text.splitlines() if line.startswith(b'featurestore_store_up{store="write_workers"}')
        )

    with grpc.insecure_channel(f"127.0.0.1:{workers.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def status(service: str = "") -> int:
            return int(health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status)

        eventually(lambda: up().endswith(b" 1.0"), timeout=30)
        os.kill(writer, signal.SIGSTOP)  # alive but not answering: not restarted, writes would hang
        try:
            eventually(lambda: up().endswith(b" 0.0"), timeout=30)
            assert status() == serving  # reads do not need the write workers
            assert status("featurestore.serving.v1.FeatureStoreService") == serving
        finally:
            os.kill(writer, signal.SIGCONT)
        eventually(lambda: up().endswith(b" 1.0"), timeout=30)


def test_a_stop_signal_during_start_up_leaves_no_process_or_socket_behind(
    tmp_path: Path, postgres_dsn: str, redis_url: str
) -> None:
    port = free_port()
    command = [sys.executable, "-m", "server", "--port", str(port), "--host", "127.0.0.1", "--metrics", "false"]
    command += ["--postgres-dsn", postgres_dsn, "--redis-url", redis_url, *WORKERS]
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    supervisor = subprocess.Popen(command, cwd=Path(__file__).resolve().parent.parent, env=env)
    try:
        deadline = time.monotonic() + 60
        while not _children(supervisor.pid) and time.monotonic() < deadline:
            time.sleep(0.005)
        started = _children(supervisor.pid)
        assert started, "the supervisor started no write worker"
        supervisor.send_signal(signal.SIGTERM)  # while the write worker starts: no serving worker yet
        supervisor.wait(timeout=60)
    finally:
        supervisor.kill()
    for pid in started:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert not list(tmp_path.glob("featurestore-writes-*")), "the sockets' folder is left behind"


def _policies(pid: int) -> set[int]:
    """The scheduling policy of every thread of `pid`."""
    return {os.sched_getscheduler(int(tid.name)) for tid in Path(f"/proc/{pid}/task").iterdir()}


def test_write_sched_idle_puts_every_thread_of_the_write_worker_and_none_other_on_sched_idle(
    processes: Processes, postgres_dsn: str, redis_url: str
) -> None:
    server = processes.server(postgres_dsn, redis_url, [*WORKERS, "--write-sched", "idle"])
    eventually(lambda: len(_children(server.popen.pid)) == 2)
    roles = {
        pid: b"--write-worker-socket" in Path(f"/proc/{pid}/cmdline").read_bytes()
        for pid in _children(server.popen.pid)
    }
    with FeatureStoreClient(f"127.0.0.1:{server.port}") as client:
        register(client, "ww_idle", pb.INT64)
        wait_servable(client, "customer", "ww_idle")
        _writable(client, "ww_idle")  # the write worker writes under its policy
        assert write(client, [row("i1", ago(minutes=1), ww_idle=i64(3))]).written_values == 1
        assert get(client, "i1", "ww_idle")["ww_idle"].value.int64_value == 3
    for pid, writes in roles.items():  # after serving calls: gRPC's and asyncio's threads exist by now
        assert _policies(pid) == ({os.SCHED_IDLE} if writes else {os.SCHED_OTHER}), (pid, writes)
    assert _policies(server.popen.pid) == {os.SCHED_OTHER}  # the supervisor keeps its own


def test_a_write_worker_has_a_session_of_its_own_and_stops_when_its_supervisor_is_killed(workers: Proc) -> None:
    eventually(lambda: len(_children(workers.popen.pid)) == 2)
    children = _children(workers.popen.pid)
    writer = next(pid for pid in children if b"--write-worker-socket" in Path(f"/proc/{pid}/cmdline").read_bytes())
    serving = next(pid for pid in children if pid != writer)
    assert os.getsid(writer) == writer  # its own session, so its own autogroup where the kernel has them
    assert os.getsid(serving) == os.getsid(workers.popen.pid)
    if Path(f"/proc/{writer}/autogroup").exists():  # the group weighs what the worker's niceness says
        eventually(lambda: Path(f"/proc/{writer}/autogroup").read_text().split()[-1] == "5")
        assert Path(f"/proc/{serving}/autogroup").read_text().split()[-1] == "0"
    try:
        os.kill(workers.popen.pid, signal.SIGKILL)  # the supervisor alone, not its process group
        status = Path(f"/proc/{writer}/status")
        eventually(lambda: not status.exists() or "zombie" in status.read_text())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(serving, signal.SIGKILL)  # orphaned: no one else would stop it
        with contextlib.suppress(ProcessLookupError):
            os.kill(writer, signal.SIGKILL)


def _server_start(*args: str) -> subprocess.CompletedProcess[bytes]:
    """`python -m server` with `args`, run to its end (a start meant to be refused)."""
    root = Path(__file__).resolve().parent.parent
    return subprocess.run(
        [sys.executable, "-m", "server", *args], cwd=root, capture_output=True, timeout=60, check=False
    )


_BACK_TO_BACK = """
import os, sys
from server.__main__ import _set_autogroup_nice
children = []
for _ in range(3):  # three write workers' first steps, started back to back, each in a session of its own
    pid = os.fork()
    if pid == 0:
        os.setsid()
        _set_autogroup_nice(5)
        os._exit(0 if open("/proc/self/autogroup").read().split()[-1] == "5" else 1)
    children.append(pid)
sys.exit(sum(os.waitpid(pid, 0)[1] != 0 for pid in children))
"""


@pytest.mark.skipif(
    not shutil.which("setpriv") or not Path("/proc/self/autogroup").exists(), reason="needs setpriv and autogroups"
)
def test_write_workers_started_back_to_back_each_get_their_group_niceness_without_privileges() -> None:
    # Without CAP_SYS_ADMIN the kernel takes one autogroup niceness change per 100 ms on the host (EAGAIN).
    unprivileged = ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin"]
    done = subprocess.run(
        [*unprivileged, sys.executable, "-c", _BACK_TO_BACK],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()


def test_an_unknown_write_sched_stops_the_start() -> None:
    done = _server_start("--write-workers", "1", "--write-sched", "fast", "--metrics", "false")
    assert done.returncode != 0
    assert b"write_sched 'fast' is not one of other, batch, idle" in done.stderr

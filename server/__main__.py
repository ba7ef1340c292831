"""`python -m server`: run the feature store gRPC server until SIGTERM/SIGINT.

With `--workers N` (N > 1) or `--write-workers M` (M > 0) this process supervises
N worker processes that share the port through SO_REUSEPORT, and M write workers
that run the writes the serving workers pass them (see _Supervisor); it forwards
SIGTERM/SIGINT to them and restarts a worker that dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from server._app import migrate_only, start
from server._settings import Settings, local_environment
from server._tracing import JsonFormatter, TracingSettings
from server.auth import audit_to_stderr

_log = logging.getLogger("server")


async def _run(settings: Settings, tracing: TracingSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = await start(settings, tracing)
    _settle_garbage_collector()
    await stop.wait()
    _log.info("draining (grace %.1fs)", settings.shutdown_grace)
    await app.stop(settings.shutdown_grace)


def _settle_garbage_collector() -> None:
    """Keep start-up objects out of garbage collections, for shorter pauses in the latency tail.

    Everything alive after start-up (modules, stubs, the registry snapshot) is frozen, so a
    full collection walks only what requests allocate; gen-0 collections run 10x less often
    (requests allocate in bursts that die young).
    """
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0 * 10, gen1, gen2)


class _Supervisor:
    """Runs `settings.workers` copies of this server as child processes, and its write workers.

    Write workers (`write_workers`) start first, each serving on a Unix socket in a
    directory of its own (mode 0700: only this user can connect), in a session of its own, at a
    lower CPU priority (`write_nice` added to the supervisor's own niceness, for its scheduling
    group too: see _enter_write_group; `write_sched`: the scheduling policy each write worker sets
    for itself at start, see _enter_write_policy); the serving workers then start and pass writes to them
    (server/online/_forward.py). Worker i's metrics are on metrics_port + i, write worker
    j's on write_metrics_port + j (default: right after the serving workers').
    """

    def __init__(self, argv: list[str], settings: Settings) -> None:
        self._cmd = [sys.executable, "-m", "server", *argv, "--workers", "1", "--write-workers", "0"]
        self._metrics_port = settings.metrics_port
        self._write_metrics_port = settings.write_metrics_port or settings.metrics_port + settings.workers
        self._folder = Path(tempfile.mkdtemp(prefix="featurestore-writes-")) if settings.write_workers > 0 else None
        self._sockets = [str(self._folder / f"{i}.sock") for i in range(settings.write_workers)] if self._folder else []
        self._nice = max(0, min(19, settings.write_nice))
        self._serving = settings.workers
        self._stopping, self._signal = False, signal.SIGTERM
        self._startup_timeout, self._grace = settings.startup_timeout, settings.shutdown_grace
        self._workers: dict[int, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        """The write workers, then (once they listen) the serving workers; a stop signal halts it."""
        for i in range(self._serving, self._serving + len(self._sockets)):
            if not self._stopping:
                self._workers[i] = self._spawn(i)
        self._wait_for_sockets(self._startup_timeout)
        for i in range(self._serving):
            if not self._stopping:
                self._workers[i] = self._spawn(i)

    def _args(self, index: int) -> list[str]:
        port = self._metrics_port + index if self._metrics_port else 0
        if port and index >= self._serving:
            port = self._write_metrics_port + index - self._serving
        if index >= self._serving:
            role = ["--write-worker-socket", self._sockets[index - self._serving]]
        else:
            role = ["--write-forward-sockets", ",".join(self._sockets)] if self._sockets else []
        return [*self._cmd, *role, "--metrics-port", str(port)]

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        if index >= self._serving:  # a session of its own (see _enter_write_group); it stops when this process dies
            # preexec_fn: this process runs no threads (gRPC runs in the workers only)
            worker = subprocess.Popen(self._args(index), start_new_session=True, preexec_fn=_stop_with(os.getpid()))
        else:
            worker = subprocess.Popen(self._args(index))
        if index >= self._serving and self._nice:
            # Niceness added to this process's own: raising it is allowed to any user, lowering it is not.
            nice = min(19, os.getpriority(os.PRIO_PROCESS, 0) + self._nice)
            try:
                os.setpriority(os.PRIO_PROCESS, worker.pid, nice)
            except OSError as err:  # the worker runs anyway, at this process's priority
                _log.warning("write worker %d: niceness %d not set: %s", worker.pid, nice, err)
        return worker

    def _wait_for_sockets(self, timeout: float) -> None:
        """Until every write worker listens (or has exited: then its restart is the watch loop's job)."""
        deadline = time.monotonic() + timeout
        while not all(Path(s).exists() for s in self._sockets) and time.monotonic() < deadline and not self._stopping:
            if any(w.poll() is not None for w in self._workers.values()):
                return
            time.sleep(0.1)

    def stop(self, signum: int, _frame: object) -> None:
        self._stopping, self._signal = True, signal.Signals(signum)

    def run(self) -> int:
        """Restart workers that exit until stopped; then stop the serving workers (they finish their calls,
        forwarded writes too), then the write workers."""
        while not self._stopping:
            for i, worker in self._workers.items():
                if worker.poll() is not None and not self._stopping:
                    _log.error("worker %d exited with %s; restarting it", worker.pid, worker.returncode)
                    time.sleep(0.5)
                    self._workers[i] = self._spawn(i)
            time.sleep(0.2)
        return self.stop_all()

    def stop_all(self) -> int:
        """Stop the serving workers, then the write workers; remove the sockets' folder. The highest exit code."""
        codes = self._stop_all(range(self._serving))
        codes += self._stop_all(range(self._serving, self._serving + len(self._sockets)))
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
        return max(codes, default=0)

    def _stop_all(self, indexes: range) -> list[int]:
        workers = [self._workers[i] for i in indexes if i in self._workers]
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(self._signal)
        deadline = time.monotonic() + self._grace + 10  # a worker drains for `grace`, then exits
        return [self._reap(worker, deadline) for worker in workers]

    @staticmethod
    def _reap(worker: subprocess.Popen[bytes], deadline: float) -> int:
        """The worker's exit status; one still running at `deadline` (hung) is killed."""
        try:
            return worker.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _log.error("worker %d did not stop in time; killing it", worker.pid)
            worker.kill()
            return worker.wait()


_POLICIES = {"other": "SCHED_OTHER", "batch": "SCHED_BATCH", "idle": "SCHED_IDLE"}


def _write_policy(name: str) -> int | None:
    """The os.SCHED_* number of a write_sched value; None where the platform has no such policy (not Linux)."""
    if name not in _POLICIES:
        raise SystemExit(f"write_sched {name!r} is not one of {', '.join(_POLICIES)}")
    number: int | None = getattr(os, _POLICIES[name], None)
    return number if hasattr(os, "sched_setscheduler") else None


def _enter_write_policy(name: str) -> None:
    """A write worker's own CPU policy, set before it starts any thread (gRPC's, asyncio's): they inherit it.

    idle: the kernel runs this process only on CPU time no other runnable task of its group wants
    (weight 3 against a serving process's 1024), and a waking serving thread preempts it at once;
    batch: its wake-ups never preempt a running task. Neither needs privileges.
    """
    policy = _write_policy(name)
    if policy is None or name == "other":
        return
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError as err:  # the worker runs anyway, under the policy it was started with
        _log.warning("write worker: scheduling policy %s not set: %s", name, err)


_PR_SET_PDEATHSIG = 1


def _stop_with(parent: int) -> Callable[[], None]:
    """What a write worker runs between fork and exec: SIGTERM when `parent` dies (a write worker
    is out of the supervisor's process group, so a kill of that group misses it); if `parent` is
    gone already, exit. Linux only (elsewhere: nothing)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return lambda: None

    def stop_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)  # kept across exec
        if os.getppid() != parent:
            os._exit(1)

    return stop_with_parent


def _enter_write_group(settings: Settings) -> None:
    """A write worker's niceness, for its scheduling group too; it stops when its supervisor dies.

    The kernel shares the CPU between scheduling groups first, and niceness ranks a process only
    within its group. On a host with the kernel's autogroup on (a group per session, for
    processes outside a CPU cgroup), a write worker in the server's session would rank below
    the serving processes only, while the group, with the writes' CPU in it, competes with
    PostgreSQL, Valkey and everything else as one. So the supervisor starts each write worker
    in a session of its own (its own autogroup), and the worker gives that group its niceness
    (the supervisor's own + write_nice): against every other group, the writes then weigh
    what their niceness says. In a CPU cgroup (a container) the kernel ignores the autogroup,
    and the niceness ranks the worker within the container, as before. Out of the server's
    process group, the worker would outlive a supervisor killed outright: the supervisor
    starts it asking for SIGTERM when the supervisor dies (_stop_with).
    """
    if os.getsid(0) != os.getpid():  # not a session leader: its autogroup is the server's, leave it
        return
    nice = min(19, os.getpriority(os.PRIO_PROCESS, os.getppid()) + max(0, min(19, settings.write_nice)))
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
    _set_autogroup_nice(nice)


def _set_autogroup_nice(nice: int, attempts: int = 20) -> None:
    """Give this process's autogroup niceness `nice`. Without CAP_SYS_ADMIN the kernel takes one such
    change per 100 ms on the whole host (EAGAIN otherwise: write workers started back to back), so
    retry for about 2 s; no autogroup (not Linux, a kernel without it): nothing to do."""
    for _ in range(attempts):
        try:
            Path("/proc/self/autogroup").write_text(str(nice))
            return
        except FileNotFoundError:
            return
        except BlockingIOError:
            time.sleep(0.1 + random.random() * 0.05)
        except OSError as err:
            _log.warning("write worker: scheduling group niceness %d not set: %s", nice, err)
            return
    _log.warning("write worker: scheduling group niceness %d not set after %d attempts (EAGAIN)", nice, attempts)


def _configure_logging(settings: Settings) -> None:
    """JSON lines carrying the current trace id (log_format json), or plain text lines."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    elif settings.log_format == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    else:
        raise SystemExit(f"log_format {settings.log_format!r} is not json or text")
    logging.basicConfig(level=settings.log_level, handlers=[handler])


def main() -> None:
    settings = Settings.load(sys.argv[1:], local_environment(os.environ) | os.environ)
    tracing = TracingSettings.from_environ(os.environ)
    _configure_logging(settings)
    audit_to_stderr()
    if settings.migrate_only:
        asyncio.run(migrate_only(settings))
        return
    _write_policy(settings.write_sched)  # a bad value stops the start before any process is spawned
    if settings.write_worker_socket:
        _enter_write_group(settings)
        _enter_write_policy(settings.write_sched)
    if settings.workers > 1 or settings.write_workers > 0:
        supervisor = _Supervisor(sys.argv[1:], settings)
        signal.signal(signal.SIGTERM, supervisor.stop)  # before any worker starts: none is left behind
        signal.signal(signal.SIGINT, supervisor.stop)
        try:
            supervisor.start()
        except BaseException:
            supervisor.stop_all()
            raise
        sys.exit(supervisor.run())
    if settings.event_loop == "uvloop":
        import uvloop

        uvloop.run(_run(settings, tracing))
    else:
        asyncio.run(_run(settings, tracing))


if __name__ == "__main__":
    main()

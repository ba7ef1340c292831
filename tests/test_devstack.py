"""The local stack's conveniences: the gateway on a second port (port 80 in `make up`), the tools' settings file."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from devstack import Proc, free_port, start_envoy
from devstack._procs import wait_for_port
from server import Settings, local_environment
from tests._http import Rest


def test_the_gateway_answers_the_same_on_its_second_port(stack_dir: Path, server: Proc) -> None:
    main, second = free_port(), free_port()
    envoy = start_envoy(stack_dir, main, server.port, also_ports=(second,))
    try:
        path = "/api/feature-registry/features?page_size=1"
        first, other = Rest(f"http://127.0.0.1:{main}").get(path), Rest(f"http://127.0.0.1:{second}").get(path)
        assert (first.status, other.status) == (200, 200)
        assert first.json() == other.json()
    finally:
        envoy.stop()


def test_tools_read_the_local_settings_file_below_the_environment(tmp_path: Path) -> None:
    local = tmp_path / "local.env"
    local.write_text("# make up\nFEATURESTORE_REDIS_URL=redis://127.0.0.1:16379/0\nFEATURESTORE_PORT=5\nOTHER=x\n")
    environ = {"FEATURESTORE_LOCAL_ENV": str(local), "FEATURESTORE_PORT": "7"}
    merged = local_environment(environ) | environ
    settings = Settings.load([], merged)
    assert (settings.redis_url, settings.port) == ("redis://127.0.0.1:16379/0", 7)
    assert "OTHER" not in local_environment(environ)
    assert local_environment({"FEATURESTORE_LOCAL_ENV": str(tmp_path / "missing.env")}) == {}
    assert Settings.load(["--redis-cluster"], {}).redis_cluster is True
    assert Settings.load(["--redis-cluster", "false"], {"FEATURESTORE_REDIS_CLUSTER": "true"}).redis_cluster is False


class _Interrupted(Exception):
    pass


def _interrupt(signum: int, frame: object) -> None:
    raise _Interrupted


def test_a_start_interrupted_while_it_waits_leaves_nothing_running(tmp_path: Path) -> None:
    # `make up` stopped (Ctrl-C) while a process it started is not ready yet: that process stops too.
    never_listens = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    proc = Proc("sleeper", never_listens, tmp_path / "sleeper.log", free_port())
    before = signal.signal(signal.SIGALRM, _interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(_Interrupted):
            wait_for_port(proc, timeout=30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
        never_listens.kill()
    assert never_listens.returncode is not None  # stopped (and reaped) by the wait, not by the kill above

"""The local stack's conveniences: the gateway on a second port (port 80 in `make up`), the tools' settings file."""

from __future__ import annotations

from pathlib import Path

from devstack import Proc, free_port, start_envoy
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

"""Prometheus and its Pushgateway for the local stack (Debian's `prometheus` packages; `make venv` installs them).

`start_prometheus` writes a configuration that scrapes the server's /metrics (one target
per worker), Envoy's admin /stats/prometheus, the Pushgateway (the batch runs' metrics)
and a long-running pipeline's own /metrics, with the rules under monitoring/prometheus
loaded.
"""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from devstack._procs import ROOT, Proc, _spawn, stops_on_failure, wait_for_port

RULES_DIR = ROOT / "monitoring" / "prometheus"
PIPELINE_JOB = "featurestore_pipeline"  # the pipeline's scrape job, and the job its pushes are filed under


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is missing: apt-get install prometheus prometheus-pushgateway (make venv does)")
    return found


def rule_files(directory: Path = RULES_DIR) -> list[Path]:
    """The recording and alerting rule files (not their tests)."""
    return sorted(directory.glob("*.rules.yml"))


@dataclass
class Targets:
    """What Prometheus scrapes, as host:port."""

    servers: Sequence[str]
    envoy_admin: str | None = None
    pushgateway: str | None = None
    pipelines: Sequence[str] = field(default_factory=list)


def prometheus_config(
    targets: Targets, *, scrape_interval: str = "15s", evaluation_interval: str = "15s", rules: Sequence[Path] = ()
) -> dict[str, object]:
    """A prometheus.yml for `targets` with `rules` loaded."""
    jobs: list[dict[str, object]] = [
        {"job_name": "featurestore_server", "static_configs": [{"targets": list(targets.servers)}]}
    ]
    if targets.envoy_admin:
        jobs.append(
            {
                "job_name": "featurestore_envoy",
                "metrics_path": "/stats/prometheus",
                "static_configs": [{"targets": [targets.envoy_admin]}],
            }
        )
    if targets.pushgateway:
        # honor_labels: the pushed job and pipeline labels stay as the pipeline set them
        jobs.append(
            {"job_name": "pushgateway", "honor_labels": True, "static_configs": [{"targets": [targets.pushgateway]}]}
        )
    if targets.pipelines:
        jobs.append({"job_name": PIPELINE_JOB, "static_configs": [{"targets": list(targets.pipelines)}]})
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "rule_files": [str(path) for path in rules],
        "scrape_configs": jobs,
    }


@stops_on_failure
def _wait_http(proc: Proc, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{proc.name} not ready within {timeout}s:\n{proc.log_tail()}")


def start_pushgateway(state_dir: Path, port: int) -> Proc:
    """A Prometheus Pushgateway on 127.0.0.1:`port`, keeping what was pushed in the state folder."""
    state_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        _binary("prometheus-pushgateway"),
        f"--web.listen-address=127.0.0.1:{port}",
        f"--persistence.file={state_dir / 'pushgateway.db'}",
    ]
    proc = _spawn("pushgateway", cmd, state_dir / "pushgateway.log", port)
    wait_for_port(proc)
    return proc


def start_prometheus(
    state_dir: Path,
    port: int,
    targets: Targets,
    *,
    scrape_interval: str = "15s",
    evaluation_interval: str = "15s",
    rules: Sequence[Path] | None = None,
) -> Proc:
    """Prometheus on 127.0.0.1:`port` scraping `targets` with the rules loaded; ready once /-/ready answers."""
    data = state_dir / "prometheus"
    data.mkdir(parents=True, exist_ok=True)
    config = state_dir / "prometheus.yml"
    loaded = rule_files() if rules is None else rules
    settings = prometheus_config(
        targets, scrape_interval=scrape_interval, evaluation_interval=evaluation_interval, rules=loaded
    )
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    cmd = [
        _binary("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=7d",
    ]
    proc = _spawn("prometheus", cmd, state_dir / "prometheus.log", port)
    _wait_http(proc, f"http://127.0.0.1:{port}/-/ready", timeout=60)
    return proc

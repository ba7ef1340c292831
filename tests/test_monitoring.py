"""Monitoring as code: the Prometheus rules (promtool), the Grafana dashboards, and a real Prometheus
scraping a real stack (server, Envoy, the pipeline's Pushgateway) with those rules loaded."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from devstack import Proc, Targets, free_port, rule_files, start_envoy, start_prometheus, start_pushgateway
from featurestore import FeatureStoreClient
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from jobs import PipelineMetrics
from tests._helpers import FAST_SERVER_ARGS, Processes, eventually, reaped
from tests._metrics import names, scrape
from tests._online import ago, f64, register, row, wait_servable, write

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "monitoring" / "prometheus"
GRAFANA = ROOT / "monitoring" / "grafana"
sys.path.insert(0, str(GRAFANA))
import dashboards  # noqa: E402

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: `make venv` installs Debian's prometheus package"
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_rules_are_valid_and_their_unit_tests_pass() -> None:
    checked = _promtool("check", "rules", *map(str, rule_files()))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _promtool("test", "rules", *map(str, sorted((RULES / "tests").glob("*.yml"))))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_runbook_line_and_a_documented_section() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    alerts = [r for path in rule_files() for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]
    alerts = [r for r in alerts if "alert" in r]
    assert len(alerts) >= 7
    for rule in alerts:
        assert rule["annotations"]["runbook"].strip(), rule["alert"]
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert f"### {rule['alert']}" in operations, rule["alert"]
        assert anchor == rule["alert"].lower()


def test_dashboards_are_generated_from_their_code() -> None:
    done = subprocess.run(
        [sys.executable, str(GRAFANA / "dashboards.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert {p.name for p in (GRAFANA / "dashboards").glob("*.json")} == {
        "feature-store.json",
        "registry.json",
        "pipelines.json",
    }


def _all_queries() -> list[str]:
    """Every panel query, and every rule expression (Grafana's $__rate_interval made concrete)."""
    rules = [r["expr"] for path in rule_files() for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]
    return [q.replace("$__rate_interval", "5m") for q in [*dashboards.panel_queries(), *rules]]


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    queries = _all_queries()
    rules = {"groups": [{"name": "parse", "rules": [{"record": f"q{i}", "expr": q} for i, q in enumerate(queries)]}]}
    path = tmp_path / "queries.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = _promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(queries)} rules found" in checked.stdout


# -- a real stack: server, Envoy, Pushgateway, Prometheus ------------------------------------------


@dataclass
class Stack:
    server: Proc
    envoy: Proc
    valkey: Proc
    pushgateway: Proc
    prometheus: Proc


def _fast_rules(directory: Path) -> list[Path]:
    """The rules with every `for:` shortened to 2 s, so alerts fire within the test."""
    out = []
    for path in rule_files():
        copy = directory / path.name
        copy.write_text(re.sub(r"for: \d+[smh]", "for: 2s", path.read_text()))
        out.append(copy)
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_dsn: str) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("monitoring")
    with Processes(state) as procs:
        valkey = procs.valkey()
        server = procs.server(
            postgres_dsn, str(valkey.extra["url"]), [*FAST_SERVER_ARGS, "--freshness-interval", "0.2"]
        )
        envoy = procs.add(reaped(lambda: start_envoy(state, free_port(), server.port)))
        gateway = procs.add(reaped(lambda: start_pushgateway(state, free_port())))
        targets = Targets(
            servers=[f"127.0.0.1:{server.extra['metrics_port']}"],
            envoy_admin=f"127.0.0.1:{envoy.extra['admin_port']}",
            pushgateway=f"127.0.0.1:{gateway.port}",
        )
        rules = _fast_rules(state)
        prometheus = procs.add(
            reaped(
                lambda: start_prometheus(
                    state, free_port(), targets, scrape_interval="1s", evaluation_interval="1s", rules=rules
                )
            )
        )
        # traffic after a first scrape, so that rates see the counters increase
        eventually(lambda: bool(_query(prometheus, 'up{job="featurestore_server"} == 1')), timeout=60, interval=0.2)
        _traffic(server, envoy, gateway)
        yield Stack(server, envoy, valkey, gateway, prometheus)


def _traffic(server: Proc, envoy: Proc, gateway: Proc) -> None:
    """Definitions, writes, reads by group and by name over gRPC and REST, an error, a pipeline run."""
    with FeatureStoreClient(f"127.0.0.1:{server.port}") as client:
        with contextlib.suppress(Exception):  # left by an earlier run of the module on the shared PostgreSQL
            register(client, "mon_a", pb.FLOAT, max_age=timedelta(hours=1))
            register(client, "mon_b", pb.FLOAT)
            fg = pb.FeatureGroup(name="mon_group", entity_type="customer", feature_names=["mon_a", "mon_b"])
            client.registry.CreateFeatureGroup(rs.CreateFeatureGroupRequest(feature_group=fg))
        wait_servable(client, "customer", "mon_a", "mon_b")
        write(client, [row("mon1", ago(minutes=5), mon_a=f64(1.0))])
        for _ in range(5):
            request = fs.GetFeaturesRequest(entity_type="customer", entity_id="mon1", feature_groups=["mon_group"])
            client.store.GetFeatures(request)
            batch = fs.BatchGetFeaturesRequest(
                entity_type="customer", entity_ids=["mon1", "mon2"], feature_names=["mon_a"]
            )
            client.store.BatchGetFeatures(batch)
        with contextlib.suppress(Exception):
            client.registry.GetFeature(rs.GetFeatureRequest(name="mon_missing"))
    body = json.dumps({"entity_type": "customer", "entity_id": "mon1", "feature_names": ["mon_a"]}).encode()
    post = urllib.request.Request(
        f"http://127.0.0.1:{envoy.port}/api/feature-store/features",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(post, timeout=5) as resp:
        assert resp.status == 200
    metrics = PipelineMetrics("batch")
    metrics.started()
    metrics.finished(rows_read=10, values_written=20, failed_features=0)
    metrics.push(f"127.0.0.1:{gateway.port}")


def _envoy_names(envoy: Proc) -> set[str]:
    url = f"http://127.0.0.1:{envoy.extra['admin_port']}/stats/prometheus"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def _pipeline_names() -> set[str]:
    metrics = PipelineMetrics("batch")
    metrics.started()
    metrics.finished(rows_read=1, values_written=1, failed_features=0)
    text = generate_latest(metrics.registry).decode()
    return {line.split("{")[0] for line in text.splitlines() if line and not line.startswith("#")}


_NAME = re.compile(r"\b(featurestore[_:][a-z0-9_:]+|envoy_[a-z0-9_]+)\b")
# Label names, not metric names: grouping clauses and label matchers.
_LABELS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)|\{[^}]*\}")


def test_every_query_names_metrics_the_real_processes_expose(stack: Stack) -> None:
    port = int(str(stack.server.extra["metrics_port"]))
    eventually(lambda: "featurestore_feature_age_seconds" in names(scrape(port)))
    exposed = names(scrape(port)) | _envoy_names(stack.envoy) | _pipeline_names()
    recorded = {
        r.get("record") for path in rule_files() for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]
    } - {None}
    unknown = {}
    for query in _all_queries():
        for name in _NAME.findall(_LABELS.sub(" ", query)):
            if name not in (recorded if ":" in name else exposed):
                unknown[name] = query
    assert unknown == {}


def _query(prometheus: Proc, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{prometheus.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:
        answer = json.loads(resp.read())
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def _firing(prometheus: Proc, alert: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{prometheus.port}/api/v1/alerts", timeout=5) as resp:
        alerts = json.loads(resp.read())["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == alert and a["state"] == "firing"]


def test_prometheus_scrapes_the_stack_and_records_the_rules(stack: Stack) -> None:
    prometheus = stack.prometheus
    expected = [
        'up{job="featurestore_server"} == 1',
        'up{job="featurestore_envoy"} == 1',
        'featurestore_rpc_duration_seconds_count{method="GetFeatures"} >= 5',
        'featurestore_feature_values_served_total{feature_group="mon_group", status="NOT_FOUND"} >= 5',
        'featurestore_feature_age_seconds{feature="mon_a"}',
        "envoy_cluster_upstream_rq_xx",
        'featurestore_pipeline_values_written{job="featurestore_pipeline", pipeline="batch"} == 20',
        'featurestore:rpc_requests:rate5m{method="GetFeatures"} > 0',
        'featurestore:feature_age_seconds{feature="mon_a"} > 0',
    ]
    deadline, missing = time.monotonic() + 60, expected
    while missing and time.monotonic() < deadline:
        time.sleep(0.5)
        missing = [expr for expr in missing if not _query(prometheus, expr)]
    assert missing == []
    rules = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{prometheus.port}/api/v1/rules", timeout=5).read())
    loaded = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
    assert {"FeatureStoreStoreDown", "FeatureStoreFeatureStale", "featurestore:rpc_requests:rate5m"} <= loaded
    assert _firing(prometheus, "FeatureStoreStoreDown") == []


def test_an_alert_fires_when_a_store_is_stopped(stack: Stack) -> None:
    """Last in the module: it stops the stack's Valkey."""
    stack.valkey.stop()
    started = time.monotonic()
    eventually(lambda: bool(_firing(stack.prometheus, "FeatureStoreStoreDown")), timeout=60, interval=0.5)
    fired = _firing(stack.prometheus, "FeatureStoreStoreDown")
    assert [a["labels"]["store"] for a in fired] == ["redis"]
    assert "featurestore-reconcile" in fired[0]["annotations"]["runbook"]
    assert time.monotonic() - started < 60

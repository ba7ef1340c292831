"""The Airflow DAGs, checked by Apache Airflow itself in its own virtualenv (`make test-airflow`).

Airflow's dependencies must not reach the server's, so Airflow lives in .airflow-venv and
runs dags/tests/airflow_check.py; this module (the project's venv) starts a local stack
for it and reads what it prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devstack import load_demo
from featurestore import FeatureStoreClient
from featurestore.registry.v1 import feature_pb2 as pb
from tests._helpers import FAST_SERVER_ARGS, Processes, eventually, run_sql
from tests._online import ago, f64, register, row, wait_servable, write

ROOT = Path(__file__).resolve().parent.parent.parent
AIRFLOW_PYTHON = ROOT / ".airflow-venv" / "bin" / "python"
CHECK = Path(__file__).resolve().parent / "airflow_check.py"
# The demo's source rows lead up to today: the run is as of today's midnight.
AS_OF = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _airflow(tmp: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    if not AIRFLOW_PYTHON.exists():
        pytest.fail("no .airflow-venv: run `make test-airflow`, which makes it")
    environ = {
        **os.environ,
        **(env or {}),
        "AIRFLOW_HOME": str(tmp / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "FEATURESTORE_DAG_RETRY_SECONDS": "1",  # dag.test() waits out a retry's delay
    }
    if args[0] == "run":  # dag.test() needs Airflow's metadata database (SQLite here); idempotent
        migrate = [str(AIRFLOW_PYTHON.parent / "airflow"), "db", "migrate"]
        migrated = subprocess.run(migrate, capture_output=True, text=True, timeout=300, env=environ)
        assert migrated.returncode == 0, migrated.stdout[-2000:] + migrated.stderr[-3000:]
    done = subprocess.run(
        [str(AIRFLOW_PYTHON), str(CHECK), *args], capture_output=True, text=True, timeout=900, env=environ, cwd=ROOT
    )
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert results, done.stdout[-3000:] + done.stderr[-5000:]
    parsed: dict[str, object] = json.loads(results[-1].removeprefix("RESULT "))
    return parsed


def test_the_dags_import_with_owners_retries_and_schedules(tmp_path: Path) -> None:
    found = _airflow(tmp_path, "integrity")
    assert found["import_errors"] == {}
    dags = found["dags"]
    assert isinstance(dags, dict)
    assert set(dags) == {"featurestore_batch_features", "featurestore_freshness_check"}
    batch, freshness = dags["featurestore_batch_features"], dags["featurestore_freshness_check"]
    assert (batch["schedule"], freshness["schedule"]) == ("@daily", "@hourly")
    assert batch["catchup"] is False
    for dag in dags.values():
        assert dag["tasks"], dag
        for task in dag["tasks"].values():
            assert task["owner"] == "feature-platform"
            assert task["retries"] >= 1
    command = batch["tasks"]["batch_pipeline"]["command"]
    assert "-m jobs.batch_pipeline" in command
    assert "'--as-of' '{{ logical_date.isoformat() }}'" in command


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, str]]:
    """PostgreSQL, Valkey, a server and the demo definitions and source tables: FEATURESTORE_* to reach them."""
    with Processes(tmp_path) as processes:
        postgres = processes.postgres()
        valkey = processes.valkey()
        dsn, url = str(postgres.extra["dsn"]), str(valkey.extra["url"])
        server = processes.server(dsn, url, [*FAST_SERVER_ARGS, "--freshness-interval", "0.2"])
        load_demo(f"127.0.0.1:{server.port}")
        warehouse = tmp_path / "warehouse"
        demo = [sys.executable, "-m", "jobs.demo_data", "--warehouse", str(warehouse), "--master", "local[1]"]
        subprocess.run(demo, cwd=ROOT, check=True, capture_output=True, timeout=600)
        yield {
            "FEATURESTORE_PYTHON": sys.executable,
            "FEATURESTORE_HOME": str(ROOT),
            "FEATURESTORE_REGISTRY": f"127.0.0.1:{server.port}",
            "FEATURESTORE_POSTGRES_DSN": dsn,
            "FEATURESTORE_REDIS_URL": url,
            "FEATURESTORE_WAREHOUSE": str(warehouse),
            "FEATURESTORE_METRICS_URLS": f"http://127.0.0.1:{server.extra['metrics_port']}/metrics",
        }


def test_the_batch_dag_computes_as_of_its_logical_date_and_the_freshness_dag_fails_on_stale_features(
    stack: dict[str, str], tmp_path: Path
) -> None:
    ran = _airflow(tmp_path, "run", "featurestore_batch_features", AS_OF.isoformat(), env=stack)
    assert ran == {"state": "success", "tasks": {"batch_pipeline": "success"}}, ran
    written = run_sql(
        stack["FEATURESTORE_POSTGRES_DSN"], "SELECT DISTINCT event_time FROM feature_history ORDER BY event_time"
    )
    assert [r["event_time"] for r in written] == [AS_OF]

    # a pushed feature 2 h old with a 1 h max age: the freshness check fails
    with FeatureStoreClient(stack["FEATURESTORE_REGISTRY"]) as client:
        register(client, "dag_stale_feature", pb.FLOAT, max_age=timedelta(hours=1))
        wait_servable(client, "customer", "dag_stale_feature")
        write(client, [row("c1", ago(hours=2), dag_stale_feature=f64(1.0))])
    url = stack["FEATURESTORE_METRICS_URLS"]
    eventually(
        lambda: 'featurestore_feature_age_seconds{entity_type="customer",feature="dag_stale_feature"}' in _text(url)
    )
    checked = _airflow(tmp_path, "run", "featurestore_freshness_check", datetime.now(UTC).isoformat(), env=stack)
    assert checked == {"state": "failed", "tasks": {"check_freshness": "failed"}}, checked


def _text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - the test's own http URL
        return str(resp.read().decode())

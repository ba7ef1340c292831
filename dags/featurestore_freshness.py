"""Airflow DAG: fail (and alert through Airflow's failure callbacks) when a feature is older than its max age.

Hourly, it reads the feature store server's /metrics (FEATURESTORE_METRICS_URLS, comma-separated;
default http://127.0.0.1:9464/metrics) and compares each feature's
featurestore_feature_age_seconds with its featurestore_feature_max_age_seconds. The task
fails naming every stale feature; Prometheus' FeatureStoreFeatureStale alert is the same rule.
"""

from __future__ import annotations

import os
import re
import urllib.request
from datetime import datetime, timedelta

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

_SAMPLE = re.compile(r"^(featurestore_feature_(?:age|max_age)_seconds)\{([^}]*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def stale_features(metrics_text: str) -> list[tuple[str, float, float]]:
    """(feature, age, max age) of each feature older than its max age, by age; from /metrics text."""
    ages: dict[str, float] = {}
    limits: dict[str, float] = {}
    for line in metrics_text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match.group(2)))
        into = ages if match.group(1) == "featurestore_feature_age_seconds" else limits
        into[labels["feature"]] = max(into.get(labels["feature"], 0.0), float(match.group(3)))
    stale = [(name, age, limits[name]) for name, age in ages.items() if name in limits and age > limits[name]]
    return sorted(stale, key=lambda s: -s[1])


def check_freshness() -> None:
    urls = os.environ.get("FEATURESTORE_METRICS_URLS", "http://127.0.0.1:9464/metrics").split(",")
    text = ""
    for url in urls:
        if not url.strip().startswith(("http://", "https://")):
            raise ValueError(f"FEATURESTORE_METRICS_URLS holds {url!r}: not an http(s) URL")
        with urllib.request.urlopen(url.strip(), timeout=30) as resp:  # noqa: S310 - http(s) only, checked above
            text += resp.read().decode() + "\n"
    stale = stale_features(text)
    if stale:
        lines = [f"{name}: {age / 3600:.1f} h old, max age {limit / 3600:.1f} h" for name, age, limit in stale]
        raise RuntimeError(f"{len(stale)} feature(s) older than their max age:\n" + "\n".join(lines))
    print("every written feature is within its max age")


with DAG(
    dag_id="featurestore_freshness_check",
    description="Fail when a feature is older than its max age",
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={
        "owner": "feature-platform",
        "retries": 1,
        "retry_delay": timedelta(seconds=int(os.environ.get("FEATURESTORE_DAG_RETRY_SECONDS", "300"))),
    },
    tags=["featurestore"],
) as dag:
    PythonOperator(task_id="check_freshness", python_callable=check_freshness)

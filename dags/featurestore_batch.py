"""Airflow DAG: the daily batch feature pipeline, as of each run's logical date.

`--as-of` is the DAG run's logical date, so a rerun or a backfill of a day recomputes that
day's values exactly (the pipeline's writes are idempotent per as-of time). Where it runs:

- FEATURESTORE_DAG_RUNNER=local (default): a BashOperator runs `python -m jobs.batch_pipeline`
  with the interpreter FEATURESTORE_PYTHON (a checkout's .venv/bin/python) in
  FEATURESTORE_HOME (the checkout), e.g. against `make up`'s stack.
- FEATURESTORE_DAG_RUNNER=kubernetes: a KubernetesPodOperator (apache-airflow-providers-cncf-kubernetes)
  runs the same command in the project's image (FEATURESTORE_IMAGE), like the CronJob of
  kubernetes/feature-engineering/, with its settings from the Secret FEATURESTORE_SECRET.

The pipeline's own settings (registry, stores, Pushgateway) come from FEATURESTORE_* variables;
FEATURESTORE_DAG_RETRY_SECONDS sets the wait between its two retries (600).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG

ENTITY_TYPES = os.environ.get("FEATURESTORE_ENTITY_TYPES", "customer,product")
LOOKBACK_DAYS = int(os.environ.get("FEATURESTORE_LOOKBACK_DAYS", "30"))
ARGS = [
    "--feature-types",
    ENTITY_TYPES,
    "--lookback-days",
    str(LOOKBACK_DAYS),
    "--as-of",
    "{{ logical_date.isoformat() }}",
]
DEFAULT_ARGS = {
    "owner": "feature-platform",
    "retries": 2,
    "retry_delay": timedelta(seconds=int(os.environ.get("FEATURESTORE_DAG_RETRY_SECONDS", "600"))),
    "execution_timeout": timedelta(hours=3),
}

with DAG(
    dag_id="featurestore_batch_features",
    description="Compute and materialize the BATCH features as of the run's logical date",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["featurestore"],
) as dag:
    if os.environ.get("FEATURESTORE_DAG_RUNNER", "local") == "kubernetes":
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

        KubernetesPodOperator(
            task_id="batch_pipeline",
            name="featurestore-batch-pipeline",
            namespace=os.environ.get("FEATURESTORE_NAMESPACE", "feature-store"),
            image=os.environ.get("FEATURESTORE_IMAGE", "featurestore:latest"),
            cmds=["featurestore-batch-pipeline"],
            arguments=ARGS,
            env_from=[{"secretRef": {"name": os.environ.get("FEATURESTORE_SECRET", "featurestore-pipeline")}}],
        )
    else:
        from airflow.providers.standard.operators.bash import BashOperator

        python = os.environ.get("FEATURESTORE_PYTHON", "python3")
        BashOperator(
            task_id="batch_pipeline",
            bash_command=" ".join([python, "-m", "jobs.batch_pipeline", *(f"'{a}'" for a in ARGS)]),
            cwd=os.environ.get("FEATURESTORE_HOME") or None,
        )

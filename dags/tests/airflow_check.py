"""Run inside the Airflow virtualenv (.airflow-venv) by test_dags.py: checks and test runs of the DAGs.

airflow_check.py integrity            # prints the DAGs' properties as JSON
airflow_check.py run DAG_ID ISO_TIME  # dag.test() one run; prints its task states as JSON
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

DAGS = Path(__file__).resolve().parent.parent


def integrity() -> dict[str, object]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    dags = {}
    for dag_id, dag in bag.dags.items():
        dags[dag_id] = {
            "schedule": str(dag.schedule),
            "catchup": dag.catchup,
            "tags": sorted(dag.tags),
            "tasks": {
                t.task_id: {
                    "owner": t.owner,
                    "retries": t.retries,
                    "type": type(t).__name__,
                    "downstream": sorted(t.downstream_task_ids),
                    "command": getattr(t, "bash_command", None),
                }
                for t in dag.tasks
            },
            "topological": [t.task_id for t in dag.topological_sort()],
            "cycle": _cycle(dag),
        }
    return {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": dags}


def _cycle(dag: Any) -> str:
    try:
        dag.check_cycle()
    except Exception as err:  # noqa: BLE001 - reported to the test
        return str(err)
    return ""


def run(dag_id: str, when: str) -> dict[str, object]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    dag = bag.get_dag(dag_id)
    assert dag is not None, bag.import_errors
    dag_run = dag.test(logical_date=datetime.fromisoformat(when))
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    return {"state": str(dag_run.state), "tasks": states}


if __name__ == "__main__":
    command = sys.argv[1]
    result = integrity() if command == "integrity" else run(sys.argv[2], sys.argv[3])
    print("RESULT " + json.dumps(result, default=str))

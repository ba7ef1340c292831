"""The Grafana dashboards as code (grafana-foundation-sdk), written as JSON next to this file.

    .venv/bin/python monitoring/grafana/dashboards.py           # write dashboards/*.json
    .venv/bin/python monitoring/grafana/dashboards.py --check   # fail if they are stale

Three dashboards: Feature Store (serving), Registry, Pipelines. Every query reads the
server's, Envoy's or the pipelines' metrics (docs/operations.md) or the recording rules
in monitoring/prometheus; tests/test_monitoring.py checks each parses as PromQL and names
metrics that the real processes expose.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders.dashboard import Dashboard, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="featurestore-prometheus")  # provisioning/datasources
RATE = "$__rate_interval"

Query = tuple[str, str]  # (PromQL, legend)


def quantile(q: float, histogram: str, by: str) -> str:
    """The q-quantile of `histogram` per `by`, over Grafana's rate interval."""
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({histogram}_bucket[{RATE}])))"


def rate(counter: str, by: str, selector: str = "") -> str:
    """Per-second rate of `counter` (with an optional label selector) per `by`."""
    return f"sum by ({by}) (rate({counter}{selector}[{RATE}]))"


def _targets(queries: Sequence[Query]) -> list[Dataquery]:
    return [
        Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i)).datasource(DATASOURCE)
        for i, (expr, legend) in enumerate(queries)
    ]


def graph(title: str, unit: str, *queries: Query, description: str = "") -> Timeseries:
    panel = Timeseries().title(title).unit(unit).datasource(DATASOURCE).height(8).span(12).description(description)
    for target in _targets(queries):
        panel = panel.with_target(target)
    return panel


def stat(title: str, unit: str, *queries: Query, description: str = "") -> Stat:
    panel = Stat().title(title).unit(unit).datasource(DATASOURCE).height(4).span(6).description(description)
    for target in _targets(queries):
        panel = panel.with_target(target)
    return panel


def _dashboard(uid: str, title: str) -> Dashboard:
    return (
        Dashboard(title)
        .uid(uid)
        .tags(["featurestore", "generated"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
    )


def feature_store() -> Dashboard:
    return (
        _dashboard("featurestore-serving", "Feature Store")
        .with_row(Row("Traffic"))
        .with_panel(
            graph(
                "Requests by method",
                "reqps",
                (rate("featurestore_rpc_duration_seconds_count", "method"), "{{method}}"),
            )
        )
        .with_panel(
            graph(
                "Errors by code",
                "reqps",
                (rate("featurestore_rpc_errors_total", "method, code"), "{{method}} {{code}}"),
            )
        )
        .with_panel(
            graph(
                "p50 by method",
                "s",
                (quantile(0.5, "featurestore_rpc_duration_seconds", "method"), "{{method}}"),
            )
        )
        .with_panel(
            graph(
                "p99 by method",
                "s",
                (quantile(0.99, "featurestore_rpc_duration_seconds", "method"), "{{method}}"),
            )
        )
        .with_row(Row("Values served"))
        .with_panel(
            graph(
                "Values served by status",
                "short",
                (rate("featurestore_feature_values_served_total", "status"), "{{status}}"),
                description="NOT_FOUND: never written (or evicted); EXPIRED: older than the feature's max age.",
            )
        )
        .with_panel(
            graph(
                "Not present, by feature group",
                "percentunit",
                (
                    rate("featurestore_feature_values_served_total", "feature_group, status", '{status!="PRESENT"}')
                    + " / ignoring (status) group_left "
                    + rate("featurestore_feature_values_served_total", "feature_group"),
                    "{{feature_group}} {{status}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Request size (p99)",
                "short",
                (
                    quantile(0.99, "featurestore_request_features", "method"),
                    "features {{method}}",
                ),
                (
                    quantile(0.99, "featurestore_request_entities", "method"),
                    "entities {{method}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Envoy responses by class",
                "reqps",
                (
                    rate("envoy_cluster_upstream_rq_xx", "envoy_response_code_class"),
                    "{{envoy_response_code_class}}xx",
                ),
            )
        )
        .with_row(Row("Freshness"))
        .with_panel(
            graph(
                "Age of the newest value, by feature",
                "s",
                ("featurestore:feature_age_seconds", "{{feature}}"),
            )
        )
        .with_panel(
            graph(
                "Age / max age (above 1: served EXPIRED)",
                "short",
                ("featurestore:feature_age_over_max_age:ratio", "{{feature}}"),
            )
        )
        .with_row(Row("Redis and PostgreSQL"))
        .with_panel(stat("Stores up", "short", ("min by (store) (featurestore_store_up)", "{{store}}")))
        .with_panel(stat("Redis requests pending", "short", ("sum(featurestore_redis_requests_pending)", "pending")))
        .with_panel(
            graph(
                "Store call p99",
                "s",
                ("featurestore:store_call_latency_seconds:p99_5m", "{{store}} {{call}}"),
            )
        )
        .with_panel(
            graph(
                "Store call errors",
                "short",
                (rate("featurestore_store_call_errors_total", "store, call"), "{{store}} {{call}}"),
            )
        )
        .with_panel(
            graph(
                "PostgreSQL connections in use",
                "short",
                ('sum by (pool) (featurestore_postgres_pool_connections{state="in_use"})', "{{pool}} in use"),
                ('sum by (pool) (featurestore_postgres_pool_connections{state="max"})', "{{pool}} max"),
            )
        )
        .with_panel(
            graph(
                "PostgreSQL pool wait p99",
                "s",
                (
                    quantile(0.99, "featurestore_postgres_pool_wait_seconds", "pool"),
                    "{{pool}}",
                ),
            )
        )
    )


def registry() -> Dashboard:
    writes = 'method=~"Create.*|Update.*|Delete.*"'
    return (
        _dashboard("featurestore-registry", "Feature Registry")
        .with_row(Row("Snapshot"))
        .with_panel(stat("Snapshot version", "none", ("max(featurestore_registry_snapshot_version)", "version")))
        .with_panel(stat("Features served", "short", ("max(featurestore_registry_snapshot_features)", "features")))
        .with_panel(
            stat(
                "Snapshot staleness",
                "s",
                ("max(featurestore:registry_snapshot_staleness_seconds)", "staleness"),
                description="Seconds since a server last confirmed its snapshot equals the registry.",
            )
        )
        .with_panel(
            stat(
                "Snapshot age",
                "s",
                ("time() - min(featurestore_registry_snapshot_loaded_timestamp_seconds)", "age"),
            )
        )
        .with_row(Row("Changes"))
        .with_panel(
            graph(
                "Changes by method",
                "reqps",
                (rate("featurestore_rpc_duration_seconds_count", "method", "{" + writes + "}"), "{{method}}"),
            )
        )
        .with_panel(
            graph(
                "Change errors by code",
                "reqps",
                (
                    rate("featurestore_rpc_errors_total", "method, code", "{" + writes + "}"),
                    "{{method}} {{code}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Definitions by entity type",
                "short",
                ("max by (entity_type, kind) (featurestore_registry_definitions)", "{{entity_type}} {{kind}}"),
            )
        )
        .with_panel(
            graph(
                "Plan cache",
                "short",
                ("sum(featurestore_plan_cache_plans)", "plans"),
                ("sum(featurestore_plan_cache_features)", "features"),
            )
        )
    )


def pipelines() -> Dashboard:
    return (
        _dashboard("featurestore-pipelines", "Feature Pipelines")
        .with_row(Row("Runs"))
        .with_panel(stat("Latest run succeeded", "bool", ("featurestore_pipeline_run_success", "{{pipeline}}")))
        .with_panel(
            stat(
                "Since the last success",
                "s",
                ("time() - featurestore_pipeline_last_success_timestamp_seconds", "{{pipeline}}"),
            )
        )
        .with_panel(stat("Failed features", "short", ("featurestore_pipeline_failed_features", "{{pipeline}}")))
        .with_panel(stat("Run duration", "s", ("featurestore_pipeline_run_duration_seconds", "{{pipeline}}")))
        .with_panel(
            graph(
                "Rows read and values written (latest run)",
                "short",
                ("featurestore_pipeline_rows_read", "rows read {{pipeline}}"),
                ("featurestore_pipeline_values_written", "values written {{pipeline}}"),
            )
        )
        .with_panel(
            graph(
                "Run start and end",
                "dateTimeAsIso",
                ("featurestore_pipeline_run_start_timestamp_seconds * 1000", "start {{pipeline}}"),
                ("featurestore_pipeline_run_end_timestamp_seconds * 1000", "end {{pipeline}}"),
            )
        )
        .with_row(Row("Freshness"))
        .with_panel(
            graph(
                "Features older than their max age",
                "short",
                ("featurestore:feature_age_over_max_age:ratio > 1", "{{feature}}"),
            )
        )
        .with_panel(
            graph(
                "Newest event time written, by feature",
                "dateTimeAsIso",
                (
                    "max by (feature) (featurestore_feature_newest_event_timestamp_seconds) * 1000",
                    "{{feature}}",
                ),
            )
        )
    )


DASHBOARDS = {"feature-store": feature_store, "registry": registry, "pipelines": pipelines}


def rendered() -> dict[str, str]:
    """File name -> the dashboard's JSON."""
    encoder = JSONEncoder(sort_keys=True)
    out = {}
    for name, build in DASHBOARDS.items():
        board = json.loads(encoder.encode(build().build()))
        for number, panel in enumerate(board["panels"], 1):  # unique panel ids (the builder leaves them 0)
            panel["id"] = number
        out[f"{name}.json"] = json.dumps(board, sort_keys=True, indent=2) + "\n"
    return out


def _exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            yield node["expr"]
        for child in node.values():
            yield from _exprs(child)
    elif isinstance(node, list):
        for child in node:
            yield from _exprs(child)


def panel_queries(directory: Path = OUT) -> list[str]:
    """Every PromQL expression of the written dashboards."""
    return [expr for path in sorted(directory.glob("*.json")) for expr in _exprs(json.loads(path.read_text()))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the JSON files differ from the code")
    args = parser.parse_args(argv)
    files = rendered()
    if args.check:
        stale = [name for name, text in files.items() if not (OUT / name).is_file() or (OUT / name).read_text() != text]
        extra = sorted({p.name for p in OUT.glob("*.json")} - set(files))
        if stale or extra:
            print(f"stale dashboards: {stale + extra}; run {Path(__file__).relative_to(HERE.parent.parent)}")
            return 1
        return 0
    OUT.mkdir(exist_ok=True)
    for name, text in files.items():
        (OUT / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Batch feature pipeline: compute registered batch features in Spark and materialize them.

    python jobs/batch_pipeline.py --feature-types=customer,product --lookback-days=30

Reads the BATCH feature definitions of the given entity types from the
registry (gRPC), computes each from its source table over the lookback window
before the as-of time, and writes the values (event time = the as-of time) to
the offline history in PostgreSQL and the online store in Redis. Reruns with
the same --as-of rewrite the same values (no duplicates). Exit status: 0 when
every feature was computed, 1 when some failed (the others are written), 2 when
the run could not start. Every flag can also be set by its environment variable
(`--redis-url` by FEATURESTORE_REDIS_URL: the server's names for the settings both
have), and with none of those the flags default to the stack `make up` runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")  # before gRPC initializes: see jobs/__init__.py

import grpc

from featurestore import FeatureStoreClient
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from jobs._metrics import PipelineMetrics
from jobs._plan import PlanError, select
from jobs._run import RunConfig, run
from jobs._session import DEFAULT_JDBC_JAR, SessionConfig, build_session, default_source_namespaces
from jobs._watch import watch
from server import ENV_PREFIX, Settings, add_arguments, local_environment
from server.tracing import TracingSettings, configure_tracing

# Where the server listens by default (the registry's address).
_REGISTRY = f"127.0.0.1:{Settings().port}"


def _as_of(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {text!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return int(text)


def _conf(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def _own(p: argparse.ArgumentParser, env: Mapping[str, str], flag: str, default: str, **kw: Any) -> None:
    """A pipeline flag, read from FEATURESTORE_<FLAG> when not given (the server's naming scheme)."""
    var = ENV_PREFIX + flag.removeprefix("--").replace("-", "_").upper()
    value = env.get(var, default)
    p.add_argument(flag, default=kw["type"](value) if "type" in kw else value, **kw)


def parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The command line; flags not given come from `env` (FEATURESTORE_<FLAG>), then defaults."""
    p = argparse.ArgumentParser(prog="batch_pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--feature-types", type=_csv, required=True, help="entity types, comma-separated: customer,product")
    p.add_argument("--lookback-days", type=_positive, default=30, help="days of source data before the as-of time")
    p.add_argument("--as-of", type=_as_of, help="compute as of this UTC time (a backfill); default: now")
    p.add_argument("--features", type=_csv, default=[], help="only these features, comma-separated")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the Spark query; write nothing")
    p.add_argument(
        "--every",
        type=_positive,
        help="keep running: recompute everything every EVERY seconds, new or changed features within seconds",
    )
    add_spark_arguments(p, env)
    return p


def add_spark_arguments(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Where definitions come from, values go and source tables are found (shared with featurestore-ingest)."""
    p.add_argument("--master", default="local[*]", help="Spark master (local[*], spark://..., k8s://...)")
    p.add_argument("--conf", type=_conf, action="append", default=[], help="extra Spark setting key=value")
    _own(p, env, "--registry", _REGISTRY, help="registry gRPC target host:port")
    _own(
        p,
        env,
        "--registry-token",
        "",
        help="bearer token (a reader's) for a registry with auth on; give it by FEATURESTORE_REGISTRY_TOKEN "
        "rather than the flag, which other users see in the process list",
    )
    _own(p, env, "--registry-ca-file", "", help="PEM CA of the registry's TLS certificate: connect with TLS")
    add_arguments(p, ["redis_url", "redis_cluster", "postgres_dsn", "online_ttl"], env)
    _own(
        p,
        env,
        "--metrics-push-url",
        "",
        help="Prometheus Pushgateway to push each run's metrics to (host:port or URL); empty: none",
    )
    _own(
        p,
        env,
        "--pipeline-metrics-port",
        "0",
        type=int,
        help="serve the run metrics on this port while running (a long-running --every); 0: not served",
    )
    _own(p, env, "--warehouse", "warehouse", help="local Parquet warehouse folder")
    _own(p, env, "--source-jdbc-url", "", help="JDBC URL of a PostgreSQL source")
    _own(p, env, "--jdbc-catalog", "postgres", help="catalog name of the JDBC source's tables")
    _own(p, env, "--jdbc-jar", DEFAULT_JDBC_JAR, help="the PostgreSQL JDBC driver")
    _own(
        p,
        env,
        "--source-namespaces",
        "",
        type=_csv,
        help="catalogs or catalog.schema names source tables may come from, comma-separated "
        "(default: the warehouse, spark_catalog.default, and the JDBC catalog when --source-jdbc-url is set)",
    )


def load_features(target: str, entity_types: Sequence[str], token: str = "", ca_file: str = "") -> list[pb.Feature]:
    """Every feature of `entity_types` in the registry, all pages (as `token`'s caller; over TLS with `ca_file`)."""
    features: list[pb.Feature] = []
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    channel = None
    if ca_file:
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(Path(ca_file).read_bytes()))
    with FeatureStoreClient(target, channel=channel) as client:
        for entity_type in entity_types:
            token = ""
            while True:
                request = rs.ListFeaturesRequest(entity_type=entity_type, page_size=1000, page_token=token)
                page = client.registry.ListFeatures(request, timeout=30, metadata=metadata)
                features += page.features
                token = page.next_page_token
                if not token:
                    break
    return features


def _batch_features(args: argparse.Namespace) -> list[pb.Feature]:
    features = load_features(args.registry, args.feature_types, args.registry_token, args.registry_ca_file)
    return select(features, args.feature_types, args.features)


def session_config(args: argparse.Namespace) -> SessionConfig:
    return SessionConfig(
        master=args.master,
        warehouse=args.warehouse,
        jdbc_url=args.source_jdbc_url,
        jdbc_catalog=args.jdbc_catalog,
        jdbc_jar=args.jdbc_jar,
        conf=dict(args.conf),
    )


def _config(args: argparse.Namespace, as_of: datetime) -> RunConfig:
    return RunConfig(
        as_of=as_of,
        lookback=timedelta(days=args.lookback_days),
        redis_url=args.redis_url,
        redis_cluster=args.redis_cluster,
        postgres_dsn=args.postgres_dsn,
        online_ttl=args.online_ttl,
        dry_run=args.dry_run,
        source_namespaces=source_namespaces(args),
    )


def source_namespaces(args: argparse.Namespace) -> tuple[str, ...]:
    """--source-namespaces, else the warehouse and the JDBC catalog when one is configured."""
    return tuple(args.source_namespaces) or default_source_namespaces(args.source_jdbc_url, args.jdbc_catalog)


def _print(line: str) -> None:
    print(line, flush=True)


def _stop_on_sigterm() -> None:
    """SIGTERM (Kubernetes, the local stack) unwinds like Ctrl-C, so Spark's JVM is stopped too."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _metrics(args: argparse.Namespace) -> PipelineMetrics:
    metrics = PipelineMetrics("batch")
    if args.pipeline_metrics_port:
        metrics.serve(args.pipeline_metrics_port)
    return metrics


def _push(metrics: PipelineMetrics, url: str) -> None:
    """Push the run's metrics; a Pushgateway that cannot be reached is reported, not fatal."""
    if not url:
        return
    try:
        metrics.push(url)
    except OSError as err:
        print(f"batch pipeline: metrics not pushed to {url}: {err}", file=sys.stderr)


def _watch(args: argparse.Namespace) -> int:
    spark = build_session(session_config(args), "batch-feature-pipeline")
    metrics = _metrics(args)
    try:
        watch(
            spark,
            lambda: _batch_features(args),
            lambda now: _config(args, now),
            every=args.every,
            progress=_print,
            metrics=metrics,
        )
    except KeyboardInterrupt:
        return 0
    finally:
        spark.stop()
    return 0


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    environ = local_environment(os.environ) | os.environ if env is None else env
    args = parser(environ).parse_args(argv)
    tracing = configure_tracing(TracingSettings.from_environ(environ, "featurestore-batch-pipeline"), make_global=True)
    try:
        return _main(args)
    finally:
        if tracing is not None:
            tracing.shutdown()  # exports the run's trace


def _main(args: argparse.Namespace) -> int:
    _stop_on_sigterm()
    if args.every:
        return _watch(args)
    as_of: datetime = args.as_of or datetime.now(UTC)
    try:
        features = _batch_features(args)
    except grpc.RpcError as err:
        print(f"batch pipeline: cannot read the registry at {args.registry}: {err.details()}", file=sys.stderr)
        return 2
    except PlanError as err:
        print(f"batch pipeline: {err}", file=sys.stderr)
        return 2
    if not features:
        print(f"batch pipeline: no batch features of {', '.join(args.feature_types)} in the registry", file=sys.stderr)
        return 2
    print(f"batch pipeline: {len(features)} features as of {as_of.isoformat()}, lookback {args.lookback_days} days")
    spark = build_session(session_config(args), "batch-feature-pipeline")
    metrics = _metrics(args)
    try:
        report = run(spark, features, _config(args, as_of), progress=_print, metrics=metrics)
    except KeyboardInterrupt:
        print("batch pipeline: stopped", file=sys.stderr)
        return 130
    finally:
        spark.stop()
    print(report.summary(), flush=True)
    _push(metrics, args.metrics_push_url)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())

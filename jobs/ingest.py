"""Bulk ingest of precomputed features: a table's rows into the history and the online store.

    featurestore-ingest --entity-type customer --parquet exports/customer_features.parquet \\
        --entity-column customer_id --event-time-column computed_at

The table (a Parquet file or folder, or with --table a Spark catalog table such as
`postgres.public.customer_features` through --source-jdbc-url) holds an entity column,
an event-time column and feature columns named after registered features of the entity
type. Every row goes to the history, and each entity's newest value of each feature to
the online store, through the batch pipeline's sink: the bytes WriteFeatures would store
for the same rows. Nothing is written when a column or a row is refused. Exit status: 0
written; 1 refused or failed (the reason is printed); 2 the run could not start. Flags
as the batch pipeline's (FEATURESTORE_<FLAG> variables, then the local stack).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")  # before gRPC initializes: see jobs/__init__.py

import grpc
from py4j.protocol import Py4JError
from pyspark.errors import PySparkException

from featurestore.registry.v1 import feature_pb2 as pb
from jobs._ingest import IngestConfig, IngestError, bulk_ingest, read_source
from jobs._run import worker_error
from jobs._session import build_session
from jobs.batch_pipeline import add_spark_arguments, load_features, session_config, source_namespaces
from server import add_arguments, local_environment


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The command line; flags not given come from `env` (FEATURESTORE_<FLAG>), then defaults."""
    p = argparse.ArgumentParser(prog="featurestore-ingest", description=__doc__.split("\n\n")[0])
    p.add_argument("--entity-type", required=True, help="the entity type of the rows: customer")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--parquet", help="a Parquet file or folder")
    source.add_argument("--table", help="a Spark catalog table (postgres.<schema>.<table> with --source-jdbc-url)")
    p.add_argument("--entity-column", help="the entity id column (default: <entity_type>_id)")
    p.add_argument("--event-time-column", default="event_time", help="the event-time column (default: event_time)")
    p.add_argument("--features", type=_csv, default=[], help="feature columns (default: every other column)")
    add_spark_arguments(p, env)
    add_arguments(p, ["max_clock_skew", "min_event_time"], env)
    return p


def _config(args: argparse.Namespace) -> IngestConfig:
    floor = datetime.fromisoformat(args.min_event_time.replace("Z", "+00:00"))
    return IngestConfig(
        entity_type=args.entity_type,
        entity_column=args.entity_column or f"{args.entity_type}_id",
        event_time_column=args.event_time_column,
        redis_url=args.redis_url,
        redis_cluster=args.redis_cluster,
        postgres_dsn=args.postgres_dsn,
        features=tuple(args.features),
        online_ttl=args.online_ttl,
        max_clock_skew=args.max_clock_skew,
        min_event_time=floor if floor.tzinfo else floor.replace(tzinfo=UTC),
    )


def registered_features(args: argparse.Namespace) -> dict[str, pb.Feature]:
    """The entity type's registered features, read as the pipelines read them (token, TLS with a CA file)."""
    features = load_features(args.registry, [args.entity_type], args.registry_token, args.registry_ca_file)
    return {f.name: f for f in features}


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    environ = local_environment(os.environ) | os.environ if env is None else env
    args = parser(environ).parse_args(argv)
    try:
        config = _config(args)
        registered = registered_features(args)
    except ValueError as err:
        print(f"featurestore-ingest: {err}", file=sys.stderr)
        return 2
    except grpc.RpcError as err:
        print(f"featurestore-ingest: cannot read the registry at {args.registry}: {err.details()}", file=sys.stderr)
        return 2
    spark = build_session(session_config(args), "featurestore-ingest")
    try:
        source = read_source(
            spark,
            parquet=args.parquet or "",
            table=args.table or "",
            namespaces=source_namespaces(args),
            store_dsn=args.postgres_dsn,
        )
        report = bulk_ingest(source, config, registered)
    except IngestError as err:
        print(f"featurestore-ingest: {err}", file=sys.stderr)
        return 1
    except (PySparkException, Py4JError) as err:
        print(f"featurestore-ingest: failed: {worker_error(err)}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    print(f"featurestore-ingest ok: {report.rows} rows -> {report.values} values written", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

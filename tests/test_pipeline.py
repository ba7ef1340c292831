"""The batch pipeline end to end: Spark over the demo tables into real PostgreSQL and Valkey.

Every computed value is compared with the same aggregate computed by plain SQL
in PostgreSQL over the same rows.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from google.protobuf import json_format
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from pyspark.sql import SparkSession

from devstack import DEMO_FEATURES, free_port, start_pushgateway
from featurestore import FeatureStoreClient, python_value
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2 as vpb
from jobs import PipelineMetrics, RunConfig, RunReport, register_warehouse, run
from jobs.demo_data import DemoSize, write_demo_tables
from tests._helpers import Processes, run_sql
from tests._seed import registry_curls

pytestmark = pytest.mark.usefixtures("empty_registry", "empty_online", "empty_history")
AS_OF = datetime(2024, 6, 1, 12, tzinfo=UTC)
LOOKBACK = timedelta(days=45)
SIZE = DemoSize(customers=300, purchases=6000, products=40, days=90, seed=7)
ROOT = Path(__file__).resolve().parent.parent
# The seed's four RFM features, as plain SQL over the lookback window before $1.
EXPECTED_SQL = """
SELECT customer_id,
  coalesce(sum(purchase_amount) FILTER (WHERE purchase_date >= $1::timestamptz - interval '30 days'), 0)
    AS customer_total_purchases_30d,
  count(purchase_id) FILTER (WHERE purchase_date >= $1::timestamptz - interval '30 days')
    AS customer_purchase_frequency_30d,
  floor((extract(epoch FROM $1::timestamptz) - extract(epoch FROM max(purchase_date))) / 86400)::int8
    AS customer_days_since_last_purchase,
  avg(purchase_amount) AS customer_average_purchase_amount
FROM customer_purchases WHERE purchase_date >= $1::timestamptz - $2::interval AND purchase_date < $1
GROUP BY customer_id
"""
RFM = [
    "customer_total_purchases_30d",
    "customer_purchase_frequency_30d",
    "customer_days_since_last_purchase",
    "customer_average_purchase_amount",
]


@pytest.fixture
def empty_history(postgres_dsn: str) -> None:
    run_sql(postgres_dsn, "DELETE FROM feature_history; SELECT 1")


async def _copy_purchases(dsn: str, rows: list[tuple[Any, ...]]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS customer_purchases; CREATE TABLE customer_purchases (purchase_id int8, "
            "customer_id text, product_id text, purchase_amount float8, purchase_date timestamptz)"
        )
        await conn.copy_records_to_table("customer_purchases", records=rows)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def tables(spark: SparkSession, postgres_sources: str, warehouse: Path, postgres_dsn: str, server: Any) -> None:
    """The demo tables in the Parquet warehouse and, the same rows, in PostgreSQL: in the feature store's
    database for the tests' reference SQL, and in the `sources` database for the JDBC source."""
    write_demo_tables(spark, warehouse, SIZE, AS_OF + timedelta(days=10))
    register_warehouse(spark, warehouse)
    spark.catalog.refreshTable("customer_purchases")
    rows = [tuple(r) for r in spark.table("customer_purchases").collect()]
    asyncio.run(_copy_purchases(postgres_dsn, rows))
    asyncio.run(_copy_purchases(postgres_sources, rows))


def seed_feature() -> pb.Feature:
    """customer_total_purchases_30d exactly as the seed's curl creates it."""
    return json_format.ParseDict(registry_curls()[0].body(), pb.Feature())


def average_feature() -> pb.Feature:
    """The seed's "Adding a New Feature" example, with the demo's entity column."""
    return pb.Feature(
        name="customer_average_purchase_amount",
        entity_type="customer",
        value_type=pb.FLOAT,
        source=pb.BATCH,
        category=pb.DERIVED,
        frequency=pb.DAILY,
        source_config=pb.SourceConfig(table="customer_purchases"),
        transformations=[pb.Transformation(type="aggregation", function="avg", column="purchase_amount")],
    )


def create(client: FeatureStoreClient, *features: pb.Feature) -> list[pb.Feature]:
    return [client.registry.CreateFeature(rs.CreateFeatureRequest(feature=f)) for f in features]


@pytest.fixture
def rfm(client: FeatureStoreClient, tables: None) -> list[pb.Feature]:
    return create(client, seed_feature(), average_feature(), *DEMO_FEATURES)


def config(redis_url: str, postgres_dsn: str, as_of: datetime = AS_OF, **kw: Any) -> RunConfig:
    return RunConfig(as_of=as_of, lookback=LOOKBACK, redis_url=redis_url, redis_cluster=False,
                     postgres_dsn=postgres_dsn, **kw)  # fmt: skip


def expected(postgres_dsn: str, as_of: datetime) -> dict[str, dict[str, Any]]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            return list(await conn.fetch(EXPECTED_SQL, as_of, LOOKBACK))
        finally:
            await conn.close()

    return {r["customer_id"]: {name: r[name] for name in RFM} for r in asyncio.run(go())}


def served(client: FeatureStoreClient, entity_ids: list[str], names: list[str]) -> dict[str, dict[str, Any]]:
    """Each entity's stored values as Python values, through BatchGetFeatures.

    Values computed as of 2024 are served as EXPIRED (older than twice a day), with their value.
    """
    request = fs.BatchGetFeaturesRequest(entity_type="customer", entity_ids=entity_ids, feature_names=names)
    out: dict[str, dict[str, Any]] = {}
    for entity in client.store.BatchGetFeatures(request).entities:
        values = {f.name: python_value(f.value) for f in entity.features if f.status != fs.NOT_FOUND}
        if values:
            out[entity.entity_id] = values
    return out


def assert_values_equal(got: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]]) -> None:
    assert got.keys() == want.keys()
    for entity, values in want.items():
        for name, value in values.items():
            assert got[entity].get(name) == pytest.approx(value, rel=1e-12), (entity, name)


def history_count(postgres_dsn: str, as_of: datetime | None = None) -> int:
    where = f"WHERE event_time = '{as_of.isoformat()}'" if as_of else ""
    return int(run_sql(postgres_dsn, f"SELECT count(*) AS n FROM feature_history {where}")[0]["n"])


def all_customers() -> list[str]:
    return [f"customer{i}" for i in range(SIZE.customers)]


def test_values_equal_the_same_aggregates_in_sql(
    spark: SparkSession, client: FeatureStoreClient, rfm: list[pb.Feature], redis_url: str, postgres_dsn: str
) -> None:
    report = run(spark, rfm, config(redis_url, postgres_dsn), progress=lambda _: None)
    assert report.failed == {}
    assert sorted(report.features) == sorted([*RFM, "product_price", "product_category"])
    want = expected(postgres_dsn, AS_OF)
    assert len(want) > 250  # nearly every customer bought something in the window
    assert_values_equal(served(client, all_customers(), RFM), want)
    customer_values = sum(len(v) for v in want.values())
    assert history_count(postgres_dsn, AS_OF) == report.values >= customer_values
    window = f"'{(AS_OF - LOOKBACK).isoformat()}' AND '{AS_OF.isoformat()}'"
    purchases = run_sql(
        postgres_dsn, f"SELECT count(*) AS n FROM customer_purchases WHERE purchase_date BETWEEN {window}"
    )
    products = spark.table("products").where(f"updated_at BETWEEN {window}").count()
    assert report.rows == purchases[0]["n"] + products


def test_history_and_online_hold_the_same_values(
    spark: SparkSession, client: FeatureStoreClient, rfm: list[pb.Feature], redis_url: str, postgres_dsn: str
) -> None:
    run(spark, rfm, config(redis_url, postgres_dsn), progress=lambda _: None)
    for entity in ("customer123", "customer7"):
        request = fs.GetHistoricalFeaturesRequest(
            entity_type="customer", entity_id=entity, feature_names=RFM, limit=100
        )
        request.start_time.FromDatetime(AS_OF - timedelta(days=1))
        request.end_time.FromDatetime(AS_OF + timedelta(days=1))
        past = {v.name: v for v in client.store.GetHistoricalFeatures(request).values}
        now = client.store.GetFeatures(
            fs.GetFeaturesRequest(entity_type="customer", entity_id=entity, feature_names=RFM)
        )
        assert past
        assert {f.name: f.value for f in now.features if f.name in past} == {n: v.value for n, v in past.items()}


def test_backfill_uses_only_data_before_its_as_of_time_and_never_replaces_newer_values(
    spark: SparkSession, client: FeatureStoreClient, rfm: list[pb.Feature], redis_url: str, postgres_dsn: str
) -> None:
    earlier = AS_OF - timedelta(days=20)
    run(spark, rfm, config(redis_url, postgres_dsn), progress=lambda _: None)
    report = run(spark, rfm, config(redis_url, postgres_dsn, as_of=earlier), progress=lambda _: None)
    assert report.failed == {}
    assert report.values > 0
    history: dict[str, dict[str, Any]] = {}
    rows = run_sql(
        postgres_dsn,
        f"SELECT entity_id, feature_name, value FROM feature_history WHERE event_time = '{earlier.isoformat()}'",
    )
    for r in rows:
        value = python_value(vpb.Value.FromString(r["value"]))
        history.setdefault(r["entity_id"], {})[r["feature_name"]] = value
    customers = {
        e: {n: v for n, v in values.items() if n in RFM} for e, values in history.items() if e.startswith("customer")
    }
    assert_values_equal(customers, expected(postgres_dsn, earlier))
    assert_values_equal(served(client, all_customers(), RFM), expected(postgres_dsn, AS_OF))


def test_a_rerun_writes_no_duplicates(
    spark: SparkSession, client: FeatureStoreClient, rfm: list[pb.Feature], redis_url: str, postgres_dsn: str
) -> None:
    first = run(spark, rfm, config(redis_url, postgres_dsn), progress=lambda _: None)
    before = history_count(postgres_dsn)
    second = run(spark, rfm, config(redis_url, postgres_dsn), progress=lambda _: None)
    assert (second.values, history_count(postgres_dsn)) == (first.values, before)
    assert_values_equal(served(client, all_customers(), RFM), expected(postgres_dsn, AS_OF))


def bad(
    name: str,
    column: str = "purchase_amount",
    function: str = "sum",
    filter_: str = "",
    table: str = "customer_purchases",
) -> pb.Feature:
    return pb.Feature(
        name=name,
        entity_type="customer",
        value_type=pb.FLOAT,
        source=pb.BATCH,
        source_config=pb.SourceConfig(table=table, filter=filter_),
        transformations=[pb.Transformation(type="aggregation", function=function, column=column)],
    )


def test_a_bad_definition_fails_alone_with_a_clear_message(
    spark: SparkSession, client: FeatureStoreClient, tables: None, redis_url: str, postgres_dsn: str
) -> None:
    registered = create(
        client,
        seed_feature(),
        bad("bad_column", column="purchase_amont"),
        bad("bad_table", table="no_such_table"),
    )  # fmt: skip
    # Stored before the registry checked definitions, or written to its database directly:
    # the pipeline checks them again.
    unchecked = [bad("bad_filter", filter_="purchase_date >= NOW() -"), bad("bad_function", function="median")]
    lines: list[str] = []
    report: RunReport = run(spark, registered + unchecked, config(redis_url, postgres_dsn), progress=lines.append)
    assert report.features == ["customer_total_purchases_30d"]
    assert sorted(report.failed) == ["bad_column", "bad_filter", "bad_function", "bad_table"]
    assert "purchase_amont" in report.failed["bad_column"]
    assert report.failed["bad_filter"].startswith("source_config.filter: is not a Spark SQL expression")
    assert "unknown aggregation function 'median'" in report.failed["bad_function"]
    assert "no_such_table" in report.failed["bad_table"]
    failures = [line for line in lines if line.startswith("FAILED")]
    assert len(failures) == 4
    assert all("\n" not in line and len(line) < 600 for line in failures), failures
    want = {
        e: {"customer_total_purchases_30d": v["customer_total_purchases_30d"]}
        for e, v in expected(postgres_dsn, AS_OF).items()
    }
    assert_values_equal(served(client, all_customers(), ["customer_total_purchases_30d"]), want)


def test_definitions_that_would_run_code_are_refused_and_the_others_computed(
    spark: SparkSession, client: FeatureStoreClient, tables: None, redis_url: str, postgres_dsn: str
) -> None:
    reflect = "reflect('java.lang.System', 'getProperty', 'user.dir')"
    hostile = [
        bad("in_column", column=f"length({reflect})", function="max"),
        bad("in_filter", filter_=f"{reflect} IS NOT NULL"),
        bad("other_catalog", table="postgres.public.feature_history"),
        bad("warehouse_other_schema", table="other.customer_purchases"),
    ]
    post = bad("in_expression")
    post.transformations.append(pb.Transformation(type="expression", expression=f"value + length({reflect})"))
    features = [*create(client, seed_feature()), *hostile, post]
    report = run(spark, features, config(redis_url, postgres_dsn), progress=lambda _: None)
    assert report.features == ["customer_total_purchases_30d"]
    for name in ("in_column", "in_filter", "in_expression"):
        assert "uses function reflect" in report.failed[name], report.failed[name]
    assert "not a source namespace" in report.failed["other_catalog"]
    assert "not a source namespace" in report.failed["warehouse_other_schema"]
    written = "SELECT count(*) AS n FROM feature_history WHERE feature_name <> 'customer_total_purchases_30d'"
    assert run_sql(postgres_dsn, written)[0]["n"] == 0


def test_the_feature_stores_own_database_is_never_a_source(
    spark: SparkSession, client: FeatureStoreClient, tables: None, redis_url: str, postgres: Any, postgres_dsn: str
) -> None:
    prefix = "spark.sql.catalog.store"
    spark.conf.set(prefix, "org.apache.spark.sql.execution.datasources.v2.jdbc.JDBCTableCatalog")
    spark.conf.set(f"{prefix}.url", f"jdbc:postgresql://localhost:{postgres.port}/postgres?user=postgres")
    spark.conf.set(f"{prefix}.driver", "org.postgresql.Driver")
    own = bad("own", table="store.public.customer_purchases", function="count", column="purchase_id")
    namespaces = ("spark_catalog.default", "store")
    report = run(spark, [own], config(redis_url, postgres_dsn, source_namespaces=namespaces), progress=lambda _: None)
    assert "the feature store's own database" in report.failed["own"]


def test_a_postgresql_source_over_jdbc_gives_the_same_values(
    spark: SparkSession, client: FeatureStoreClient, tables: None, redis_url: str, postgres_dsn: str
) -> None:
    features = []
    for feature in (seed_feature(), average_feature()):
        feature.source_config.table = "postgres.public.customer_purchases"
        feature.source_config.entity_column = "customer_id"
        features.append(feature)
    sources = ("spark_catalog.default", "postgres")
    report = run(
        spark,
        create(client, *features),
        config(redis_url, postgres_dsn, source_namespaces=sources),
        progress=lambda _: None,
    )
    assert report.failed == {}
    names = [f.name for f in features]
    want = {e: {n: v[n] for n in names} for e, v in expected(postgres_dsn, AS_OF).items()}
    assert_values_equal(served(client, all_customers(), names), want)


@pytest.fixture
def cli_env(grpc_target: str, redis_url: str, postgres_dsn: str, warehouse: Path) -> dict[str, str]:
    return os.environ | {
        "FEATURESTORE_REGISTRY": grpc_target,
        "FEATURESTORE_REDIS_URL": redis_url,
        "FEATURESTORE_POSTGRES_DSN": postgres_dsn,
        "FEATURESTORE_WAREHOUSE": str(warehouse),
    }


def pipeline(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "batch_pipeline.py", *args]
    return subprocess.run(command, cwd=ROOT / "jobs", env=env, capture_output=True, text=True, timeout=180)


def test_the_command_line_as_the_seed_runs_it(
    client: FeatureStoreClient, rfm: list[pb.Feature], cli_env: dict[str, str], postgres_dsn: str
) -> None:
    as_of = f"--as-of={AS_OF.isoformat()}"
    dry = pipeline(cli_env, "--feature-types=customer,product", "--lookback-days=45", as_of, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "SELECT CAST(`customer_id` AS STRING) AS entity_id," in dry.stdout
    assert "THEN (purchase_amount) END), 0) AS double) AS `customer_total_purchases_30d`" in dry.stdout
    assert "GROUP BY `customer_id`" in dry.stdout
    assert "Aggregate" in dry.stdout
    assert history_count(postgres_dsn) == 0
    done = pipeline(cli_env, "--feature-types=customer,product", "--lookback-days=45", as_of)
    assert done.returncode == 0, done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith("batch pipeline ok: 6 features x ")
    assert "values written" in summary
    assert_values_equal(served(client, all_customers(), RFM), expected(postgres_dsn, AS_OF))


def test_the_seeds_command_verbatim_finds_the_local_stack_through_its_settings_file(
    rfm: list[pb.Feature], cli_env: dict[str, str], tmp_path: Path
) -> None:
    """`make up` writes the stack's addresses to a file every tool reads below the environment."""
    local = tmp_path / "local.env"
    local.write_text("".join(f"{k}={v}\n" for k, v in cli_env.items() if k.startswith("FEATURESTORE_")))
    bare = {k: v for k, v in os.environ.items() if not k.startswith("FEATURESTORE_")}
    done = pipeline(
        bare | {"FEATURESTORE_LOCAL_ENV": str(local)}, "--feature-types=customer,product", "--lookback-days=30"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("batch pipeline ok: 6 features x ")
    nowhere = {"FEATURESTORE_LOCAL_ENV": str(tmp_path / "none.env"), "FEATURESTORE_REGISTRY": "127.0.0.1:1"}
    broken = pipeline(bare | nowhere, "--feature-types=customer", "--dry-run")
    assert broken.returncode == 2
    assert "cannot read the registry at 127.0.0.1:1" in broken.stderr


def test_the_command_line_refuses_bad_options_before_starting_spark(
    rfm: list[pb.Feature], cli_env: dict[str, str]
) -> None:
    unknown = pipeline(cli_env, "--feature-types=customer", "--features=customer_lifetime_value")
    assert (unknown.returncode, unknown.stderr.strip()) == (
        2,
        "batch pipeline: not batch features of customer: customer_lifetime_value",
    )
    bad_date = pipeline(cli_env, "--feature-types=customer", "--as-of=last tuesday")
    assert bad_date.returncode == 2
    assert "not an ISO 8601 date or time: 'last tuesday'" in bad_date.stderr
    nothing = pipeline(cli_env, "--feature-types=vendor")
    assert (nothing.returncode, nothing.stderr.strip()) == (
        2,
        "batch pipeline: no batch features of vendor in the registry",
    )


def test_an_unreachable_online_store_fails_the_run_with_the_reason(
    spark: SparkSession, client: FeatureStoreClient, tables: None, postgres_dsn: str
) -> None:
    from devstack import free_port

    features = create(client, seed_feature())
    dead = f"redis://127.0.0.1:{free_port()}/0"
    report = run(spark, features, config(dead, postgres_dsn), progress=lambda _: None)
    assert report.features == []
    assert report.failed["customer_total_purchases_30d"].startswith("writing failed: ")
    assert "redis is unavailable (cannot connect)" in report.failed["customer_total_purchases_30d"]


def test_the_event_time_is_the_as_of_time_to_the_microsecond(
    spark: SparkSession, client: FeatureStoreClient, tables: None, redis_url: str, postgres_dsn: str
) -> None:
    as_of = datetime(2024, 6, 1, 12, 0, 1, 840026, tzinfo=UTC)  # not exact as a float of seconds
    features = create(client, seed_feature())
    assert run(spark, features, config(redis_url, postgres_dsn, as_of=as_of), progress=lambda _: None).failed == {}
    value = client.store.GetFeatures(
        fs.GetFeaturesRequest(
            entity_type="customer", entity_id="customer123", feature_names=["customer_total_purchases_30d"]
        )
    ).features[0]
    assert value.event_time.ToDatetime(tzinfo=UTC) == as_of
    assert history_count(postgres_dsn, as_of) > 250


def test_kept_running_it_computes_a_new_feature_within_seconds_and_stops_on_sigterm(
    spark: SparkSession, client: FeatureStoreClient, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """What `make up` relies on: `--every` reruns a feature as soon as it is created."""
    import signal
    import time

    recent = DemoSize(customers=300, purchases=3000, products=10, days=30, seed=3)
    write_demo_tables(spark, tmp_path, recent, datetime.now(UTC))  # `--every` computes as of now
    cli_env = cli_env | {"FEATURESTORE_WAREHOUSE": str(tmp_path)}
    create(client, average_feature())
    command = [sys.executable, "batch_pipeline.py", "--feature-types=customer", "--lookback-days=45", "--every=3600"]
    proc = subprocess.Popen(command, cwd=ROOT / "jobs", env=cli_env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = iter(proc.stdout.readline, "")
        first = next(line for line in lines if line.startswith("batch pipeline "))
        assert first.startswith("batch pipeline ok: 1 features x ")
        created = time.monotonic()
        create(client, seed_feature())
        second = next(line for line in lines if line.startswith("batch pipeline "))
        assert second.startswith("batch pipeline ok: 1 features x ")  # only the new one
        assert time.monotonic() - created < 60  # seconds on a loaded machine, not the hour of --every
        assert served(client, ["customer123"], ["customer_total_purchases_30d"])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_into_a_redis_cluster_the_same_bytes_as_into_one_server(
    spark: SparkSession,
    client: FeatureStoreClient,
    rfm: list[pb.Feature],
    redis_url: str,
    postgres_dsn: str,
    tmp_path: Path,
) -> None:
    import redis
    from redis.cluster import RedisCluster

    from devstack import start_valkey_cluster

    nodes = start_valkey_cluster(tmp_path / "cluster")
    try:
        seed_node = f"redis://127.0.0.1:{nodes[0].port}/0"
        base = config(redis_url, postgres_dsn)
        assert run(spark, rfm, base, progress=lambda _: None).failed == {}
        clustered = RunConfig(AS_OF, LOOKBACK, seed_node, True, postgres_dsn)
        assert run(spark, rfm, clustered, progress=lambda _: None).failed == {}
        keys = [f"f:customer:{c}".encode() for c in all_customers()]
        with redis.Redis.from_url(redis_url) as one, RedisCluster.from_url(seed_node) as many:
            assert [one.hgetall(k) for k in keys] == [many.hgetall(k) for k in keys]
            assert sum(len(one.hgetall(k)) for k in keys) > 1000
            assert all(
                int(node.dbsize()) > 50 for node in many.get_primaries() for node in [many.get_redis_connection(node)]
            )
    finally:
        for node in nodes:
            node.stop()


def test_progress_names_each_source_and_the_running_stages(
    spark: SparkSession, client: FeatureStoreClient, rfm: list[pb.Feature], redis_url: str, postgres_dsn: str
) -> None:
    import re

    lines: list[str] = []
    run(spark, rfm, config(redis_url, postgres_dsn, progress_every=0.02), progress=lines.append)
    assert lines[0].startswith("[1/2] customer_purchases: customer_total_purchases_30d, ")
    assert any(re.fullmatch(r"\[\d/2\] \w+: running, stage \d+: \d+/\d+ tasks(, stage .*)?", line) for line in lines)
    assert re.fullmatch(r"\[2/2\] products: \d+ values for \d+ entities from \d+ rows", lines[-1])


def test_a_run_records_freshness_and_pushes_its_metrics(
    spark: SparkSession,
    rfm: list[pb.Feature],
    redis_url: str,
    postgres_dsn: str,
    processes: Processes,
    tmp_path: Path,
) -> None:
    gateway = processes.add(start_pushgateway(tmp_path, free_port()))
    url = f"127.0.0.1:{gateway.port}"
    metrics = PipelineMetrics("batch")
    run_sql(postgres_dsn, "DELETE FROM feature_freshness")  # earlier runs in this module wrote newer event times
    report = run(spark, rfm, config(redis_url, postgres_dsn), progress=lambda _: None, metrics=metrics)
    assert report.failed == {}
    metrics.push(url)
    fresh = run_sql(postgres_dsn, "SELECT feature_name, newest_event_time, writer FROM feature_freshness")
    written = {r["feature_name"]: r for r in fresh if r["feature_name"] in report.features}
    assert set(written) == set(report.features)
    assert {(r["newest_event_time"], r["writer"]) for r in written.values()} == {(AS_OF, "batch_pipeline")}

    pushed = _pushed(url)
    assert pushed["featurestore_pipeline_values_written"] == report.values
    assert pushed["featurestore_pipeline_rows_read"] == report.rows
    assert pushed["featurestore_pipeline_failed_features"] == 0
    assert pushed["featurestore_pipeline_run_success"] == 1
    succeeded = pushed["featurestore_pipeline_last_success_timestamp_seconds"]
    assert succeeded >= pushed["featurestore_pipeline_run_start_timestamp_seconds"]

    # a failed run is pushed too, and the last success stays the earlier one
    metrics.started()
    metrics.finished(rows_read=0, values_written=0, failed_features=2)
    metrics.push(url)
    pushed = _pushed(url)
    assert (pushed["featurestore_pipeline_run_success"], pushed["featurestore_pipeline_failed_features"]) == (0, 2)
    assert pushed["featurestore_pipeline_last_success_timestamp_seconds"] == succeeded


def _pushed(url: str) -> dict[str, float]:
    """The batch pipeline's samples on the Pushgateway (job featurestore_pipeline, pipeline batch)."""
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("job") == "featurestore_pipeline" and s.labels.get("pipeline") == "batch"
    }


def test_a_run_is_one_trace_with_a_span_per_source(
    spark: SparkSession, rfm: list[pb.Feature], redis_url: str, postgres_dsn: str
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    report = run(spark, rfm, config(redis_url, postgres_dsn), lambda _: None, tracer=provider.get_tracer("test"))
    spans = exporter.get_finished_spans()
    [root] = [s for s in spans if s.name == "batch pipeline run"]
    sources = {s.name: s for s in spans if s.name.startswith("source ")}
    assert set(sources) == {"source customer_purchases", "source products"}
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in sources.values())
    written = [s.attributes["values_written"] for s in sources.values() if s.attributes]
    assert sum(int(str(n)) for n in written) == report.values

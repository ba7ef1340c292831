"""Columns of served values as pandas DataFrames or pyarrow Tables, typed by value type.

pandas (the `pandas` extra) and pyarrow (the `parquet` extra) are imported only here and only
when a frame or table is asked for. Dtypes, per value type:

| value type | pandas | pyarrow |
|---|---|---|
| FLOAT | float64 (NaN when missing) | float64 (null when missing, NaN stays NaN) |
| INT64 | Int64 (nullable, exact to +-2**63) | int64 |
| STRING / BYTES | object (str / bytes, None) | string / binary |
| BOOL | boolean (nullable) | bool |
| TIMESTAMP | datetime64[ns, UTC] | timestamp[us, tz=UTC] |
| FLOAT_LIST, INT64_LIST, BOOL_LIST | object: numpy arrays of float64, int64, bool | list<...> |
| STRING_LIST | object: lists of str | list<string> |
| EMBEDDING | object: numpy float32 arrays | list<float> |

A column whose type is unknown (no value and no registry type) is all None (pandas object,
pyarrow null).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from featurestore._values import KIND_TYPES, STATUS_NAMES, TYPE_KINDS
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2

_NAT = -(2**63)


@dataclass
class Column:
    """One column: its name, value type name (None if unknown) and plain values (None = missing).

    TIMESTAMP values are integers of nanoseconds since the epoch; list values are lists.
    """

    name: str
    value_type: str | None
    values: list[Any]


def extract(values: Iterable[value_pb2.Value | None], value_type: str | None) -> list[Any]:
    """The plain values of a column of Values of one type (None where unset or of another kind)."""
    if value_type is None:
        return [None for _ in values]
    kind = TYPE_KINDS[value_type]
    if value_type == "TIMESTAMP":
        out: list[Any] = []
        for v in values:
            if v is None or v.WhichOneof("kind") != kind:
                out.append(None)
            else:
                ts = v.timestamp_value
                out.append(ts.seconds * 1_000_000_000 + ts.nanos)
        return out
    if value_type.endswith("_LIST") or value_type == "EMBEDDING":
        return [None if v is None or v.WhichOneof("kind") != kind else list(getattr(v, kind).values) for v in values]
    return [None if v is None or v.WhichOneof("kind") != kind else getattr(v, kind) for v in values]


def feature_columns(
    names: Sequence[str],
    rows: Sequence[Sequence[fs.FeatureValue]],
    types: dict[str, str | None],
    *,
    include_status: bool = False,
    include_event_time: bool = False,
) -> list[Column]:
    """One column per feature (position j of every row), plus `<name>__status` / `<name>__event_time`."""
    columns = []
    for j, name in enumerate(names):
        cells = [row[j] for row in rows]
        columns.append(Column(name, types.get(name), extract((c.value for c in cells), types.get(name))))
        if include_status:
            columns.append(Column(f"{name}__status", "STRING", [STATUS_NAMES.get(c.status) for c in cells]))
        if include_event_time:
            times = [
                c.event_time.seconds * 1_000_000_000 + c.event_time.nanos if c.HasField("event_time") else None
                for c in cells
            ]
            columns.append(Column(f"{name}__event_time", "TIMESTAMP", times))
    return columns


def observed_type(values: Iterable[value_pb2.Value]) -> str | None:
    """The value type of the first set Value, None if none is set."""
    for v in values:
        kind = v.WhichOneof("kind")
        if kind is not None:
            return KIND_TYPES[kind]
    return None


def to_pandas(columns: Sequence[Column]) -> Any:
    """A pandas DataFrame of the columns, typed as the module says."""
    import pandas as pd

    return pd.DataFrame({c.name: _pandas_column(c) for c in columns}, copy=False)


def _pandas_column(column: Column) -> Any:
    import numpy as np
    import pandas as pd

    vt, vals = column.value_type, column.values
    n = len(vals)
    if vt == "FLOAT":
        return np.fromiter((np.nan if v is None else v for v in vals), dtype=np.float64, count=n)
    if vt == "INT64":
        mask = np.fromiter((v is None for v in vals), dtype=bool, count=n)
        data = np.fromiter((0 if v is None else v for v in vals), dtype=np.int64, count=n)
        return pd.arrays.IntegerArray(data, mask)
    if vt == "BOOL":
        mask = np.fromiter((v is None for v in vals), dtype=bool, count=n)
        data = np.fromiter((bool(v) for v in vals), dtype=bool, count=n)
        return pd.arrays.BooleanArray(data, mask)
    if vt == "TIMESTAMP":
        ns = np.fromiter((_NAT if v is None else v for v in vals), dtype=np.int64, count=n)
        return pd.DatetimeIndex(ns.view("datetime64[ns]")).tz_localize("UTC")
    out = np.empty(n, dtype=object)
    element = {"FLOAT_LIST": np.float64, "INT64_LIST": np.int64, "BOOL_LIST": bool, "EMBEDDING": np.float32}.get(
        vt or ""
    )
    if element is not None:
        for i, v in enumerate(vals):
            out[i] = None if v is None else np.asarray(v, dtype=element)
    else:
        for i, v in enumerate(vals):
            out[i] = v
    return out


def arrow_type(value_type: str | None) -> Any:
    """The pyarrow type of a value type."""
    import pyarrow as pa

    scalar = {
        "FLOAT": pa.float64(),
        "INT64": pa.int64(),
        "STRING": pa.string(),
        "BOOL": pa.bool_(),
        "BYTES": pa.binary(),
        "TIMESTAMP": pa.timestamp("us", tz="UTC"),
        "FLOAT_LIST": pa.list_(pa.float64()),
        "INT64_LIST": pa.list_(pa.int64()),
        "STRING_LIST": pa.list_(pa.string()),
        "BOOL_LIST": pa.list_(pa.bool_()),
        "EMBEDDING": pa.list_(pa.float32()),
    }
    return scalar.get(value_type or "", pa.null())


def to_arrow(columns: Sequence[Column]) -> Any:
    """A pyarrow Table of the columns, typed as the module says."""
    import pyarrow as pa

    arrays = []
    for c in columns:
        vals = c.values
        if c.value_type == "TIMESTAMP":
            vals = [None if v is None else v // 1000 for v in vals]
        arrays.append(pa.array(vals, type=arrow_type(c.value_type)))
    return pa.Table.from_arrays(arrays, names=[c.name for c in columns])


def arrow_schema(columns: Sequence[tuple[str, str | None]]) -> Any:
    """The pyarrow schema of (name, value type) columns."""
    import pyarrow as pa

    return pa.schema([(name, arrow_type(vt)) for name, vt in columns])

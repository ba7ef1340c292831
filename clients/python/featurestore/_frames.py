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
_HAS_VALUE = frozenset({fs.PRESENT, fs.EXPIRED})
# List types whose packed wire form is a plain little-endian array: element dtype, size.
_PACKED = {"FLOAT_LIST": ("<f8", 8), "EMBEDDING": ("<f4", 4), "BOOL_LIST": ("u1", 1)}


def _payload(message: Any) -> bytes:
    """The elements of a one-field list message (DoubleList, FloatVector, BoolList) as packed bytes."""
    blob: bytes = message.SerializeToString()
    if not blob:
        return b""
    i = 1  # the field's tag; then the payload's length as a varint
    while blob[i] & 0x80:
        i += 1
    return blob[i + 1 :]


def _list_values(containers: Iterable[Any], value_type: str) -> list[Any]:
    if value_type in _PACKED:
        return [None if x is None else _payload(x) for x in containers]
    return [None if x is None else list(x.values) for x in containers]


@dataclass
class Dense:
    """A column's values already in numpy arrays: `data` (one per row; for FLOAT_LIST, BOOL_LIST
    and EMBEDDING all rows' elements, row i's at `offsets[i]:offsets[i + 1]`) and `missing`
    (a bool per row). TIMESTAMP data are int64 nanoseconds since the epoch."""

    data: Any
    missing: Any
    offsets: Any = None


@dataclass
class Column:
    """One column: its name, value type name (None if unknown) and plain values (None = missing),
    or, when `dense` is set, its values in arrays (and `values` is unused).

    TIMESTAMP values are integers of nanoseconds since the epoch. FLOAT_LIST, BOOL_LIST and
    EMBEDDING values are their elements' little-endian bytes (as protobuf packs them), turned
    into arrays all at once; INT64_LIST and STRING_LIST values are lists.
    """

    name: str
    value_type: str | None
    values: list[Any]
    dense: Dense | None = None


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
        containers = [None if v is None or v.WhichOneof("kind") != kind else getattr(v, kind) for v in values]
        return _list_values(containers, value_type)
    return [None if v is None or v.WhichOneof("kind") != kind else getattr(v, kind) for v in values]


def feature_columns(
    names: Sequence[str],
    rows: Sequence[Sequence[fs.FeatureValue]],
    types: dict[str, str | None],
    *,
    include_status: bool = False,
    include_event_time: bool = False,
) -> list[Column]:
    """One column per feature (position j of every row), plus `<name>__status` / `<name>__event_time`.

    One pass over the rows, entity by entity (the cost is creating each value's wrapper
    object; indexing column by column would create them twice).
    """
    kinds = [TYPE_KINDS.get(types.get(name) or "", "-") for name in names]
    raw: list[list[Any]] = [[] for _ in names]
    appends = [r.append for r in raw]
    # A served value is set exactly when its status is PRESENT or EXPIRED, and is of its
    # feature's type: reading the status is cheaper than asking the Value which field is set.
    has_value = _HAS_VALUE
    for row in rows:
        for append, kind, fv in zip(appends, kinds, row, strict=True):
            append(getattr(fv.value, kind) if fv.status in has_value and kind != "-" else None)
    columns = []
    for j, name in enumerate(names):
        vt = types.get(name)
        values = raw[j]
        if vt == "TIMESTAMP":
            values = [None if t is None else t.seconds * 1_000_000_000 + t.nanos for t in values]
        elif vt is not None and (vt.endswith("_LIST") or vt == "EMBEDDING"):
            values = _list_values(values, vt)
        columns.append(Column(name, vt, values))
        if include_status:
            columns.append(Column(f"{name}__status", "STRING", [STATUS_NAMES.get(row[j].status) for row in rows]))
        if include_event_time:
            times = []
            for row in rows:
                fv = row[j]
                t = fv.event_time
                times.append(t.seconds * 1_000_000_000 + t.nanos if fv.HasField("event_time") else None)
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

    if column.dense is not None:
        return _pandas_dense(column.value_type, column.dense)
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
    if vt in _PACKED:
        flat, offsets = _unpack(vals, vt)
        if vt == "BOOL_LIST":
            flat = flat.astype(bool)
        for i, v in enumerate(vals):
            out[i] = None if v is None else flat[offsets[i] : offsets[i + 1]]
    elif vt == "INT64_LIST":
        for i, v in enumerate(vals):
            out[i] = None if v is None else np.asarray(v, dtype=np.int64)
    else:
        for i, v in enumerate(vals):
            out[i] = v
    return out


def _pandas_dense(value_type: str | None, dense: Dense) -> Any:
    import numpy as np
    import pandas as pd

    data, missing = dense.data, dense.missing
    if value_type == "FLOAT":
        out = np.array(data, dtype=np.float64)
        out[missing] = np.nan
        return out
    if value_type == "INT64":
        return pd.arrays.IntegerArray(np.asarray(data, dtype=np.int64), missing)
    if value_type == "BOOL":
        return pd.arrays.BooleanArray(np.asarray(data, dtype=bool), missing)
    if value_type == "TIMESTAMP":
        ns = np.array(data, dtype=np.int64)
        ns[missing] = _NAT
        return pd.DatetimeIndex(ns.view("datetime64[ns]")).tz_localize("UTC")
    n = len(missing)
    if n and not missing.any() and len(data) % n == 0 and (np.diff(dense.offsets) == len(data) // n).all():
        # Every row a list of the same length (embeddings): the rows of a matrix, iterated in C.
        return np.fromiter(data.reshape(n, len(data) // n), dtype=object, count=n)
    offsets = dense.offsets.tolist()
    out = np.empty(n, dtype=object)
    for i, gone in enumerate(missing.tolist()):
        out[i] = None if gone else data[offsets[i] : offsets[i + 1]]
    return out


def _arrow_dense(value_type: str | None, dense: Dense) -> Any:
    import pyarrow as pa

    mask = pa.array(dense.missing, type=pa.bool_())
    if dense.offsets is not None:
        element = arrow_type(value_type).value_type
        values = pa.array(dense.data, type=element)
        return pa.ListArray.from_arrays(pa.array(dense.offsets, type=pa.int32()), values, mask=mask)
    data = dense.data // 1000 if value_type == "TIMESTAMP" else dense.data
    return pa.array(data, type=arrow_type(value_type), mask=dense.missing)


def _unpack(payloads: Sequence[bytes | None], value_type: str) -> tuple[Any, Any]:
    """All rows' elements as one array, and each row's start offset (n + 1 of them)."""
    import numpy as np

    dtype, size = _PACKED[value_type]
    lengths = np.fromiter((0 if p is None else len(p) // size for p in payloads), dtype=np.int64, count=len(payloads))
    offsets = np.zeros(len(payloads) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.frombuffer(b"".join(p for p in payloads if p), dtype=dtype)
    return flat, offsets


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
        if c.dense is not None:
            arrays.append(_arrow_dense(c.value_type, c.dense))
            continue
        vals = c.values
        if c.value_type in _PACKED:
            flat, offsets = _unpack(vals, c.value_type)
            mask = pa.array([v is None for v in vals], type=pa.bool_())
            element = arrow_type(c.value_type).value_type
            values = pa.array(flat.astype(bool) if c.value_type == "BOOL_LIST" else flat, type=element)
            arrays.append(pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values, mask=mask))
            continue
        if c.value_type == "TIMESTAMP":
            vals = [None if v is None else v // 1000 for v in vals]
        arrays.append(pa.array(vals, type=arrow_type(c.value_type)))
    return pa.Table.from_arrays(arrays, names=[c.name for c in columns])


def arrow_schema(columns: Sequence[tuple[str, str | None]]) -> Any:
    """The pyarrow schema of (name, value type) columns."""
    import pyarrow as pa

    return pa.schema([(name, arrow_type(vt)) for name, vt in columns])

"""Typed values: protobuf `Value` <-> Python, by the feature's value type."""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from google.protobuf import timestamp_pb2

from featurestore.registry.v1 import feature_pb2
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2

# The ValueType name of each `Value.kind` and back.
KIND_TYPES: dict[str, str] = {
    "float_value": "FLOAT",
    "int64_value": "INT64",
    "string_value": "STRING",
    "bool_value": "BOOL",
    "bytes_value": "BYTES",
    "timestamp_value": "TIMESTAMP",
    "float_list_value": "FLOAT_LIST",
    "int64_list_value": "INT64_LIST",
    "string_list_value": "STRING_LIST",
    "bool_list_value": "BOOL_LIST",
    "embedding_value": "EMBEDDING",
}
TYPE_KINDS = {v: k for k, v in KIND_TYPES.items()}
STATUS_NAMES = {fs.PRESENT: "PRESENT", fs.NOT_FOUND: "NOT_FOUND", fs.EXPIRED: "EXPIRED"}


def python_value(value: value_pb2.Value) -> Any:
    """The Value as a plain Python object (None when unset).

    INT64 is an int (exact), TIMESTAMP an aware UTC datetime, lists and embeddings lists.
    """
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    raw = getattr(value, kind)
    if kind == "timestamp_value":
        return raw.ToDatetime(tzinfo=timezone.utc)
    if kind.endswith("_list_value") or kind == "embedding_value":
        return list(raw.values)
    return raw


def datetime_of(ts: timestamp_pb2.Timestamp) -> datetime:
    """An aware UTC datetime."""
    return ts.ToDatetime(tzinfo=timezone.utc)


def timestamp_of(when: Any) -> timestamp_pb2.Timestamp:
    """A Timestamp from a datetime (naive means UTC), a pandas Timestamp or an ISO 8601 string."""
    ts = timestamp_pb2.Timestamp()
    if isinstance(when, timestamp_pb2.Timestamp):
        ts.CopyFrom(when)
        return ts
    when = plain(when)
    if isinstance(when, str):
        when = datetime.fromisoformat(when.replace("Z", "+00:00"))
    if not isinstance(when, datetime):
        to_pydatetime = getattr(when, "to_pydatetime", None)  # numpy datetime64 through pandas
        if to_pydatetime is None:
            raise TypeError(f"expected a datetime, got {type(when).__name__}")
        when = to_pydatetime()
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    ts.FromDatetime(when)
    return ts


def is_missing(x: Any) -> bool:
    """None, NaN, pandas NA or NaT: no value to write."""
    if x is None:
        return True
    if isinstance(x, float):
        return math.isnan(x)
    if type(x).__name__ in {"NAType", "NaTType"}:
        return True
    try:
        return bool(x != x)  # numpy NaN scalars
    except (TypeError, ValueError):  # arrays
        return False


def plain(x: Any) -> Any:
    """A numpy scalar as the Python object it holds (np.bool_ -> bool, np.int64 -> int, ...)."""
    if type(x).__module__ != "numpy" or getattr(x, "ndim", None) != 0:
        return x
    if type(x).__name__ == "datetime64":
        return x.astype("datetime64[us]").item()  # nanoseconds would come back as an int
    return x.item()


def _elements(x: Any) -> list[Any]:
    tolist = getattr(x, "tolist", None)
    return list(tolist() if tolist is not None else x)


def to_value(value_type: str, x: Any) -> value_pb2.Value:
    """A Value of the given ValueType name (`"FLOAT"`, `"INT64"`, ...) from a Python object.

    Raises TypeError or ValueError for an object that is not of the type (a bool is not an
    int64, a float with a fraction is not an int64).
    """
    if isinstance(x, value_pb2.Value):
        return x
    x = plain(x)
    if value_type == "FLOAT":
        if isinstance(x, bool):
            raise TypeError("a bool is not a FLOAT")
        return value_pb2.Value(float_value=float(x))
    if value_type == "INT64":
        return value_pb2.Value(int64_value=_int(x))
    if value_type == "STRING":
        if not isinstance(x, str):
            raise TypeError(f"expected a str for STRING, got {type(x).__name__}")
        return value_pb2.Value(string_value=x)
    if value_type == "BOOL":
        if not isinstance(x, bool):
            raise TypeError(f"expected a bool for BOOL, got {type(x).__name__}")
        return value_pb2.Value(bool_value=bool(x))
    if value_type == "BYTES":
        return value_pb2.Value(bytes_value=bytes(x))
    if value_type == "TIMESTAMP":
        return value_pb2.Value(timestamp_value=timestamp_of(x))
    if value_type == "FLOAT_LIST":
        return value_pb2.Value(float_list_value=value_pb2.DoubleList(values=[float(v) for v in _elements(x)]))
    if value_type == "INT64_LIST":
        return value_pb2.Value(int64_list_value=value_pb2.Int64List(values=[_int(v) for v in _elements(x)]))
    if value_type == "STRING_LIST":
        return value_pb2.Value(string_list_value=value_pb2.StringList(values=[str(v) for v in _elements(x)]))
    if value_type == "BOOL_LIST":
        return value_pb2.Value(bool_list_value=value_pb2.BoolList(values=[bool(v) for v in _elements(x)]))
    if value_type == "EMBEDDING":
        return value_pb2.Value(embedding_value=value_pb2.FloatVector(values=[float(v) for v in _elements(x)]))
    raise ValueError(f"unknown value type {value_type!r}")


def _int(x: Any) -> int:
    x = plain(x)
    if isinstance(x, bool):
        raise TypeError("a bool is not an INT64")
    if isinstance(x, float):
        if not x.is_integer():
            raise ValueError(f"{x!r} is not an integer")
        return int(x)
    return operator.index(x)


# Python scalar types and their ValueType names, bool before int (a bool is an int).
_SCALAR_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "BOOL"),
    (int, "INT64"),
    (float, "FLOAT"),
    (str, "STRING"),
    (bytes, "BYTES"),
    (datetime, "TIMESTAMP"),
)


def infer_type(x: Any) -> str:
    """The ValueType name of a Python object (for extra columns, which have no declared type)."""
    if isinstance(x, value_pb2.Value):
        kind = x.WhichOneof("kind")
        if kind is None:
            raise ValueError("an empty Value has no type")
        return KIND_TYPES[kind]
    x = plain(x)
    for python_type, name in _SCALAR_TYPES:
        if isinstance(x, python_type):
            return name
    if isinstance(x, Iterable) or hasattr(x, "tolist"):
        elements = _elements(x)
        if elements:
            inner = infer_type(elements[0])
            if inner in {"FLOAT", "INT64", "STRING", "BOOL"}:
                return f"{inner}_LIST"
    raise TypeError(f"cannot tell the value type of {type(x).__name__}")


def value_type_name(value_type: int) -> str:
    """The name of a registry ValueType number."""
    return feature_pb2.ValueType.Name(value_type)  # type: ignore[arg-type]


@dataclass(frozen=True)
class FeatureResult:
    """One served value: the feature's name, value (None when NOT_FOUND), status and event time."""

    name: str
    value: Any
    status: str
    event_time: datetime | None


def feature_result(fv: fs.FeatureValue) -> FeatureResult:
    """The FeatureResult of a served FeatureValue."""
    return FeatureResult(
        fv.name,
        python_value(fv.value),
        STATUS_NAMES.get(fv.status, "FEATURE_STATUS_UNSPECIFIED"),
        datetime_of(fv.event_time) if fv.HasField("event_time") else None,
    )

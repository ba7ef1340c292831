"""The Python client (`featurestore.Client` / `AsyncClient`) against the real test server.

Registry CRUD with pagination and etags, every value type through writes, online reads,
DataFrames and Arrow tables (dtypes per value type, int64 extremes, NaN, embeddings),
history pages, training datasets (in several requests) to frames and Parquet, pushes,
and each error class. Retries, deadlines and auth metadata are observed on a small real
gRPC server in the test (`_Flaky`) that fails a set number of times, then succeeds.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.protobuf import any_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

import featurestore
from featurestore import (
    Aborted,
    AlreadyExists,
    AsyncClient,
    Client,
    DeadlineExceeded,
    EtagMismatch,
    FailedPrecondition,
    FeatureStoreError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
)
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import feature_store_service_pb2_grpc
from featurestore.serving.v1 import value_pb2 as vpb

INT_MIN, INT_MAX = -(2**63), 2**63 - 1
T0 = datetime(2024, 1, 1, tzinfo=UTC)

# One feature of each value type, and a value of it.
TYPED: dict[str, tuple[str, Any]] = {
    "c_float": ("FLOAT", 1.5),
    "c_int": ("INT64", INT_MAX),
    "c_string": ("STRING", "gold"),
    "c_bool": ("BOOL", True),
    "c_bytes": ("BYTES", b"\x00\xff"),
    "c_time": ("TIMESTAMP", datetime(2023, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)),
    "c_floats": ("FLOAT_LIST", [1.0, 2.5]),
    "c_ints": ("INT64_LIST", [INT_MIN, 0, INT_MAX]),
    "c_strings": ("STRING_LIST", ["a", "b"]),
    "c_bools": ("BOOL_LIST", [True, False]),
    "c_embedding": ("EMBEDDING", [0.25, -1.5, 3.0]),
}


@pytest.fixture(scope="module")
def fsc(grpc_target: str) -> Iterator[Client]:
    with Client(grpc_target) as client:
        client.wait_ready()
        yield client


@pytest.fixture
def typed(fsc: Client, empty_registry: None, empty_online: None) -> None:
    for name, (value_type, _) in TYPED.items():
        fsc.create_feature({"name": name, "entity_type": "customer", "value_type": value_type})


def test_public_surface_is_pinned() -> None:
    assert featurestore.__all__ == [
        "Aborted",
        "AlreadyExists",
        "AsyncClient",
        "AsyncPusher",
        "Change",
        "Client",
        "DeadlineExceeded",
        "DefinitionError",
        "Definitions",
        "ErrorDetails",
        "EtagMismatch",
        "FailedPrecondition",
        "FeatureResult",
        "FeatureStoreClient",
        "FeatureStoreError",
        "FeatureVector",
        "FieldChange",
        "InvalidArgument",
        "NotFound",
        "PermissionDenied",
        "Plan",
        "Pusher",
        "ResourceExhausted",
        "RetryPolicy",
        "Unauthenticated",
        "Unavailable",
        "WriteResult",
        "apply_plan",
        "async_apply_plan",
        "error_details",
        "load_definitions",
        "plan_definitions",
        "python_value",
        "write_training_parquet",
    ]
    for name in featurestore.__all__:
        assert getattr(featurestore, name).__doc__, f"{name} has no docstring"
    assert (Path(featurestore.__file__).parent / "py.typed").exists()
    # The sync and async clients offer the same methods.
    public = {n for n in dir(Client) if not n.startswith("_")}
    assert public == {n for n in dir(AsyncClient) if not n.startswith("_")}


@pytest.mark.usefixtures("empty_registry")
def test_registry_crud_pages_etags_and_revisions(fsc: Client) -> None:
    for i in range(5):
        fsc.create_feature(
            {"name": f"f{i}", "entity_type": "customer", "value_type": "FLOAT", "owner": "team-a", "tags": ["x"]}
        )
    assert [f.name for f in fsc.list_features(page_size=2)] == [f"f{i}" for i in range(5)]
    assert [f.name for f in fsc.list_features(tag="x", owner="team-a", entity_type="customer")] == [
        f"f{i}" for i in range(5)
    ]
    assert list(fsc.list_features(entity_type="product")) == []

    first = fsc.get_feature("f0")
    changed = fsc.update_feature({"name": "f0", "description": "new"}, etag=first.etag)
    assert (changed.revision, changed.description, changed.owner) == (2, "new", "team-a")
    with pytest.raises(EtagMismatch) as stale:
        fsc.update_feature({"name": "f0", "description": "lost"}, etag=first.etag)
    assert stale.value.reason == "ETAG_MISMATCH"
    cleared = fsc.update_feature({"name": "f0"}, update_mask=["owner"])
    assert cleared.owner == ""
    assert [r.revision for r in fsc.list_feature_revisions("f0", page_size=1)] == [3, 2, 1]

    group = fsc.create_feature_group(
        {"name": "g", "entity_type": "customer", "feature_names": ["f0", "f1"], "owner": "team-a"}
    )
    fsc.create_feature_group({"name": "h", "entity_type": "customer", "feature_names": ["f2"]})
    assert [g.name for g in fsc.list_feature_groups(page_size=1)] == ["g", "h"]
    moved = fsc.update_feature_group({"name": "g", "feature_names": ["f1"]}, etag=group.etag)
    assert list(moved.feature_names) == ["f1"]
    assert fsc.get_feature_group("g").revision == 2
    with pytest.raises(FailedPrecondition) as in_use:
        fsc.delete_feature("f1")
    assert in_use.value.reason == "FEATURE_IN_USE"
    fsc.delete_feature_group("g", etag=moved.etag)
    fsc.delete_feature("f1")
    with pytest.raises(NotFound) as gone:
        fsc.get_feature("f1")
    assert (gone.value.reason, gone.value.metadata) == ("FEATURE_NOT_FOUND", {"name": "f1"})
    with pytest.raises(NotFound):
        fsc.get_feature_group("g")
    with pytest.raises(AlreadyExists):
        fsc.create_feature({"name": "f0", "entity_type": "customer", "value_type": "FLOAT"})
    with pytest.raises(InvalidArgument) as bad:
        fsc.create_feature({"name": "Bad", "entity_type": "customer", "value_type": "FLOAT"})
    assert "feature.name" in bad.value.field_violations
    assert isinstance(bad.value, FeatureStoreError)
    assert str(bad.value).startswith("INVALID_ARGUMENT: ")


def _ts(when: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(when)
    return out


def _rows(prefix: str = "") -> list[dict[str, Any]]:
    """customer1 has a value of every type; customer2 only an int (the extreme low) and a NaN float.

    History outlives the tests' online flushes: each test writes entities of its own (`prefix`).
    """
    first: dict[str, Any] = {"entity_id": f"{prefix}customer1", "event_time": T0}
    first.update({name: value for name, (_, value) in TYPED.items()})
    second = {"entity_id": f"{prefix}customer2", "event_time": T0, "c_int": INT_MIN, "c_float": math.nan}
    return [first, second]


@pytest.mark.usefixtures("typed")
def test_write_and_read_every_value_type(fsc: Client) -> None:
    written = fsc.write_features("customer", _rows())
    assert (written.written_values, written.requests) == (len(TYPED) + 1, 1)  # the NaN is not written

    one = fsc.get_features("customer", "customer1", list(TYPED))
    for name, (_, value) in TYPED.items():
        assert one[name] == pytest.approx(value) if name == "c_embedding" else one[name] == value, name
        assert one.status(name) == "PRESENT"
        assert one.event_time(name) == T0
    assert fsc.get_features("customer", "nobody", "c_int").status("c_int") == "NOT_FOUND"

    records = fsc.batch_get_features("customer", ["customer2", "nobody"], ["c_int", "c_float"])
    assert [r.to_dict() for r in records] == [{"c_int": INT_MIN, "c_float": None}, {"c_int": None, "c_float": None}]


@pytest.mark.usefixtures("typed")
def test_dataframe_and_arrow_dtypes(fsc: Client) -> None:
    fsc.write_features("customer", _rows())
    ids = ["customer1", "customer2", "nobody"]
    df = fsc.batch_get_features("customer", ids, list(TYPED), output="pandas", include_status=True)
    assert list(df["entity_id"]) == ids
    assert {name: str(df[name].dtype) for name in TYPED} == {
        "c_float": "float64",
        "c_int": "Int64",
        "c_string": "object",
        "c_bool": "boolean",
        "c_bytes": "object",
        "c_time": "datetime64[ns, UTC]",
        "c_floats": "object",
        "c_ints": "object",
        "c_strings": "object",
        "c_bools": "object",
        "c_embedding": "object",
    }
    assert df["c_int"].tolist()[:2] == [INT_MAX, INT_MIN]
    assert df["c_int"].isna().tolist() == [False, False, True]
    assert df["c_float"].iloc[0] == 1.5
    assert math.isnan(df["c_float"].iloc[1])
    assert df["c_time"].iloc[0] == pd.Timestamp("2023-05-06T07:08:09.123456Z")
    assert df["c_embedding"].iloc[0].dtype.name == "float32"
    assert df["c_embedding"].iloc[0].tolist() == [0.25, -1.5, 3]
    assert df["c_ints"].iloc[0].tolist() == [INT_MIN, 0, INT_MAX]
    assert df["c_embedding"].iloc[2] is None
    assert df["c_int__status"].tolist() == ["PRESENT", "PRESENT", "NOT_FOUND"]

    table = fsc.batch_get_features("customer", ids, list(TYPED), output="arrow", include_event_time=True)
    assert {name: str(table.schema.field(name).type) for name in TYPED} == {
        "c_float": "double",
        "c_int": "int64",
        "c_string": "string",
        "c_bool": "bool",
        "c_bytes": "binary",
        "c_time": "timestamp[us, tz=UTC]",
        "c_floats": "list<item: double>",
        "c_ints": "list<item: int64>",
        "c_strings": "list<item: string>",
        "c_bools": "list<item: bool>",
        "c_embedding": "list<item: float>",
    }
    assert table.column("c_int").to_pylist() == [INT_MAX, INT_MIN, None]
    assert table.column("c_embedding").to_pylist() == [[0.25, -1.5, 3.0], None, None]
    assert table.column("c_bools").to_pylist() == [[True, False], None, None]
    assert table.column("c_floats").to_pylist() == [[1.0, 2.5], None, None]
    assert df["c_bools"].iloc[0].tolist() == [True, False]
    assert df["c_floats"].iloc[0].dtype.name == "float64"
    assert table.column("c_float").null_count == 2  # NaN was not written: missing, not NaN
    assert table.column("c_int__event_time").to_pylist()[0] == T0

    # A stored NaN (sent as a Value: a NaN in rows means "no value") is a NaN, PRESENT; Arrow
    # keeps it apart from a missing value.
    nan_row = fs.EntityRow(entity_id="nan1", event_time=_ts(T0), values={"c_float": vpb.Value(float_value=math.nan)})
    fsc.write_features("customer", [nan_row])
    stored = fsc.batch_get_features("customer", ["nan1", "nobody"], ["c_float"], output="pandas", include_status=True)
    assert math.isnan(stored["c_float"].iloc[0])
    assert stored["c_float__status"].tolist() == ["PRESENT", "NOT_FOUND"]
    arrow = fsc.batch_get_features("customer", ["nan1", "nobody"], ["c_float"], output="arrow").column("c_float")
    assert math.isnan(arrow[0].as_py())
    assert arrow.null_count == 1

    # A column with no value at all still gets its type (from the registry).
    empty = fsc.batch_get_features("customer", ["nobody"], ["c_int", "c_time"], output="pandas")
    assert (str(empty["c_int"].dtype), str(empty["c_time"].dtype)) == ("Int64", "datetime64[ns, UTC]")


@pytest.mark.usefixtures("typed")
def test_history_follows_pages(fsc: Client) -> None:
    rows = [{"entity_id": "h1", "event_time": T0 + timedelta(days=d), "c_int": d, "c_float": d / 2} for d in range(25)]
    rows[3]["c_float"] = None  # one time with only c_int
    fsc.write_features("customer", rows)
    values = list(fsc.iter_history("customer", "h1", ["c_int", "c_float"], page_size=7))
    assert len(values) == 49
    assert [v.value for v in values if v.name == "c_int"] == list(range(25))
    window = fsc.history(
        "customer", "h1", ["c_int", "c_float"], start=T0 + timedelta(days=2), end=T0 + timedelta(days=5)
    )
    assert list(window.columns) == ["event_time", "c_int", "c_float"]
    assert window["c_int"].tolist() == [2, 3, 4]
    assert str(window["c_int"].dtype) == "Int64"
    assert math.isnan(window["c_float"].iloc[1])
    records = fsc.history("customer", "h1", "c_int", output="records", page_size=10)
    assert len(records) == 25
    assert records[-1].event_time == T0 + timedelta(days=24)


@pytest.mark.usefixtures("typed")
def test_training_dataset_in_chunks_to_frame_and_parquet(grpc_target: str, fsc: Client, tmp_path: Path) -> None:
    fsc.write_features(
        "customer", [{"entity_id": f"e{i}", "event_time": T0, "c_int": i, "c_embedding": [i, 0.5]} for i in range(30)]
    )
    entity_rows = pd.DataFrame(
        {
            "entity_id": [f"e{i}" for i in range(30)] + ["nobody"],
            "timestamp": [T0 + timedelta(hours=1)] * 30 + [T0],
            "label": pd.array([i % 2 for i in range(30)] + [None], dtype="Int64"),
            "churned": [i % 3 == 0 for i in range(31)],  # numpy bools
            "score": np.linspace(0, 1, 31, dtype=np.float32),
        }
    )
    # chunk_values=10 and two features: requests of 5 rows, 7 of them.
    with Client(grpc_target, chunk_values=10) as small:
        df = small.training_dataset("customer", entity_rows, ["c_int", "c_embedding"], include_status=True)
        progress: list[tuple[int, int]] = []
        path = tmp_path / "train.parquet"
        count = small.training_dataset_to_parquet(
            "customer",
            entity_rows,
            path,
            ["c_int", "c_embedding"],
            progress=lambda done, total: progress.append((done, total)),
        )
    assert list(df.columns) == [
        "entity_id",
        "timestamp",
        "label",
        "churned",
        "score",
        "c_int",
        "c_int__status",
        "c_embedding",
        "c_embedding__status",
    ]
    assert df["c_int"].tolist()[:30] == list(range(30))
    assert str(df["c_int"].dtype) == "Int64"
    assert df["c_int__status"].tolist()[-1] == "NOT_FOUND"
    assert str(df["label"].dtype) == "Int64"
    assert df["label"].isna().tolist()[-1]
    assert df["c_embedding"].iloc[3].tolist() == [3.0, 0.5]
    assert (str(df["churned"].dtype), str(df["score"].dtype)) == ("boolean", "float64")
    assert df["churned"].tolist()[:4] == [True, False, False, True]
    assert count == 31
    assert progress[-1] == (31, 31)
    assert len(progress) >= 7
    table = pq.read_table(path)
    assert table.schema.field("c_embedding").type == pa.list_(pa.float32())
    assert table.column("c_int").to_pylist()[:3] == [0, 1, 2]
    records = fsc.training_dataset("customer", entity_rows.head(2), "c_int", output="records")
    assert [(r["entity_id"], r["c_int"], r["label"]) for r in records] == [("e0", 0, 0), ("e1", 1, 1)]


@pytest.mark.usefixtures("typed")
def test_writes_are_chunked_and_pushed(grpc_target: str, fsc: Client) -> None:
    rows = [{"entity_id": f"e{i}", "event_time": T0, "c_int": i, "c_float": float(i)} for i in range(50)]
    with Client(grpc_target, chunk_values=30) as small:
        result = small.write_features("customer", pd.DataFrame(rows))
        assert (result.written_values, result.requests) == (100, 4)  # 15 rows of 2 values per request
        older = small.write_features("customer", rows, event_time=T0 - timedelta(days=1))
        assert (older.written_values, older.skipped_values) == (0, 100)  # history only: online keeps the newer
        with small.push("customer") as pusher:
            pusher.send([{"entity_id": "p1", "c_int": 7}], event_time=T0)
            pusher.send(pa.Table.from_pylist(rows[:20]))
        assert pusher.result is not None
        assert pusher.result.requests == 3
    assert fsc.get_features("customer", "p1", "c_int")["c_int"] == 7
    failing = fsc.push("customer")
    failing.send([{"entity_id": "p2", "event_time": T0, "c_int": 1}])
    failing.send([{"entity_id": "p3", "event_time": T0 + timedelta(days=3650), "c_int": 1}])  # too far ahead
    with pytest.raises(InvalidArgument) as bad:
        failing.close()
    assert bad.value.field_violations
    with pytest.raises(ValueError, match=r"rows\[0\], feature 'c_int' \(INT64\)"):
        fsc.write_features("customer", [{"entity_id": "x", "event_time": T0, "c_int": 1.5}])
    with pytest.raises(NotFound):
        fsc.write_features("customer", [{"entity_id": "x", "event_time": T0, "no_such_feature": 1}])


@pytest.mark.usefixtures("typed")
def test_async_client_same_surface(grpc_target: str, tmp_path: Path) -> None:
    async def scenario() -> dict[str, Any]:
        async with AsyncClient(grpc_target, chunk_values=10, token_callback=_async_token) as client:
            await client.wait_ready()
            out: dict[str, Any] = {}
            out["written"] = (await client.write_features("customer", _rows("a-"))).written_values
            out["one"] = (await client.get_features("customer", "a-customer1", ["c_int", "c_time"])).to_dict()
            out["batch"] = await client.batch_get_features(
                "customer", ["a-customer1", "a-customer2"], ["c_int"], output="arrow"
            )
            created = await client.create_feature({"name": "c_extra", "entity_type": "customer", "value_type": "FLOAT"})
            out["created"] = created.revision
            out["features"] = [f.name async for f in client.list_features(page_size=3)]
            group = await client.create_feature_group(
                {"name": "g", "entity_type": "customer", "feature_names": ["c_int", "c_string"]}
            )
            await client.update_feature_group({"name": "g", "description": "d"}, etag=group.etag)
            out["groups"] = [g.revision async for g in client.list_feature_groups()]
            out["grouped"] = (await client.get_features("customer", "a-customer1", groups="g")).to_dict()
            feature = await client.get_feature("c_int")
            await client.update_feature({"name": "c_int", "owner": "o"}, etag=feature.etag)
            out["revisions"] = [r.revision async for r in client.list_feature_revisions("c_int", page_size=1)]
            try:
                await client.update_feature({"name": "c_int", "owner": "p"}, etag=feature.etag)
            except EtagMismatch as err:
                out["stale"] = err.reason
            async with client.push("customer") as pusher:
                await pusher.send([{"entity_id": "p9", "event_time": T0, "c_int": 9}])
            out["pushed"] = pusher.result
            out["history"] = [v.value async for v in client.iter_history("customer", "a-customer1", "c_int")]
            out["history_df"] = await client.history("customer", "a-customer1", ["c_int"])
            rows = [{"entity_id": "a-customer1", "timestamp": T0 + timedelta(days=1)}] * 12
            out["training"] = await client.training_dataset("customer", rows, groups="g")
            out["parquet"] = await client.training_dataset_to_parquet("customer", rows, tmp_path / "t.parquet", "c_int")
            await client.delete_feature_group("g")
            await client.delete_feature("c_bool")
            try:
                await client.get_feature("c_bool")
            except NotFound as err:
                out["gone"] = err.reason
            return out

    out = asyncio.run(scenario())
    assert out["written"] == len(TYPED) + 1
    assert out["one"] == {"c_int": INT_MAX, "c_time": TYPED["c_time"][1]}
    assert out["batch"].column("c_int").to_pylist() == [INT_MAX, INT_MIN]
    assert out["created"] == 1
    assert out["features"] == sorted([*TYPED, "c_extra"])
    assert out["groups"] == [2]
    assert out["grouped"] == {"c_int": INT_MAX, "c_string": "gold"}
    assert out["revisions"] == [2, 1]
    assert out["stale"] == "ETAG_MISMATCH"
    assert out["pushed"].written_values == 1
    assert out["history"] == [INT_MAX]
    assert out["history_df"]["c_int"].tolist() == [INT_MAX]
    assert len(out["training"]) == 12
    assert out["training"]["c_string"].tolist() == ["gold"] * 12
    assert out["parquet"] == 12
    assert out["gone"] == "FEATURE_NOT_FOUND"


async def _async_token() -> str:
    return "unused-with-auth-off"


class _Flaky(feature_store_service_pb2_grpc.FeatureStoreServiceServicer):
    """A real gRPC server's servicer that fails the first `failures` calls of each method with UNAVAILABLE.

    It records the calls (method, authorization metadata); an entity id naming a status
    code ("NOT_FOUND", ...) fails with that code and an ErrorInfo; "slow" sleeps past deadlines.
    """

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def _count(self, method: str, context: grpc.ServicerContext) -> int:
        auth = dict(context.invocation_metadata()).get("authorization", "")
        with self.lock:
            self.calls.append((method, str(auth)))
            return sum(1 for m, _ in self.calls if m == method)

    def GetFeatures(self, request: fs.GetFeaturesRequest, context: grpc.ServicerContext) -> fs.GetFeaturesResponse:
        if self._count("GetFeatures", context) <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        if request.entity_id == "slow":
            time.sleep(1.0)
        if request.entity_id in grpc.StatusCode.__members__:
            code = grpc.StatusCode[request.entity_id]
            status = status_pb2.Status(code=code.value[0], message=f"failed with {code.name}")
            detail = any_pb2.Any()
            detail.Pack(error_details_pb2.ErrorInfo(reason=f"{code.name}_REASON", domain="test"))
            status.details.append(detail)
            context.abort_with_status(rpc_status.to_status(status))
        return fs.GetFeaturesResponse(entity_id=request.entity_id, entity_type=request.entity_type)

    def WriteFeatures(
        self, request: fs.WriteFeaturesRequest, context: grpc.ServicerContext
    ) -> fs.WriteFeaturesResponse:
        if self._count("WriteFeatures", context) <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return fs.WriteFeaturesResponse(written_values=len(request.rows))


def _flaky_servicer(failures: int) -> _Flaky:
    # The generated servicer's other methods are abstract for mypy; at run time they answer UNIMPLEMENTED.
    cls: Any = _Flaky
    servicer: _Flaky = cls(failures)
    return servicer


@pytest.fixture
def flaky() -> Iterator[tuple[str, _Flaky]]:
    servicer = _flaky_servicer(failures=2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    feature_store_service_pb2_grpc.add_FeatureStoreServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


def test_reads_are_retried_writes_are_not(flaky: tuple[str, _Flaky]) -> None:
    target, servicer = flaky
    fast = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)
    with Client(target, retry=fast, token="secret") as client:
        assert client.get_features("customer", "c1", "f").entity_id == "c1"
        assert servicer.calls == [("GetFeatures", "Bearer secret")] * 3  # two failures, then success
        with pytest.raises(Unavailable):
            client.write_features("customer", [fs.EntityRow(entity_id="c1")])
        assert [m for m, _ in servicer.calls].count("WriteFeatures") == 1  # never retried
    servicer.calls.clear()
    with Client(target, retry=None) as client, pytest.raises(Unavailable):
        client.get_features("customer", "c1", "f")
    assert len(servicer.calls) == 1  # GetFeatures failure number 1 of 2: no retry without a policy
    with Client(target, retry=fast) as client, pytest.raises(DeadlineExceeded):
        client.get_features("customer", "slow", "f", timeout=0.2)


def test_async_retries_deadline_and_token_callback(flaky: tuple[str, _Flaky]) -> None:
    target, servicer = flaky
    tokens = iter(["t1", "t2"])

    async def scenario() -> tuple[str, type[Exception]]:
        fast = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)
        async with AsyncClient(target, retry=fast, token_callback=lambda: next(tokens), timeout=0.2) as client:
            got = await client.get_features("customer", "c1", "f")
            try:
                await client.get_features("customer", "slow", "f")
            except FeatureStoreError as err:
                return got.entity_id, type(err)
        raise AssertionError("no deadline")

    assert asyncio.run(scenario()) == ("c1", DeadlineExceeded)
    assert [a for _, a in servicer.calls] == ["Bearer t1"] * 3 + ["Bearer t2"]  # one callback per call, not per try


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("NOT_FOUND", NotFound),
        ("ALREADY_EXISTS", AlreadyExists),
        ("INVALID_ARGUMENT", InvalidArgument),
        ("FAILED_PRECONDITION", FailedPrecondition),
        ("ABORTED", Aborted),
        ("RESOURCE_EXHAUSTED", ResourceExhausted),
        ("PERMISSION_DENIED", PermissionDenied),
        ("UNAUTHENTICATED", Unauthenticated),
        ("INTERNAL", FeatureStoreError),
    ],
)
def test_each_status_code_has_its_error(flaky: tuple[str, _Flaky], code: str, error: type[FeatureStoreError]) -> None:
    target, servicer = flaky
    servicer.failures = 0
    with Client(target) as client, pytest.raises(error) as raised:
        client.get_features("customer", code, "f")
    assert type(raised.value) is error
    assert (raised.value.reason, raised.value.message) == (f"{code}_REASON", f"failed with {code}")
    assert isinstance(raised.value.__cause__, grpc.RpcError)


def test_tls_roots(tmp_path: Path) -> None:
    key, cert = _self_signed("localhost")
    servicer = _flaky_servicer(failures=0)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    feature_store_service_pb2_grpc.add_FeatureStoreServiceServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    server.start()
    try:
        override = [("grpc.ssl_target_name_override", "localhost")]
        with Client(f"127.0.0.1:{port}", root_certificates=cert, options=override, token="t") as client:
            assert client.get_features("customer", "c1", "f").entity_id == "c1"
        untrusted = Client(f"127.0.0.1:{port}", tls=True, options=override, timeout=2, retry=None)
        with untrusted, pytest.raises(Unavailable):  # the system's roots do not trust the test's certificate
            untrusted.get_features("customer", "c1", "f")
    finally:
        server.stop(None)
    assert servicer.calls == [("GetFeatures", "Bearer t")]


def _self_signed(host: str) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem_key, cert.public_bytes(serialization.Encoding.PEM)


USER_CODE = """
from typing import assert_type

from featurestore import AsyncClient, Client, FeatureResult, FeatureVector, NotFound
from featurestore.registry.v1 import feature_pb2


def blocking(client: Client) -> None:
    assert_type(client.get_features("customer", "c1", ["f"]), FeatureVector)
    assert_type(client.batch_get_features("customer", ["c1"], ["f"]), list[FeatureVector])
    assert_type(client.history("customer", "c1", "f", output="records"), list[FeatureResult])
    for feature in client.list_features(entity_type="customer"):
        assert_type(feature, feature_pb2.Feature)
    try:
        client.get_feature("f")
    except NotFound as err:
        assert_type(err.field_violations, dict[str, str])


async def awaiting(client: AsyncClient) -> None:
    assert_type(await client.get_features("customer", "c1", "f"), FeatureVector)
    assert_type(await client.batch_get_features("customer", ["c1"], ["f"]), list[FeatureVector])
    async for revision in client.list_feature_revisions("f"):
        assert_type(revision.revision, int)
    async with client.push("customer") as pusher:
        await pusher.send([{"entity_id": "c1", "event_time": "2024-01-01T00:00:00Z", "f": 1.0}])
"""


def test_user_code_type_checks_strictly(tmp_path: Path) -> None:
    # What a user's `mypy --strict` sees: typed results, iterators and exceptions (py.typed). An
    # installed package is followed silently (mypy reports no errors inside it): the same here.
    # googleapis-common-protos (google.api, google.rpc) ships no type information: the README says so.
    code = tmp_path / "user.py"
    code.write_text(USER_CODE)
    config = tmp_path / "mypy.ini"
    config.write_text(
        "[mypy]\nstrict = True\n\n[mypy-featurestore.*]\nfollow_imports = silent\n\n"
        "[mypy-google.api.*,google.rpc.*,grpc_status.*]\nignore_missing_imports = True\n"
    )
    env = {**os.environ, "MYPYPATH": str(Path(featurestore.__file__).parent.parent)}
    cmd = [sys.executable, "-m", "mypy", "--no-incremental", "--config-file", str(config), str(code)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr


def test_wait_ready_on_nothing_is_unavailable() -> None:
    from devstack import free_port

    target = f"127.0.0.1:{free_port()}"  # nothing listens there
    with Client(target) as client, pytest.raises(Unavailable, match="could not connect"):
        client.wait_ready(timeout=0.5)

    async def scenario() -> None:
        async with AsyncClient(target) as client:
            await client.wait_ready(timeout=0.5)

    with pytest.raises(Unavailable):
        asyncio.run(scenario())

"""Point-in-time correct training datasets, checked against a brute-force reference."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore import FeatureStoreClient, error_details, write_training_parquet
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2 as vpb
from tests._http import Rest
from tests._online import i64, register, row, ts, wait_servable, write

T0 = datetime(2024, 3, 1, tzinfo=UTC)
MAX_AGE = timedelta(minutes=30)
FEATURES = ("pit_a", "pit_b")
NOISE = "pit_noise"  # written beside them, never asked for: it shares the rows' scans
_run = itertools.count()


@pytest.fixture(scope="module")
def pit_features(client: FeatureStoreClient, postgres_dsn: str) -> None:
    from tests._helpers import CLEAR_REGISTRY, run_sql

    run_sql(postgres_dsn, CLEAR_REGISTRY)
    for name in (*FEATURES, NOISE):
        register(client, name, pb.INT64, max_age=MAX_AGE)
    wait_servable(client, "customer", *FEATURES, NOISE)


def dataset(client: FeatureStoreClient, rows: list[fs.TrainingRow], **kwargs: object) -> list[fs.TrainingExample]:
    request = fs.GetTrainingDatasetRequest(entity_type="customer", feature_names=FEATURES, rows=rows, **kwargs)  # type: ignore[arg-type]
    return [e for chunk in client.store.GetTrainingDataset(request) for e in chunk.examples]


def reference(
    history: dict[tuple[str, str], dict[datetime, int]],
    entity: str,
    at: datetime,
    name: str,
    bound: timedelta | None = None,
) -> tuple[int, int, datetime] | None:
    """(status, value, event time) by brute force: the latest event at or before `at` (and within `bound`)."""
    times = [t for t in history.get((entity, name), {}) if t <= at]
    if not times or (bound is not None and at - max(times) > bound):
        return None
    latest = max(times)
    status = fs.EXPIRED if at - latest > MAX_AGE else fs.PRESENT
    return status, history[(entity, name)][latest], latest


# Often on a 15-minute grid, so that features share event times (written in one row) and rows
# ask exactly at an event time; otherwise any minute.
minutes = st.integers(0, 16).map(lambda m: m * 15) | st.integers(min_value=0, max_value=240)
events = st.lists(
    st.tuples(st.integers(0, 1), st.sampled_from((*FEATURES, NOISE)), minutes, st.integers(-1000, 1000)),
    min_size=20,
    max_size=60,
)
queries = st.lists(st.tuples(st.integers(0, 2), minutes), min_size=1, max_size=30)  # entity 2: no history
bounds = st.sampled_from([None, timedelta(minutes=20), timedelta(minutes=60)])


@pytest.mark.usefixtures("pit_features")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=events, queries=queries, bound=bounds)
def test_as_of_join_matches_brute_force(
    client: FeatureStoreClient,
    events: list[tuple[int, str, int, int]],
    queries: list[tuple[int, int]],
    bound: timedelta | None,
) -> None:
    run = next(_run)  # entities of their own per example: no cleanup between examples
    history: dict[tuple[str, str], dict[datetime, int]] = {}
    for e, name, minute, value in events:
        history.setdefault((f"r{run}e{e}", name), {})[T0 + timedelta(minutes=minute)] = value  # the last write wins
    together: dict[tuple[str, datetime], dict[str, vpb.Value]] = {}  # values of one time: one row
    for (entity, name), by_time in history.items():
        for when, v in by_time.items():
            together.setdefault((entity, when), {})[name] = i64(v)
    if together:
        write(client, [row(entity, when, **values) for (entity, when), values in together.items()])
    asked = [(f"r{run}e{e}", T0 + timedelta(minutes=m)) for e, m in queries]
    bounded = {} if bound is None else {"max_age": duration_pb2.Duration(seconds=int(bound.total_seconds()))}
    examples = dataset(
        client,
        [fs.TrainingRow(entity_id=e, timestamp=ts(at), extra={"label": i64(i)}) for i, (e, at) in enumerate(asked)],
        **bounded,
    )
    assert len(examples) == len(asked)
    for i, ((entity, at), example) in enumerate(zip(asked, examples, strict=True)):
        assert (example.entity_id, example.timestamp, example.extra["label"].int64_value) == (entity, ts(at), i)
        assert [f.name for f in example.features] == list(FEATURES)
        for feature in example.features:
            expected = reference(history, entity, at, feature.name, bound)
            if expected is None:
                assert feature.status == fs.NOT_FOUND
                assert not feature.HasField("value")
            else:
                status, value, when = expected
                assert (feature.status, feature.value.int64_value, feature.event_time) == (status, value, ts(when))


@pytest.mark.usefixtures("pit_features")
def test_edges_equal_times_before_any_value_exactly_at_max_age_and_bound(client: FeatureStoreClient) -> None:
    write(client, [row("edge", T0, pit_a=i64(1)), row("edge", T0 + timedelta(minutes=10), pit_a=i64(2))])
    at = [
        T0 - timedelta(microseconds=1),
        T0,
        T0 + timedelta(minutes=10),
        T0 + timedelta(minutes=40),
        T0 + timedelta(minutes=40, microseconds=1),
    ]
    examples = dataset(client, [fs.TrainingRow(entity_id="edge", timestamp=ts(t)) for t in at])
    a = [e.features[0] for e in examples]
    assert a[0].status == fs.NOT_FOUND  # before any value
    assert (a[1].status, a[1].value.int64_value) == (fs.PRESENT, 1)  # a value at exactly the row's time counts
    assert (a[2].status, a[2].value.int64_value) == (fs.PRESENT, 2)
    assert (a[3].status, a[3].value.int64_value) == (fs.PRESENT, 2)  # exactly max age old: still present
    assert (a[4].status, a[4].value.int64_value) == (fs.EXPIRED, 2)
    bounded = dataset(
        client, [fs.TrainingRow(entity_id="edge", timestamp=ts(at[4]))], max_age=duration_pb2.Duration(seconds=600)
    )
    assert bounded[0].features[0].status == fs.NOT_FOUND  # older than the requested bound: absent


@pytest.mark.usefixtures("pit_features")
def test_training_rest_route_and_bad_rows(client: FeatureStoreClient, rest: Rest) -> None:
    write(client, [row("rest1", T0, pit_b=i64(5))])
    body = {
        "entity_type": "customer",
        "feature_names": ["pit_b"],
        "rows": [{"entity_id": "rest1", "timestamp": "2024-03-01T00:05:00Z", "extra": {"label": {"bool_value": True}}}],
    }
    response = rest.post("/api/feature-store/training-dataset", body)
    assert response.status == 200, response.text
    [chunk] = response.json()
    [example] = chunk["examples"]
    assert example["extra"] == {"label": {"bool_value": True}}
    assert example["features"][0]["value"] == {"int64_value": "5"}
    with pytest.raises(grpc.RpcError) as info:
        dataset(client, [fs.TrainingRow(entity_id="", timestamp=ts(T0)), fs.TrainingRow(entity_id="x")])
    assert set(error_details(info.value).field_violations) == {"rows[0].entity_id", "rows[1].timestamp"}
    far = [fs.TrainingRow(entity_id="x", timestamp=Timestamp(seconds=s)) for s in (0, 10**12, -(10**12))]
    far.append(fs.TrainingRow(entity_id="x", timestamp=Timestamp(seconds=0, nanos=-1)))
    with pytest.raises(grpc.RpcError) as info:
        dataset(client, far)
    assert set(error_details(info.value).field_violations) == {
        "rows[1].timestamp",
        "rows[2].timestamp",
        "rows[3].timestamp",
    }


@pytest.mark.usefixtures("pit_features")
def test_training_dataset_exports_to_parquet(client: FeatureStoreClient, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    write(client, [row(f"pq{i}", T0, pit_a=i64(i)) for i in range(5000)])
    rows = [
        fs.TrainingRow(entity_id=f"pq{i}", timestamp=ts(T0 + timedelta(minutes=i % 60)), extra={"y": i64(i % 2)})
        for i in range(5000)
    ]
    request = fs.GetTrainingDatasetRequest(entity_type="customer", feature_names=FEATURES, rows=rows)
    assert write_training_parquet(client.store.GetTrainingDataset(request), tmp_path / "train.parquet") == 5000
    table = pq.read_table(tmp_path / "train.parquet").to_pylist()
    assert [r["entity_id"] for r in table] == [f"pq{i}" for i in range(5000)]
    assert [r["pit_a"] for r in table[:3]] == [0, 1, 2]
    assert [r["y"] for r in table[:3]] == [0, 1, 0]
    assert {r["pit_b__status"] for r in table} == {"NOT_FOUND"}
    assert table[59]["pit_a__status"] == "EXPIRED"  # 59 minutes after its value, past the 30-minute max age
    assert table[59]["pit_a"] == 59


@pytest.mark.usefixtures("pit_features")
def test_a_feature_far_behind_the_others_is_still_found(client: FeatureStoreClient) -> None:
    # pit_b's one value lies behind many newer pit_a and pit_noise values: past the row's
    # scan of the entity's latest values, so it is looked up on its own.
    values = [row("behind", T0, pit_b=i64(7))]
    values += [row("behind", T0 + timedelta(minutes=m), pit_a=i64(m), pit_noise=i64(m)) for m in range(1, 60)]
    write(client, values)
    [example] = dataset(client, [fs.TrainingRow(entity_id="behind", timestamp=ts(T0 + timedelta(hours=1)))])
    a, b = example.features
    assert (a.status, a.value.int64_value) == (fs.PRESENT, 59)
    assert (b.status, b.value.int64_value, b.event_time) == (fs.EXPIRED, 7, ts(T0))


@pytest.mark.usefixtures("pit_features")
def test_a_feature_asked_for_twice_is_answered_twice(client: FeatureStoreClient) -> None:
    write(client, [row("twice", T0, pit_a=i64(3), pit_b=i64(4))])
    request = fs.GetTrainingDatasetRequest(
        entity_type="customer",
        feature_names=["pit_a", "pit_b", "pit_a"],
        rows=[fs.TrainingRow(entity_id="twice", timestamp=ts(T0 + timedelta(minutes=1)))],
    )
    [example] = [e for chunk in client.store.GetTrainingDataset(request) for e in chunk.examples]
    assert [(f.name, f.value.int64_value) for f in example.features] == [("pit_a", 3), ("pit_b", 4), ("pit_a", 3)]


def test_scan_window_covers_the_entity_type_within_bounds() -> None:
    from server.offline._training import scan_window

    assert scan_window(requested=10, registered=10) == 10  # every feature of the type
    assert scan_window(requested=2, registered=3) == 3
    assert scan_window(requested=1, registered=10) == 10  # up to 32 for small requests
    assert scan_window(requested=10, registered=1000) == 40  # at most 4x the request
    assert scan_window(requested=50, registered=10) == 50  # never fewer than asked


@pytest.mark.usefixtures("pit_features")
def test_a_max_age_beyond_a_durations_range_is_invalid(client: FeatureStoreClient) -> None:
    """Not an internal error (protobuf's ToTimedelta overflows there): INVALID_ARGUMENT naming max_age."""
    rows = [fs.TrainingRow(entity_id="far_age", timestamp=ts(T0))]
    for seconds in (10**15, -(10**15)):
        with pytest.raises(grpc.RpcError) as info:
            dataset(client, rows, max_age=duration_pb2.Duration(seconds=seconds))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert set(error_details(info.value).field_violations) == {"max_age"}

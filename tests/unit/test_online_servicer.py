"""OnlineServicer over fakes of OnlineStore and HistorySink: what is read, written, refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.api import httpbody_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2 as vpb
from server.core import Limits
from server.online import Catalog, CatalogRefresher, OnlineServicer
from server.registry import Feature, FeatureGroup
from tests.unit._fakes import Aborted, FakeContext, FakeHistory, FakeOnlineStore, FakeRegistry, run, stream, unary


class Online:
    """A servicer over a catalog of `x` (INT64), `s` (STRING) and group `g` = [s, x], and fake stores."""

    def __init__(self, limits: Limits | None = None) -> None:
        registry, self.catalog = FakeRegistry(), Catalog()

        async def load() -> None:
            await registry.create_feature(Feature("x", "customer", "INT64"))
            await registry.create_feature(Feature("s", "customer", "STRING", max_age=timedelta(hours=1)))
            await registry.create_feature(Feature("p", "product", "FLOAT"))
            await registry.create_group(FeatureGroup("g", "customer", ("s", "x")))
            await CatalogRefresher(self.catalog, registry, 60).refresh()

        run(load())
        self.store = FakeOnlineStore()
        self.history = FakeHistory(self.store.calls)
        self.servicer = OnlineServicer(self.catalog, self.store, self.history, limits or Limits(max_values=1_000))

    def get(self, entity_id: str, *names: str, groups: tuple[str, ...] = ()) -> fs.GetFeaturesResponse:
        request = fs.GetFeaturesRequest(entity_type="customer", entity_id=entity_id, feature_names=names)
        request.feature_groups.extend(groups)
        return fs.GetFeaturesResponse.FromString(unary(self.servicer.GetFeatures, request))

    def write(self, *rows: fs.EntityRow, entity_type: str = "customer") -> fs.WriteFeaturesResponse:
        return unary(self.servicer.WriteFeatures, fs.WriteFeaturesRequest(entity_type=entity_type, rows=rows))


def ts(when: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(when)
    return out


def row(entity_id: str, when: datetime, **values: vpb.Value) -> fs.EntityRow:
    return fs.EntityRow(entity_id=entity_id, event_time=ts(when), values=values)


NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def online() -> Online:
    return Online()


def test_nothing_stored_is_not_found_in_the_order_asked(online: Online) -> None:
    response = online.get("c1", "x", "s", "x")
    assert (response.entity_id, response.entity_type) == ("c1", "customer")
    assert [(f.name, f.status) for f in response.features] == [
        ("x", fs.NOT_FOUND),
        ("s", fs.NOT_FOUND),
        ("x", fs.NOT_FOUND),
    ]
    [(keys, fields)] = online.store.reads
    assert keys == [b"f:customer:c1"]
    assert len(fields) == 3


def test_a_written_value_is_read_back_with_its_event_time(online: Online) -> None:
    written = online.write(row("c1", NOW, x=vpb.Value(int64_value=7), s=vpb.Value(string_value="é")))
    assert (written.written_values, written.skipped_values) == (2, 0)
    response = online.get("c1", "s", "x")
    assert [f.status for f in response.features] == [fs.PRESENT, fs.PRESENT]
    assert response.features[0].value.string_value == "é"
    assert response.features[1].value.int64_value == 7
    assert response.features[1].event_time == ts(NOW)


def test_groups_read_their_members(online: Online) -> None:
    online.write(row("c1", NOW, x=vpb.Value(int64_value=1), s=vpb.Value(string_value="a")))
    response = online.get("c1", "x", groups=("g",))
    assert [f.name for f in response.features] == ["x", "s", "x"]


def test_a_value_older_than_its_max_age_is_expired(online: Online) -> None:
    online.write(row("c1", NOW - timedelta(hours=2), s=vpb.Value(string_value="stale")))
    [feature] = online.get("c1", "s").features
    assert feature.status == fs.EXPIRED


def test_history_is_appended_before_the_online_write(online: Online) -> None:
    online.write(row("c1", NOW, x=vpb.Value(int64_value=1)), row("c2", NOW, x=vpb.Value(int64_value=2)))
    assert online.store.calls == ["append", "write"]
    assert [(r.entity_id, r.feature_name, r.event_time) for r in online.history.rows] == [
        ("c1", "x", NOW),
        ("c2", "x", NOW),
    ]


def test_an_older_write_is_skipped_online_but_kept_in_history(online: Online) -> None:
    online.write(row("c1", NOW, x=vpb.Value(int64_value=2)))
    older = online.write(row("c1", NOW - timedelta(minutes=1), x=vpb.Value(int64_value=1)))
    assert (older.written_values, older.skipped_values) == (0, 1)
    assert online.get("c1", "x").features[0].value.int64_value == 2
    assert len(online.history.rows) == 2


@pytest.mark.parametrize(
    ("rows", "field"),
    [
        ([row("c1", NOW, nope=vpb.Value(int64_value=1))], "rows[0].values[nope]"),
        ([row("c1", NOW, x=vpb.Value(string_value="seven"))], "rows[0].values[x]"),
        ([row("c1", NOW, p=vpb.Value(float_value=1.0))], "rows[0].values[p]"),
        ([row("", NOW, x=vpb.Value(int64_value=1))], "rows[0].entity_id"),
        ([fs.EntityRow(entity_id="c1", values={"x": vpb.Value(int64_value=1)})], "rows[0].event_time"),
        ([row("c1", NOW + timedelta(days=1), x=vpb.Value(int64_value=1))], "rows[0].event_time"),
    ],
)
def test_a_bad_row_writes_nothing_anywhere(online: Online, rows: list[fs.EntityRow], field: str) -> None:
    with pytest.raises(Aborted) as info:
        online.write(row("ok", NOW, x=vpb.Value(int64_value=1)), *rows)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field.replace("rows[0]", "rows[1]") in info.value.field_violations
    assert online.store.calls == []


def test_bad_reads_are_refused_before_the_store(online: Online) -> None:
    for names, words in [(("nope",), "does not exist"), (("p",), "has entity_type 'product'"), ((), "at least one")]:
        with pytest.raises(Aborted) as info:
            online.get("c1", *names)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert any(words in problem for problem in info.value.field_violations.values()), info.value
    with pytest.raises(Aborted):
        online.get("", "x")
    assert online.store.calls == []


def test_a_batch_keeps_the_order_and_duplicates_of_its_ids(online: Online) -> None:
    online.write(row("c1", NOW, x=vpb.Value(int64_value=1)), row("c2", NOW, x=vpb.Value(int64_value=2)))
    request = fs.BatchGetFeaturesRequest(
        entity_type="customer", entity_ids=["c2", "zz", "c2", "c1"], feature_names=["x"]
    )
    response = fs.BatchGetFeaturesResponse.FromString(unary(online.servicer.BatchGetFeatures, request))
    assert [e.entity_id for e in response.entities] == ["c2", "zz", "c2", "c1"]
    assert [e.features[0].value.int64_value for e in response.entities] == [2, 0, 2, 1]
    assert response.entities[1].features[0].status == fs.NOT_FOUND


def test_reads_over_the_size_limit_are_refused() -> None:
    online = Online(Limits(max_values=10))
    request = fs.BatchGetFeaturesRequest(entity_type="customer", entity_ids=["e"] * 6, feature_names=["x", "s"])
    with pytest.raises(Aborted) as info:
        unary(online.servicer.BatchGetFeatures, request)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert online.store.calls == []


def test_a_push_is_bounded_in_values_per_call() -> None:
    online = Online(Limits(max_values=1_000, max_stream_values=3))
    batch = fs.PushFeaturesRequest(entity_type="customer", rows=[row("c1", NOW, x=vpb.Value(int64_value=1))] * 2)
    with pytest.raises(Aborted) as info:
        run(online.servicer.PushFeatures(stream([batch, batch]), FakeContext()))  # type: ignore[arg-type]
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the first 1 batches were written" in info.value.status.details
    assert online.store.calls == ["append", "write"]  # the first batch, and nothing of the second


def test_the_json_rendering_reads_the_json_forms(online: Online) -> None:
    online.write(row("c1", NOW, x=vpb.Value(int64_value=5)))
    request = fs.GetFeaturesRequest(entity_type="customer", entity_id="c1", feature_names=["x", "s"])
    body = httpbody_pb2.HttpBody.FromString(unary(online.servicer.GetFeaturesJson, request))
    assert body.content_type == "application/json"
    answer = json.loads(body.data)
    assert (answer["entity_id"], answer["entity_type"]) == ("c1", "customer")
    assert [f["name"] for f in answer["features"]] == ["x", "s"]
    assert answer["features"][0]["status"] == "PRESENT"
    assert answer["features"][1]["status"] == "NOT_FOUND"

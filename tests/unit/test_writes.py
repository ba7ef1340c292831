"""server.core.WriteBatch: the one rows -> writes conversion (no servers)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from featurestore.serving.v1 import value_pb2 as vpb
from server.core import KeyWrite, WriteBatch, codec, entity_key

X, S = codec.encoder("x", "int64_value"), codec.encoder("s", "string_value")


def test_a_row_is_one_key_write_with_both_forms_and_a_history_record_per_value() -> None:
    batch = WriteBatch("customer")
    at = batch.event_time(1_700_000_000_123_456)
    batch.add("c1", at, [(X, vpb.Value(int64_value=7)), (S, vpb.Value(string_value="é"))])
    batch.add("c2", at, [])  # no values: nothing to write
    x_proto, x_json, x_value = X.encode(7, at)
    s_proto, s_json, s_value = S.encode("é", at)
    assert batch.online() == [
        KeyWrite(entity_key("customer", "c1"), [(b"x", x_proto), (b"x:j", x_json), (b"s", s_proto), (b"s:j", s_json)])
    ]
    assert batch.history == [
        ("customer", "c1", "x", at.datetime, x_value, x_proto[codec.TIME_BYTES :]),
        ("customer", "c1", "s", at.datetime, s_value, s_proto[codec.TIME_BYTES :]),
    ]
    assert batch.values == 2


def test_plain_values_give_the_same_writes_as_value_messages_and_none_is_no_value() -> None:
    by_message, by_plain = WriteBatch("t"), WriteBatch("t")
    at = by_message.event_time(5)
    by_message.add("e", at, [(X, vpb.Value(int64_value=-3))])
    by_plain.add_plain("e", by_plain.event_time(5), [(X, -3), (S, None)])
    assert (by_plain.online(), by_plain.history, by_plain.values) == (
        by_message.online(),
        by_message.history,
        by_message.values,
    )


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5), st.integers(0, 3)), max_size=40))
def test_latest_online_keeps_what_the_only_newer_script_would_after_every_row_in_order(
    rows: list[tuple[int, int, int]],
) -> None:
    """(entity, event time, value) rows: online, per entity the value of the newest time, the later
    row winning a tie; history keeps every row."""
    batch = WriteBatch("t", latest_online=True)
    want: dict[str, tuple[int, int]] = {}
    for entity, when, n in rows:
        batch.add_plain(f"e{entity}", batch.event_time(when), [(X, n)])
        if f"e{entity}" not in want or when >= want[f"e{entity}"][0]:
            want[f"e{entity}"] = (when, n)
    got = {w.key: w.values for w in batch.online()}
    assert got == {
        entity_key("t", e): [(b"x", X.encode(n, codec.EventTime(t))[0]), (b"x:j", X.encode(n, codec.EventTime(t))[1])]
        for e, (t, n) in want.items()
    }
    assert len(batch.history) == len(rows) == batch.values


_KIND_VALUES = {
    "float_value": st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([-0.0, 5e-324, 1e16, 1e300]),
    "int64_value": st.integers(-(2**63), 2**63 - 1) | st.sampled_from([-(2**63), 2**63 - 1, 0, -1]),
    "bool_value": st.booleans(),
    "string_value": st.text(max_size=300) | st.sampled_from(["", "é", "日本語", '"\\\n\u2028', "x" * 20_000]),
    "float_list_value": st.lists(st.floats(), max_size=5),
    "embedding_value": st.lists(st.floats(width=32), max_size=5),
    "int64_list_value": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5),
    "string_list_value": st.lists(st.text(max_size=10), max_size=5),
}
_TIMES = st.integers(-(2**40), 2**52) | st.sampled_from([0, 1_700_000_000_000_000, 1_700_000_000_123_000, -1])


@given(st.data(), st.sampled_from(sorted(_KIND_VALUES)), st.booleans(), st.booleans())
def test_columns_give_the_same_writes_as_plain_rows_for_every_kind(
    data: st.DataObject, kind: str, one_time: bool, latest_online: bool
) -> None:
    rows = data.draw(st.integers(0, 12))
    ids = data.draw(st.lists(st.sampled_from(["a", "b", "é"]), min_size=rows, max_size=rows))
    xs = data.draw(st.lists(st.none() | _KIND_VALUES[kind], min_size=rows, max_size=rows))
    ys = data.draw(st.lists(st.none() | _KIND_VALUES["float_value"], min_size=rows, max_size=rows))
    micros = data.draw(st.lists(_TIMES, min_size=rows, max_size=rows))
    x, y = codec.encoder("x", kind), codec.encoder("y", "float_value")
    columnar, plain = (WriteBatch("t", latest_online=latest_online) for _ in range(2))
    times = [columnar.event_time(m) for m in micros]
    columnar.add_columns(ids, times[0] if one_time and times else times, [(x, xs), (y, ys)])
    for i, entity_id in enumerate(ids):
        plain.add_plain(entity_id, times[0] if one_time else times[i], [(x, xs[i]), (y, ys[i])])
    assert columnar.online() == plain.online()
    assert columnar.history == plain.history
    assert columnar.values == plain.values
    stored = x.encode_many(xs, times)
    assert stored == [None if v is None else x.encode(v, at) for v, at in zip(xs, times, strict=True)]
    for v, at, forms in zip(xs, times, stored, strict=True):
        if v is not None and kind in ("float_value", "int64_value", "bool_value", "string_value"):
            value = vpb.Value()
            setattr(value, kind, v)
            assert forms == x.encode_value(value, at)  # what WriteFeatures stores

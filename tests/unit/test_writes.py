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

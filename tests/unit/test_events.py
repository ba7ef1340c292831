"""Event parsing (jobs/_events.py): Arrow's JSON reader and the event-by-event parser agree on every batch."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from jobs import EventSchema, to_batch
from jobs._events import _arrow_batch, _python_batch

SCHEMA = EventSchema(
    (
        ("customer_id", "STRING"),
        ("amount", "FLOAT"),
        ("quantity", "INT64"),
        ("gift", "BOOL"),
        ("shipped_at", "TIMESTAMP"),
        ("event_time", "TIMESTAMP"),
    ),
    "customer_id",
    "event_time",
)

_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(["2026-11-30T10:00:00+00:00", "2026-11-30 10:00:00.123456", "2026-11-30T10:00:00Z", "x"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_GOOD = st.fixed_dictionaries(
    {
        "customer_id": st.text(min_size=1, max_size=12),
        # -0.0 is left to the event-by-event parser on purpose (see _arrow_batch): not "well formed" here
        "amount": st.one_of(
            st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != 0 or str(x) == "0.0"),
            st.integers(-(2**40), 2**40),
        ),
        "quantity": st.integers(min_value=-(2**63), max_value=2**63 - 1),
        "gift": st.booleans(),
        "event_time": st.sampled_from(["2026-11-30T10:00:00+00:00", "2026-11-30T10:00:00.5Z", "2026-01-01"]),
    },
    optional={"shipped_at": st.none(), "extra": _ANY_VALUE},
)


def _encoded(event: dict[str, object]) -> bytes:
    return json.dumps(event).encode()


_RAW = st.one_of(
    _GOOD.map(_encoded),
    st.dictionaries(st.sampled_from([n for n, _ in SCHEMA.fields] + ["extra"]), _ANY_VALUE).map(_encoded),
    st.sampled_from(
        [
            b"",
            b"not json",
            b"[1, 2]",
            b'{"customer_id": "c", "event_time": "2026-11-30T10:00:00"}\n{"customer_id": "d"}',
            b'{"customer_id": "c", "customer_id": "d", "event_time": "2026-11-30T10:00:00"}',
            b'{"customer_id": "\\ud800", "event_time": "2026-11-30T10:00:00"}',
            b'{"customer_id": "\xff", "event_time": "2026-11-30T10:00:00"}',
            b'{"customer_id": "c", "amount": 1e400, "event_time": "2026-11-30T10:00:00"}',
            b'{"customer_id": "c", "amount": NaN, "event_time": "2026-11-30T10:00:00"}',
            b'{"customer_id": "c", "amount": ' + b"9" * 400 + b', "event_time": "2026-11-30T10:00:00"}',
            b'{"customer_id": "c", "event_time": 1764496800.25}',
            b'{"customer_id": "c", "event_time": "2026-11-30T10:00:00.123456789"}',
            b'\r{"customer_id": "c", "event_time": "2026-11-30T10:00:00"}',
            b'  {"customer_id": "c", "event_time": "2026-11-30T10:00:00"}  ',
            b"null",
            b"   ",
            b'{"customer_id": "c", "event_time": "2026-11-30T10:00:00"} {"customer_id": "d", "event_time": "x"}',
            b'{"customer_id": "c", "event_time": "2026-11-30T10:00:00"}{"customer_id": "d"}',
            b'{"customer_id": "c", "amount": -0, "event_time": "2026-11-30T10:00:00"}',
            b'{"customer_id": "c", "extra": ' + b"7" * 5000 + b', "event_time": "2026-11-30T10:00:00"}',
            b'{"customer_id": "c", "extra": ' + b"[" * 1500 + b"]" * 1500 + b', "event_time": "2026-11-30T10:00:00"}',
        ]
    ),
)


def _rows(batch: object) -> str:
    """Comparable rows (NaN equal to NaN)."""
    return repr(batch.to_pylist())  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(st.lists(_RAW, min_size=1, max_size=12))
def test_a_batch_parses_as_its_events_one_by_one(raws: list[bytes]) -> None:
    records = [("k", str(i), raw) for i, raw in enumerate(raws)]
    expected = _python_batch(SCHEMA, records)
    assert _rows(to_batch(SCHEMA, records)) == _rows(expected)
    singles = [row for record in records for row in to_batch(SCHEMA, [record]).to_pylist()]
    assert repr(singles) == _rows(expected)  # an event's row does not depend on its neighbours


@settings(max_examples=100, deadline=None)
@given(st.lists(_GOOD.map(_encoded), min_size=1, max_size=20))
def test_well_formed_batches_take_arrows_reader(raws: list[bytes]) -> None:
    records = [("k", str(i), raw) for i, raw in enumerate(raws)]
    fast = _arrow_batch(SCHEMA, records)
    assert fast is not None
    assert _rows(fast) == _rows(_python_batch(SCHEMA, records))
    assert fast.column("__error").null_count == len(raws)


def test_a_lone_surrogate_is_a_malformed_event_not_a_failed_batch() -> None:
    raw = b'{"customer_id": "\\ud800", "event_time": "2026-11-30T10:00:00"}'
    batch = to_batch(SCHEMA, [("k", "1", raw)])
    assert batch.column("__error").to_pylist() == ["customer_id is not a STRING"]
    assert batch.column("__raw").to_pylist() == [raw]

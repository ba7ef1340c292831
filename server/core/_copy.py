"""History rows in PostgreSQL's binary COPY form, built as the rows are encoded.

A binary COPY is a header, then per row a tuple (a 16-bit field count, then per field a
32-bit length and the field's bytes, big-endian), then a trailer. The history table's
columns (HISTORY_COLUMNS) are three texts (UTF-8), a timestamptz (64-bit microseconds since
2000-01-01 UTC) and two byteas, so a value's tuple is its entity's, feature's and event
time's parts (each prepared once) around its two stored forms: no encoding per value
beyond joining bytes. These are the bytes asyncpg's COPY of the same HistoryRecord writes
(tests compare the stored rows).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from server.core._records import HistoryRecord

if TYPE_CHECKING:
    from server.core.codec import Encoded, EventTime, ValueEncoder

HISTORY_COLUMNS = ("entity_type", "entity_id", "feature_name", "event_time", "value", "frame")
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
COPY_TRAILER = b"\xff\xff"
_INT32 = struct.Struct(">i")
_INT64 = struct.Struct(">q")
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_MICROS = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970
_ROW_HEAD = struct.pack(">h", len(HISTORY_COLUMNS))
_TIME_BYTES = 8  # server.core.codec.TIME_BYTES: a stored form's event time, before its frame
_LENGTHS = tuple(_INT32.pack(n) for n in range(1 << 12))  # every length up to 4 KiB


def copy_length(n: int) -> bytes:
    """A field's 32-bit length."""
    return _LENGTHS[n] if n < 1 << 12 else _INT32.pack(n)


def copy_text(text: str) -> bytes:
    """A text field: its length and UTF-8 bytes."""
    raw = text.encode()
    return copy_length(len(raw)) + raw


def copy_time(micros: int) -> bytes:
    """A timestamptz field at `micros` since 1970."""
    return b"\x00\x00\x00\x08" + _INT64.pack(micros - _PG_EPOCH_MICROS)


def copy_tuple(record: HistoryRecord) -> bytes:
    """One history row's tuple (what WriteBatch builds from its parts)."""
    entity_type, entity_id, feature, when, value, frame = record
    micros = (when - _PG_EPOCH) // timedelta(microseconds=1) + _PG_EPOCH_MICROS
    return b"".join(
        (
            _ROW_HEAD,
            copy_text(entity_type),
            copy_text(entity_id),
            copy_text(feature),
            copy_time(micros),
            copy_length(len(value)),
            value,
            copy_length(len(frame)),
            frame,
        )
    )


def copy_data(tuples: Sequence[bytes]) -> bytes:
    """A whole binary COPY of `tuples`."""
    return b"".join((COPY_HEADER, *tuples, COPY_TRAILER))


def copy_tuples(records: Iterable[HistoryRecord]) -> list[bytes]:
    """The tuples of HistoryRecords."""
    return [copy_tuple(r) for r in records]


def _month(when: datetime) -> date:
    return date(when.year, when.month, 1)


def decode_tuples(tuples: Iterable[bytes]) -> list[HistoryRecord]:
    """The HistoryRecords of tuples (for tests and in-memory sinks; the store sends the bytes)."""
    out: list[HistoryRecord] = []
    for data in tuples:
        pos, fields = 2, []
        for _ in range(len(HISTORY_COLUMNS)):
            (n,) = _INT32.unpack_from(data, pos)
            fields.append(data[pos + 4 : pos + 4 + n])
            pos += 4 + n
        if pos != len(data):
            raise ValueError("not one history row's tuple")
        (micros,) = _INT64.unpack(fields[3])
        when = _PG_EPOCH + timedelta(microseconds=micros)
        out.append((fields[0].decode(), fields[1].decode(), fields[2].decode(), when, fields[4], fields[5]))
    return out


class HistoryRows:
    """The history rows of a WriteBatch (of one entity type): `tuples`, one binary COPY tuple per
    value (HISTORY_COLUMNS), and per source row its event time and values, for `months` and `newest`."""

    __slots__ = ("_rows", "entity_type", "tuples")

    def __init__(self, entity_type: str) -> None:
        self.entity_type = entity_type
        self.tuples: list[bytes] = []
        self._rows: list[tuple[EventTime, Sequence[tuple[ValueEncoder, Encoded]]]] = []

    def __len__(self) -> int:
        return len(self.tuples)

    def add(self, head: bytes, at: EventTime, encoded: Sequence[tuple[ValueEncoder, Encoded]]) -> None:
        """One row's values: `head` is the tuple's start up to the feature (_ROW_HEAD, the entity's texts)."""
        time_part, tuples, lengths = at.copy_time, self.tuples, _LENGTHS
        for encoder, (proto, _, serialized) in encoded:
            n, m = len(serialized), len(proto) - _TIME_BYTES
            tuples.append(
                b"".join(
                    (
                        head,
                        encoder.copy_name,
                        time_part,
                        lengths[n] if n < 1 << 12 else _INT32.pack(n),
                        serialized,
                        lengths[m] if m < 1 << 12 else _INT32.pack(m),
                        proto[_TIME_BYTES:],  # the frame: the stored protobuf form after its time
                    )
                )
            )
        self._rows.append((at, encoded))

    def months(self) -> set[date]:
        """The months of the rows' event times (the history partitions they need)."""
        return {_month(at.datetime) for at in {at for at, _ in self._rows}}

    def newest(self) -> dict[str, datetime]:
        """Each feature's newest event time among the rows."""
        newest: dict[str, EventTime] = {}
        for at, encoded in self._rows:
            for encoder, _ in encoded:
                old = newest.get(encoder.name)
                if old is None or at.key > old.key:
                    newest[encoder.name] = at
        return {name: at.datetime for name, at in newest.items()}

    def records(self) -> list[HistoryRecord]:
        """The rows as HistoryRecords."""
        return decode_tuples(self.tuples)


def row_head(entity_type: bytes, entity_id: str) -> bytes:
    """The start of every tuple of one entity's row: the field count and the two entity texts
    (`entity_type` already as copy_text gives it)."""
    return _ROW_HEAD + entity_type + copy_text(entity_id)

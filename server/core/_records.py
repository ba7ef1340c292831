"""What a write is made of, for the online store (KeyWrite) and the history (HistoryRow)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple


def entity_key(entity_type: str, entity_id: str) -> bytes:
    """The Redis key of an entity's hash (layout: server/online/_redis.py)."""
    return b"f:" + entity_type.encode() + b":" + entity_id.encode()


def entity_keys(entity_type: str, entity_ids: Sequence[str]) -> list[bytes]:
    """`entity_key` of each id (the prefix made once)."""
    prefix = entity_key(entity_type, "")
    return [prefix + entity_id.encode() for entity_id in entity_ids]


@dataclass(frozen=True, slots=True)
class KeyWrite:
    """The values to write into one entity's hash: (field, stored value) pairs.

    Each value is two consecutive pairs, its protobuf form under the feature's name
    then its JSON form under `<name>:j` (see server.core.codec); the online store files
    both under the value's kind and its write script keeps or skips both on the first
    one's time.
    """

    key: bytes
    values: Sequence[tuple[bytes, bytes]]


class HistoryRow(NamedTuple):
    """One feature value as it was true at `event_time`.

    `value` is a serialized Value message; `frame` the framed FeatureValue served for it.
    A tuple in the history table's column order, so a row is also a HistoryRecord: the
    write path hands its rows to COPY as they are.
    """

    entity_type: str
    entity_id: str
    feature_name: str
    event_time: datetime
    value: bytes
    frame: bytes


# A HistoryRow as a plain tuple, in the history table's column order (the pipeline's bulk form).
HistoryRecord = tuple[str, str, str, datetime, bytes, bytes]

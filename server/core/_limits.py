"""Per-request and per-call bounds of the serving methods (values from Settings)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-request and per-call bounds (see Settings for each)."""

    max_values: int
    max_list_items: int = 16_384  # items of one list or embedding value in a write
    max_stream_values: int = 1_000_000
    max_stream_seconds: float = 600.0
    max_clock_skew: float = 300.0
    min_event_seconds: int = 0  # the earliest event time a write accepts, in seconds since the epoch
    max_message_bytes: int = 16 * 1024 * 1024

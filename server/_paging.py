"""AIP-158 pagination: page sizes and opaque page tokens.

A token carries the listing's cursor and a fingerprint of its filters, so a
token cannot be replayed with other filters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence

from server.core.errors import FieldViolation, invalid_argument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(
    requested: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE, field: str = "page_size"
) -> int:
    """The page size to use: `default` for 0, at most `maximum`; negative is an error naming `field`."""
    if requested < 0:
        raise invalid_argument([FieldViolation(field, f"must not be negative, got {requested}")])
    return min(requested or default, maximum)


def _fingerprint(filters: Sequence[object]) -> str:
    return hashlib.sha256(json.dumps([str(f) for f in filters]).encode()).hexdigest()[:12]


def encode_token(cursor: str | None, filters: Sequence[object]) -> str:
    """The next_page_token for `cursor`; empty when there is no next page."""
    if cursor is None:
        return ""
    raw = json.dumps({"c": cursor, "f": _fingerprint(filters)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, filters: Sequence[object]) -> str:
    """The cursor in a page_token ("" for the first page); INVALID_ARGUMENT if it is not ours."""
    if not token:
        return ""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        cursor, fingerprint = data["c"], data["f"]
    except (ValueError, binascii.Error, KeyError, TypeError):
        raise invalid_argument([FieldViolation("page_token", "is not a token returned by this listing")]) from None
    if fingerprint != _fingerprint(filters) or not isinstance(cursor, str):
        raise invalid_argument([FieldViolation("page_token", "was issued for a listing with other filters")])
    return cursor

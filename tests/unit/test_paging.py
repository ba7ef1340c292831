"""Page sizes and page tokens (server/_paging.py), through its public functions only."""

from __future__ import annotations

import grpc
import pytest

from server import _paging
from server.core.errors import ServiceError


def violation(error: ServiceError, field: str) -> str:
    found = {v.field: v.description for v in error.violations}
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    assert field in found, found
    return found[field]


def test_zero_is_the_default_page_size_and_large_ones_are_capped() -> None:
    assert _paging.page_size(0) == _paging.DEFAULT_PAGE_SIZE
    assert _paging.page_size(7) == 7
    assert _paging.page_size(_paging.MAX_PAGE_SIZE + 1) == _paging.MAX_PAGE_SIZE


def test_a_negative_page_size_is_invalid() -> None:
    with pytest.raises(ServiceError) as info:
        _paging.page_size(-1)
    assert "negative" in violation(info.value, "page_size")


@pytest.mark.parametrize("cursor", ["feature_a", "0", "name with spaces/and:colons", "ü"])
def test_a_token_gives_back_its_cursor_for_the_same_filters(cursor: str) -> None:
    filters = ["customer", ("owner", 3)]
    token = _paging.encode_token(cursor, filters)
    assert token
    assert cursor not in token  # opaque
    assert _paging.decode_token(token, filters) == cursor


def test_no_next_page_is_an_empty_token_and_an_empty_token_is_the_first_page() -> None:
    assert _paging.encode_token(None, ["x"]) == ""
    assert _paging.decode_token("", ["x"]) == ""


def test_a_token_is_refused_with_other_filters() -> None:
    token = _paging.encode_token("after_me", ["customer"])
    with pytest.raises(ServiceError) as info:
        _paging.decode_token(token, ["product"])
    assert "other filters" in violation(info.value, "page_token")


@pytest.mark.parametrize("token", ["not a token", "!!!", "e30", "W10", "bm90IGpzb24", "eyJjIjogMX0"])
def test_a_token_not_issued_by_the_listing_is_invalid_argument(token: str) -> None:
    with pytest.raises(ServiceError) as info:
        _paging.decode_token(token, ["customer"])
    violation(info.value, "page_token")

"""The client refuses to send a bearer token in the clear to another machine."""

from __future__ import annotations

import pytest

from featurestore import AsyncClient, Client


@pytest.mark.parametrize("target", ["feature-store.example.com:443", "10.0.0.7:50051", "dns:///fs.internal:50051"])
def test_a_token_over_plaintext_to_another_host_is_refused(target: str) -> None:
    with pytest.raises(ValueError, match="in the clear"):
        Client(target, token="secret-token")
    with pytest.raises(ValueError, match="in the clear"):
        Client(target, token_callback=lambda: "secret-token")


@pytest.mark.parametrize(
    "target", ["127.0.0.1:50051", "localhost:50051", "[::1]:50051", "dns:///localhost:50051", "unix:/tmp/fs.sock"]
)
def test_loopback_and_tls_may_carry_a_token(target: str) -> None:
    Client(target, token="secret-token").close()
    Client("feature-store.example.com:443", token="secret-token", tls=True).close()
    Client("feature-store.example.com:443").close()  # no token: plaintext is the caller's choice


def test_the_async_client_checks_the_same() -> None:
    with pytest.raises(ValueError, match="in the clear"):
        AsyncClient("feature-store.example.com:443", token="secret-token")

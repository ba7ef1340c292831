"""Bearer credentials: JWTs verified against a JWKS file, and static API keys from a file of hashes.

Both files are re-read when they change (`refresh`, called every few seconds by the
authenticator's watcher), so keys rotate and API keys are revoked without a restart. A file
that becomes unreadable or invalid keeps the last good contents (and says so in the log).
No message here, raised or logged, ever holds a token, a key or a file's contents.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import jwt

from server.auth._roles import Role, highest_role

_log = logging.getLogger(__name__)
T = TypeVar("T")

# Asymmetric algorithms only: `none` and HMAC (HS256 "signed" with the public key) are refused.
ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a token's subject or an API key's principal, with its role."""

    subject: str
    role: Role
    via: str  # "jwt", "api_key" or "anonymous"


class CredentialError(Exception):
    """A presented credential is not valid. The message says why, and never holds the credential."""


class _Watched(Generic[T]):
    """A file parsed by `parse`, parsed again when its size, time or inode changes."""

    def __init__(self, path: Path, parse: Callable[[bytes], T]) -> None:
        self._path, self._parse = path, parse
        self._stamp = self._stat()
        try:
            self.value = parse(path.read_bytes())
        except (OSError, ValueError) as err:
            raise SystemExit(f"{path}: {err}") from None

    def _stat(self) -> tuple[int, int, int]:
        stat = os.stat(self._path)  # follows the symlink a Kubernetes Secret volume swaps
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def refresh(self) -> bool:
        """Re-read the file if it changed; whether the value changed."""
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return False
            value = self._parse(self._path.read_bytes())
        except (OSError, ValueError) as err:
            _log.error("%s: cannot reload (%s); keeping the previous contents", self._path, type(err).__name__)
            return False
        self._stamp, self.value = stamp, value
        _log.info("%s: reloaded", self._path)
        return True


# -- JWTs -------------------------------------------------------------------------


def _parse_jwks(data: bytes) -> dict[str, dict[str, Any]]:
    """Signing keys by kid ("" for a key without one) from a JWKS; symmetric keys are skipped."""
    keys = json.loads(data).get("keys")
    if not isinstance(keys, list):
        raise ValueError("a JWKS is an object with a list of keys")
    found = {}
    for key in keys:
        if isinstance(key, dict) and key.get("kty") in {"RSA", "EC", "OKP"} and key.get("use", "sig") == "sig":
            jwt.PyJWK(key)  # refuses a malformed key now, not at the first token
            found[str(key.get("kid", ""))] = key
    if not found:
        raise ValueError("the JWKS holds no asymmetric signing key")
    return found


class JwtVerifier:
    """Verifies JWTs (signature, issuer, audience, exp, nbf) against the JWKS file's keys."""

    def __init__(self, jwks_file: Path, issuer: str, audience: str, *, leeway: float, roles_claim: str) -> None:
        self._jwks = _Watched(jwks_file, _parse_jwks)
        self._issuer, self._audience, self._leeway = issuer, audience, leeway
        self._roles_claim = roles_claim

    def verify(self, token: str, now: float) -> tuple[Principal, float]:
        """The token's principal, and until when it stays valid (its exp, plus the leeway)."""
        principal, expires = self._verify(token)
        return principal, expires + self._leeway

    def refresh(self) -> bool:
        """Pick up a changed JWKS; whether it changed (tokens verified with the old keys must be verified again)."""
        return self._jwks.refresh()

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise CredentialError("the token is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise CredentialError("the token's algorithm is not accepted (asymmetric signatures only)")
        claims = self._decode(token, self._key(header.get("kid"), alg), alg)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise CredentialError("the token has no subject")
        roles = claims.get(self._roles_claim, [])
        names = roles.split() if isinstance(roles, str) else roles if isinstance(roles, list) else []
        return Principal(subject, highest_role(names), "jwt"), float(claims["exp"])

    def _key(self, kid: object, alg: str) -> jwt.PyJWK:
        keys = self._jwks.value
        jwk = keys.get(kid) if isinstance(kid, str) else next(iter(keys.values())) if len(keys) == 1 else None
        if jwk is None:
            raise CredentialError("the token's signing key is not in the JWKS")
        if jwk.get("alg", alg) != alg or jwk["kty"] != _KEY_TYPES[alg[:2]]:
            raise CredentialError("the token's algorithm does not match its key")
        try:
            return jwt.PyJWK(jwk, alg)
        except jwt.PyJWTError:
            raise CredentialError("the token's algorithm does not match its key") from None

    def _decode(self, token: str, key: jwt.PyJWK, alg: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise CredentialError("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise CredentialError("the token is not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise CredentialError("the token is not for this audience") from None
        except jwt.InvalidIssuerError:
            raise CredentialError("the token is not from the accepted issuer") from None
        except jwt.MissingRequiredClaimError as err:
            raise CredentialError(f"the token has no {err.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise CredentialError("the token's signature does not verify") from None
        except jwt.PyJWTError:
            raise CredentialError("the token is not valid") from None


# -- API keys ---------------------------------------------------------------------


def hash_key(key: str) -> str:
    """The hex SHA-256 of an API key, as its file lists it."""
    return hashlib.sha256(key.encode()).hexdigest()


def _parse_api_keys(data: bytes) -> dict[bytes, Principal]:
    """{"api_keys": [{"sha256": hex, "principal": name, "roles": [...]}, ...]} by digest."""
    entries = json.loads(data).get("api_keys")
    if not isinstance(entries, list):
        raise ValueError('an API key file is an object with a list "api_keys"')
    found = {}
    for n, entry in enumerate(entries):
        try:
            digest = bytes.fromhex(entry["sha256"])
            principal, roles = entry["principal"], entry["roles"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"api_keys[{n}] needs sha256 (hex), principal and roles") from None
        if len(digest) != 32 or not isinstance(principal, str) or not isinstance(roles, list):
            raise ValueError(f"api_keys[{n}]: sha256 is 64 hex digits, principal a string, roles a list")
        found[digest] = Principal(principal, highest_role(roles), "api_key")
    return found


class ApiKeys:
    """Static API keys of service accounts, known by their SHA-256 only."""

    def __init__(self, path: Path) -> None:
        self._file = _Watched(path, _parse_api_keys)

    def verify(self, key: str) -> Principal:
        found = self._file.value.get(hashlib.sha256(key.encode()).digest())
        if found is None:
            raise CredentialError("unknown API key")
        return found

    def refresh(self) -> bool:
        """Pick up a changed key file; whether it changed (a revoked key must be refused from now)."""
        return self._file.refresh()

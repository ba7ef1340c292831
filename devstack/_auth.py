"""`make up AUTH=on`: a local identity provider for trying authentication in one step.

A signing key (kept in the state folder, so tokens survive a restart of the stack), its
JWKS for the server, and two tokens it signs at every start: a reader's and an admin's. For
a laptop only: anyone who can read the state folder can mint tokens.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "https://featurestore.localhost/dev-idp"
AUDIENCE = "featurestore-local"
KID = "dev-1"


@dataclass(frozen=True)
class DevAuth:
    """The server's JWKS file and the tokens `make up AUTH=on` prints (also in `<folder>/<role>.token`)."""

    folder: Path
    reader_token: str
    admin_token: str
    hours: int

    @property
    def jwks_file(self) -> Path:
        return self.folder / "jwks.json"

    def server_args(self) -> list[str]:
        """The server's flags: auth required, tokens of this provider."""
        return [
            "--auth-mode",
            "required",
            "--auth-jwks-file",
            str(self.jwks_file),
            "--auth-issuer",
            ISSUER,
            "--auth-audience",
            AUDIENCE,
        ]


def _private(path: Path, data: bytes) -> None:
    """Write `data` to `path`, readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _signing_key(folder: Path) -> ec.EllipticCurvePrivateKey:
    path = folder / "signing-key.pem"
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _private(path, pem)
    return key


def dev_auth(folder: Path, hours: int = 24) -> DevAuth:
    """The provider in `folder` (its key made on first use); tokens valid for `hours` from now."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    key = _signing_key(folder)
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    (folder / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": KID, "alg": "ES256", "use": "sig"}]}))
    now = int(time.time())
    tokens = {}
    for role in ("reader", "admin"):
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": f"dev-{role}", "roles": [role], "iat": now}
        token = jwt.encode(claims | {"exp": now + hours * 3600}, key, "ES256", headers={"kid": KID})
        _private(folder / f"{role}.token", token.encode())
        tokens[role] = token
    return DevAuth(folder, tokens["reader"], tokens["admin"], hours)

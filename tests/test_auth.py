"""Authentication, authorization and audit (issue 13), against real servers started with auth settings.

The test is its own identity provider: it makes RSA, EC and Ed25519 keys with `cryptography`,
writes their JWKS and an API key file, and signs tokens with pyjwt. Every role x every RPC of
the two services over gRPC direct; bad tokens of every kind; key rotation and API key
revocation without a restart; REST through Envoy; audit lines; no secret in any log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from google.api import annotations_pb2
from google.protobuf import descriptor
from grpc_health.v1 import health_pb2

from devstack import Proc, dev_auth, free_port, load_demo, start_envoy
from featurestore import PermissionDenied, error_details
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from featurestore.registry.v1 import registry_service_pb2_grpc as rs_grpc
from jobs.batch_pipeline import load_features
from server import auth, core
from tests._helpers import FAST_SERVER_ARGS, SECRETS, Processes, eventually, grpcurl, health_status, reaped

ISSUER, AUDIENCE = "https://idp.featurestore.test", "featurestore-api"
ROLE_NAMES = ["reader", "writer", "editor", "admin"]
SERVICES = [core.REGISTRY_SERVICE, core.FEATURE_STORE_SERVICE]
METHODS = [(service, method) for service in SERVICES for method in service.methods]
Metadata = tuple[tuple[str, str], ...]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _write_json(path: Path, value: object) -> None:
    """Replace `path` whole (a new inode, as a Kubernetes Secret update does)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


@dataclass
class Idp:
    """The test's identity provider: signing keys, their JWKS file, tokens, and every secret it handed out."""

    directory: Path
    rsa_key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    ec_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    ed_key: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    secrets: list[str] = field(default_factory=list)

    @property
    def jwks_file(self) -> Path:
        return self.directory / "jwks.json"

    @property
    def api_keys_file(self) -> Path:
        return self.directory / "api-keys.json"

    def publish(self, *kids: str) -> None:
        """Write the JWKS with the public keys named (rsa-1, ec-1, ed-1)."""
        keys = {"rsa-1": (self.rsa_key, "RS256"), "ec-1": (self.ec_key, "ES256"), "ed-1": (self.ed_key, "EdDSA")}
        jwks = []
        for kid in kids:
            private, alg = keys[kid]
            jwk = json.loads(_public_jwk(private))
            jwks.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
        _write_json(self.jwks_file, {"keys": jwks})

    def grant_keys(self, keys: dict[str, tuple[str, str]]) -> None:
        """Write the API key file: key -> (principal, role)."""
        entries = [
            {"sha256": auth.hash_key(key), "principal": who, "roles": [role]} for key, (who, role) in keys.items()
        ]
        for key in keys:
            self.handed_out(key)
        _write_json(self.api_keys_file, {"api_keys": entries})

    def token(self, roles: list[str] | str | None, *, kid: str = "rsa-1", **claims: Any) -> str:
        """A token signed by `kid`, valid for 10 minutes unless `claims` say otherwise."""
        now = int(time.time())
        body: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": f"user-{uuid.uuid4().hex[:8]}"}
        body |= {"iat": now, "exp": now + 600} | ({"roles": roles} if roles is not None else {})
        body |= claims
        private: Any = {"rsa-1": self.rsa_key, "ec-1": self.ec_key, "ed-1": self.ed_key}[kid]
        alg = {"rsa-1": "RS256", "ec-1": "ES256", "ed-1": "EdDSA"}[kid]
        token = jwt.encode({k: v for k, v in body.items() if v is not None}, private, alg, headers={"kid": kid})
        return self.handed_out(token)

    def forged(self, header: dict[str, Any], signature: bytes | None = None, key: bytes = b"") -> str:
        """A token with a header of our choosing: unsigned (`alg: none`) or HMAC-signed with `key`."""
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 600, "roles": ["admin"]}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        if signature is None and key:
            signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
        return self.handed_out(f"{signing_input}.{_b64(signature or b'')}")

    def handed_out(self, secret: str) -> str:
        """Remember `secret`: this module's logs, and the whole run's, are searched for it."""
        self.secrets.append(secret)
        SECRETS.add(secret)
        return secret

    def public_pem(self) -> bytes:
        return self.rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _public_jwk(private: Any) -> str:
    public = private.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        return str(jwt.algorithms.RSAAlgorithm.to_jwk(public))
    if isinstance(public, ec.EllipticCurvePublicKey):
        return str(jwt.algorithms.ECAlgorithm.to_jwk(public))
    return str(jwt.algorithms.OKPAlgorithm.to_jwk(public))


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def auth_args(idp: Idp, mode: str = "required", *extra: str) -> list[str]:
    files = ["--auth-jwks-file", str(idp.jwks_file), "--auth-api-keys-file", str(idp.api_keys_file)]
    claims = ["--auth-issuer", ISSUER, "--auth-audience", AUDIENCE, "--auth-reload-interval", "0.2"]
    return [*FAST_SERVER_ARGS, "--auth-mode", mode, *files, *claims, *extra]


def new_idp(directory: Path) -> Idp:
    directory.mkdir(parents=True, exist_ok=True)
    idp = Idp(directory)
    idp.publish("rsa-1", "ec-1", "ed-1")
    idp.grant_keys({f"fsk_{uuid.uuid4().hex}": ("pipeline", "writer")})
    return idp


@dataclass
class AuthServer:
    proc: Proc
    idp: Idp

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.proc.port}"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory, postgres_dsn: str, redis_url: str) -> Iterator[AuthServer]:
    """One server with auth required (JWKS and API keys) for the module; its own tests leave its files alone."""
    directory = tmp_path_factory.mktemp("auth")
    idp = new_idp(directory)
    with Processes(directory) as procs:
        yield AuthServer(procs.server(postgres_dsn, redis_url, auth_args(idp)), idp)


@pytest.fixture(scope="module")
def channel(auth_server: AuthServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(auth_server.target) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


@pytest.fixture(scope="module")
def auth_envoy(auth_server: AuthServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """Envoy in front of the module's server: REST and native gRPC on one port."""
    proc = reaped(lambda: start_envoy(tmp_path_factory.mktemp("envoy"), free_port(), auth_server.proc.port))
    yield proc
    proc.stop()


def call(
    channel: grpc.Channel, service: descriptor.ServiceDescriptor, name: str, metadata: Metadata
) -> grpc.RpcError | None:
    """Call `service`'s method `name` with an empty request; its error, None if it succeeded."""
    method = service.methods_by_name[name]
    path, same = f"/{service.full_name}/{name}", (lambda b: b)
    try:
        if method.client_streaming:
            channel.stream_unary(path, same, same)(iter([b""]), metadata=metadata, timeout=20)
        elif method.server_streaming:
            for _ in channel.unary_stream(path, same, same)(b"", metadata=metadata, timeout=20):
                pass
        else:
            channel.unary_unary(path, same, same)(b"", metadata=metadata, timeout=20)
    except grpc.RpcError as err:
        return err
    return None


AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def assert_refused(error: grpc.RpcError | None, code: grpc.StatusCode) -> None:
    assert error is not None, f"allowed, expected {code.name}"
    details = error_details(error)
    assert (details.code, details.reason) == (code, code.name), details


def assert_allowed(error: grpc.RpcError | None) -> None:
    """Through authorization: success, or the servicer's own answer to an empty request."""
    assert error is None or error.code() not in AUTH_CODES, error_details(error)


# -- the table ----------------------------------------------------------------------


def test_every_rpc_of_the_services_has_a_role() -> None:
    declared = {f"/{service.full_name}/{method.name}" for service, method in METHODS}
    missing = declared - set(auth.METHOD_ROLES)
    assert not missing, f"RPCs without an entry in server/auth/_roles.py METHOD_ROLES: {sorted(missing)}"
    stale = {m for m in auth.METHOD_ROLES if m.startswith("/featurestore.")} - declared
    assert not stale, f"METHOD_ROLES names RPCs that do not exist: {sorted(stale)}"
    assert all(auth.METHOD_ROLES[m] is not None for m in declared), "no feature store RPC is open to anyone"


def test_roles_are_as_the_issue_defines_them() -> None:
    by_role: dict[auth.Role | None, set[str]] = {}
    for method, role in auth.METHOD_ROLES.items():
        by_role.setdefault(role, set()).add(method.rsplit("/", 1)[1])
    assert by_role[auth.Role.WRITER] == {"WriteFeatures", "PushFeatures"}
    assert by_role[auth.Role.EDITOR] == {
        f"{verb}{kind}" for verb in ("Create", "Update", "Delete") for kind in ("Feature", "FeatureGroup")
    }
    assert {m for m, r in auth.METHOD_ROLES.items() if r is auth.Role.EDITOR} == auth.AUDITED


# -- every role x every RPC, gRPC direct ------------------------------------------------


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_each_role_may_call_what_the_table_says(role: str, auth_server: AuthServer, channel: grpc.Channel) -> None:
    metadata = bearer(auth_server.idp.token([role]))
    granted = auth.ROLES[role]
    for service, method in METHODS:
        error = call(channel, service, method.name, metadata)
        needed = auth.METHOD_ROLES[f"/{service.full_name}/{method.name}"]
        assert needed is not None
        if granted >= needed:
            assert_allowed(error)
        else:
            assert_refused(error, grpc.StatusCode.PERMISSION_DENIED)


def rest_routes() -> list[tuple[str, str, str, bool]]:
    """(full method, HTTP verb, a concrete path, has a body) of every RPC with a REST mapping."""
    routes = []
    for service, method in METHODS:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        if verb is None:
            continue
        path = re.sub(r"\{[^}]*\}", "auth_probe", getattr(rule, verb))
        routes.append((f"/{service.full_name}/{method.name}", verb.upper(), path, bool(rule.body)))
    return routes


def rest_status(port: int, verb: str, path: str, token: str | None, body: bool) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
        conn.request(verb, path, body=b"{}" if body else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_every_rest_route_maps_to_an_rpc_of_the_table() -> None:
    routes = rest_routes()
    assert len(routes) >= 15
    assert all(auth.METHOD_ROLES[method] is not None for method, *_ in routes)


@pytest.mark.parametrize("role", [None, *ROLE_NAMES])
def test_each_role_over_rest_through_envoy(role: str | None, auth_server: AuthServer, auth_envoy: Proc) -> None:
    """The same table through Envoy's transcoder: 401 without a token, 403 below the role, else through."""
    token = auth_server.idp.token([role]) if role else None
    granted = auth.ROLES[role] if role else auth.Role.NONE
    for method, verb, path, body in rest_routes():
        status, answer = rest_status(auth_envoy.port, verb, path, token, body)
        needed = auth.METHOD_ROLES[method]
        assert needed is not None
        where = f"{role} {verb} {path}: {status} {answer[:200]!r}"
        if token is None:
            assert status == 401, where
            assert json.loads(answer)["details"][0]["reason"] == "UNAUTHENTICATED", where
        elif granted >= needed:
            assert status not in (401, 403), where
        else:
            assert status == 403, where
            assert json.loads(answer)["details"][0]["reason"] == "PERMISSION_DENIED", where


def test_native_grpc_through_envoy_carries_the_token(auth_server: AuthServer, auth_envoy: Proc) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{auth_envoy.port}") as ch:
        reader = bearer(auth_server.idp.token(["reader"]))
        assert_allowed(call(ch, core.REGISTRY_SERVICE, "ListFeatures", reader))
        assert_refused(call(ch, core.REGISTRY_SERVICE, "DeleteFeature", reader), grpc.StatusCode.PERMISSION_DENIED)
        assert_refused(call(ch, core.REGISTRY_SERVICE, "ListFeatures", ()), grpc.StatusCode.UNAUTHENTICATED)


def test_without_a_token_every_rpc_is_unauthenticated(channel: grpc.Channel) -> None:
    for service, method in METHODS:
        assert_refused(call(channel, service, method.name, ()), grpc.StatusCode.UNAUTHENTICATED)


def test_a_token_without_a_role_may_call_nothing(auth_server: AuthServer, channel: grpc.Channel) -> None:
    metadata = bearer(auth_server.idp.token(None))
    for service, method in METHODS:
        assert_refused(call(channel, service, method.name, metadata), grpc.StatusCode.PERMISSION_DENIED)


@pytest.mark.parametrize("kid", ["ec-1", "ed-1"])
def test_ec_and_eddsa_tokens_and_a_space_separated_roles_claim(
    kid: str, auth_server: AuthServer, channel: grpc.Channel
) -> None:
    metadata = bearer(auth_server.idp.token("reader writer", kid=kid))
    assert_allowed(call(channel, core.FEATURE_STORE_SERVICE, "WriteFeatures", metadata))
    assert_refused(call(channel, core.REGISTRY_SERVICE, "CreateFeature", metadata), grpc.StatusCode.PERMISSION_DENIED)


def test_api_key_of_a_service_account(auth_server: AuthServer, channel: grpc.Channel) -> None:
    key = auth_server.idp.secrets[0]  # granted by new_idp: principal pipeline, role writer
    assert_allowed(call(channel, core.FEATURE_STORE_SERVICE, "PushFeatures", bearer(key)))
    assert_allowed(call(channel, core.FEATURE_STORE_SERVICE, "GetFeatures", bearer(key)))
    denied = call(channel, core.REGISTRY_SERVICE, "DeleteFeature", bearer(key))
    assert_refused(denied, grpc.StatusCode.PERMISSION_DENIED)
    assert "'pipeline'" in error_details(denied).message  # type: ignore[arg-type]
    unknown = call(channel, core.FEATURE_STORE_SERVICE, "GetFeatures", bearer("fsk_" + uuid.uuid4().hex))
    assert_refused(unknown, grpc.StatusCode.UNAUTHENTICATED)


# -- bad tokens -------------------------------------------------------------------------


def _bad_tokens(idp: Idp) -> dict[str, str]:
    now = int(time.time())
    other = Idp(idp.directory)  # same kids, other keys: a wrong signature
    other.secrets = idp.secrets
    hs_header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    return {
        "expired": idp.token(["admin"], exp=now - 120, iat=now - 720),
        "not yet valid": idp.token(["admin"], nbf=now + 300),
        "issued in the future": idp.token(["admin"], iat=now + 300),
        "wrong audience": idp.token(["admin"], aud="someone-else"),
        "wrong issuer": idp.token(["admin"], iss="https://evil.test"),
        "no expiry": idp.token(["admin"], exp=None),
        "alg none": idp.forged({"alg": "none", "typ": "JWT"}),
        "alg none, kid": idp.forged({"alg": "none", "typ": "JWT", "kid": "rsa-1"}),
        "HS256 with the public key": idp.forged(hs_header, key=idp.public_pem()),
        "wrong signature": other.token(["admin"]),
        "unknown kid": idp.forged({"alg": "RS256", "typ": "JWT", "kid": "rsa-9"}, signature=b"x" * 256),
        "garbage": "not.a.jwt",
    }


def test_invalid_tokens_are_unauthenticated(auth_server: AuthServer, channel: grpc.Channel) -> None:
    for what, token in _bad_tokens(auth_server.idp).items():
        error = call(channel, core.FEATURE_STORE_SERVICE, "GetFeatures", bearer(token))
        assert error is not None, what
        assert_refused(error, grpc.StatusCode.UNAUTHENTICATED)
    basic = call(channel, core.REGISTRY_SERVICE, "ListFeatures", (("authorization", "Basic dXNlcjpwYXNz"),))
    assert_refused(basic, grpc.StatusCode.UNAUTHENTICATED)


def test_clock_skew_within_the_leeway_is_accepted(auth_server: AuthServer, channel: grpc.Channel) -> None:
    now = int(time.time())
    late = auth_server.idp.token(["reader"], exp=now - 10, iat=now - 600)  # leeway: 30 s
    early = auth_server.idp.token(["reader"], nbf=now + 10)
    for token in (late, early):
        assert_allowed(call(channel, core.REGISTRY_SERVICE, "ListFeatures", bearer(token)))


def test_health_and_reflection_stay_open(auth_server: AuthServer) -> None:
    assert health_status(auth_server.target) == health_pb2.HealthCheckResponse.SERVING
    listed = grpcurl(auth_server.target, "list")
    assert listed.returncode == 0, listed.stderr
    assert core.REGISTRY_SERVICE.full_name in listed.stdout.split()


# -- audit ------------------------------------------------------------------------------


def audit_lines(proc: Proc) -> list[dict[str, Any]]:
    lines = proc.log.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith('{"audit":')]


def test_registry_changes_and_denials_are_audited(auth_server: AuthServer, channel: grpc.Channel) -> None:
    idp, name = auth_server.idp, f"audited_{uuid.uuid4().hex[:8]}"
    editor, reader = idp.token(["editor"], sub="alice"), idp.token(["reader"], sub="bob")
    stub = rs_grpc.RegistryServiceStub(channel)
    feature = pb.Feature(name=name, entity_type="customer", value_type=pb.INT64, frequency=pb.REALTIME)
    stub.CreateFeature(rs.CreateFeatureRequest(feature=feature), metadata=bearer(editor), timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.DeleteFeature(rs.DeleteFeatureRequest(name=name), metadata=bearer(reader), timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.CreateFeature(rs.CreateFeatureRequest(feature=feature), metadata=bearer(editor), timeout=10)
    stub.DeleteFeature(rs.DeleteFeatureRequest(name=name), metadata=bearer(editor), timeout=10)

    def seen() -> list[tuple[str, str, str, str]]:
        mine = [a for a in audit_lines(auth_server.proc) if a["resource"] == name]
        return [(a["subject"], a["method"].rsplit("/", 1)[1], a["outcome"], a["via"]) for a in mine]

    expected = [
        ("alice", "CreateFeature", "OK", "jwt"),
        ("bob", "DeleteFeature", "PERMISSION_DENIED", "jwt"),
        ("alice", "CreateFeature", "ALREADY_EXISTS", "jwt"),
        ("alice", "DeleteFeature", "OK", "jwt"),
    ]
    eventually(lambda: seen() == expected, timeout=10)
    denial = next(a for a in audit_lines(auth_server.proc) if a["resource"] == name and a["subject"] == "bob")
    assert denial["role"] == "reader"
    assert "needs editor" in denial["detail"]
    assert denial["peer"]


def test_each_revision_names_who_made_it_over_grpc_and_rest(
    auth_server: AuthServer, channel: grpc.Channel, auth_envoy: Proc
) -> None:
    idp, name = auth_server.idp, f"revised_{uuid.uuid4().hex[:8]}"
    alice, bob = idp.token(["editor"], sub="alice"), idp.token(["admin"], sub="bob")
    stub = rs_grpc.RegistryServiceStub(channel)
    feature = pb.Feature(name=name, entity_type="customer", value_type=pb.INT64, frequency=pb.REALTIME)
    created = stub.CreateFeature(rs.CreateFeatureRequest(feature=feature), metadata=bearer(alice), timeout=10)
    assert created.revised_by == "alice"
    path = f"/api/feature-registry/features/{name}"
    status, body = rest(auth_envoy.port, "PATCH", path, bob, {"description": "changed by bob"})
    assert (status, body["revised_by"]) == (200, "bob"), body
    status, body = rest(auth_envoy.port, "GET", path, idp.token(["reader"]))
    assert (status, body["revised_by"], body["revision"]) == (200, "bob", "2"), body
    stub.DeleteFeature(rs.DeleteFeatureRequest(name=name), metadata=bearer(alice), timeout=10)

    status, body = rest(auth_envoy.port, "GET", f"{path}/revisions", idp.token(["reader"]))
    assert status == 200, body
    assert [(f["revision"], f["revised_by"]) for f in body["features"]] == [
        ("2", "alice"),
        ("2", "bob"),
        ("1", "alice"),
    ]
    listed = stub.ListFeatureRevisions(rs.ListFeatureRevisionsRequest(name=name), metadata=bearer(bob), timeout=10)
    assert [f.revised_by for f in listed.features] == ["alice", "bob", "alice"]

    group = pb.FeatureGroup(name=f"g_{name}", entity_type="customer", feature_names=[])
    with pytest.raises(grpc.RpcError):  # an empty group is refused; who tried is still audited
        stub.CreateFeatureGroup(rs.CreateFeatureGroupRequest(feature_group=group), metadata=bearer(bob), timeout=10)
    eventually(
        lambda: any(a["resource"] == f"g_{name}" and a["subject"] == "bob" for a in audit_lines(auth_server.proc))
    )


def test_unauthenticated_calls_are_audited_without_the_token(auth_server: AuthServer, channel: grpc.Channel) -> None:
    token = auth_server.idp.token(["admin"], aud="elsewhere")
    assert_refused(call(channel, core.REGISTRY_SERVICE, "GetFeature", bearer(token)), grpc.StatusCode.UNAUTHENTICATED)

    def refused() -> list[dict[str, Any]]:
        return [a for a in audit_lines(auth_server.proc) if a["detail"] == "the token is not for this audience"]

    eventually(lambda: bool(refused()), timeout=10)
    assert refused()[-1]["outcome"] == "UNAUTHENTICATED"
    assert refused()[-1]["method"] == "/featurestore.registry.v1.RegistryService/GetFeature"


# -- optional mode, reflection off ------------------------------------------------------


def test_optional_mode_lets_anonymous_read_but_refuses_bad_tokens(
    processes: Processes, postgres_dsn: str, redis_url: str
) -> None:
    idp = new_idp(processes.directory / "idp")
    server = processes.server(postgres_dsn, redis_url, auth_args(idp, "optional", "--reflection", "false"))
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        assert_allowed(call(ch, core.REGISTRY_SERVICE, "ListFeatures", ()))
        assert_allowed(call(ch, core.FEATURE_STORE_SERVICE, "GetFeatures", ()))
        assert_refused(call(ch, core.FEATURE_STORE_SERVICE, "WriteFeatures", ()), grpc.StatusCode.UNAUTHENTICATED)
        assert_allowed(call(ch, core.FEATURE_STORE_SERVICE, "WriteFeatures", bearer(idp.token(["writer"]))))
        expired = idp.token(["admin"], exp=int(time.time()) - 3600)
        assert_refused(
            call(ch, core.REGISTRY_SERVICE, "ListFeatures", bearer(expired)), grpc.StatusCode.UNAUTHENTICATED
        )
    assert health_status(f"127.0.0.1:{server.port}") == health_pb2.HealthCheckResponse.SERVING
    assert grpcurl(f"127.0.0.1:{server.port}", "list").returncode != 0  # reflection off


def test_start_refuses_a_required_mode_without_credentials(tmp_path: Path, postgres_dsn: str) -> None:
    cmd = [sys.executable, "-m", "server", "--postgres-dsn", postgres_dsn, "--auth-mode", "required"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert done.returncode != 0
    assert "needs auth_jwks_file or auth_api_keys_file" in done.stderr


# -- rotation and revocation without a restart ----------------------------------------------


def test_jwks_rotation_and_api_key_revocation_without_restart(
    processes: Processes, postgres_dsn: str, redis_url: str
) -> None:
    idp = new_idp(processes.directory / "idp")
    idp.publish("rsa-1")
    revoked, kept = f"fsk_{uuid.uuid4().hex}", f"fsk_{uuid.uuid4().hex}"
    idp.grant_keys({revoked: ("old-job", "reader"), kept: ("new-job", "reader")})
    server = processes.server(postgres_dsn, redis_url, auth_args(idp))
    old, new = idp.token(["reader"], kid="rsa-1"), idp.token(["reader"], kid="ec-1")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:

        def status(token: str) -> grpc.StatusCode:
            error = call(ch, core.REGISTRY_SERVICE, "ListFeatures", bearer(token))
            return grpc.StatusCode.OK if error is None else error.code()

        assert (status(old), status(new), status(revoked)) == (
            grpc.StatusCode.OK,
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.OK,
        )
        idp.publish("ec-1")  # rsa-1 retired, ec-1 introduced
        eventually(lambda: status(new) == grpc.StatusCode.OK, timeout=10)
        assert status(old) == grpc.StatusCode.UNAUTHENTICATED  # the cache forgot it with its key
        idp.grant_keys({kept: ("new-job", "reader")})
        eventually(lambda: status(revoked) == grpc.StatusCode.UNAUTHENTICATED, timeout=10)
        assert status(kept) == grpc.StatusCode.OK
        idp.jwks_file.write_text("{not json")  # a broken file keeps the last good keys
        time.sleep(1)
        assert status(new) == grpc.StatusCode.OK
    assert "cannot reload" in server.log.read_text()
    assert_no_secrets(server, idp)


# -- REST through Envoy -------------------------------------------------------------------


def rest(port: int, method: str, path: str, token: str | None = None, body: object = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def test_rest_through_envoy_passes_the_token_to_the_server(
    processes: Processes, postgres_dsn: str, redis_url: str
) -> None:
    idp = new_idp(processes.directory / "idp")
    server = processes.server(postgres_dsn, redis_url, auth_args(idp))
    envoy = processes.add(reaped(lambda: start_envoy(processes.directory, free_port(), server.port)))
    path = "/api/feature-registry/features"
    status, body = rest(envoy.port, "GET", path)
    assert status == 401, body
    assert body["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert body["details"][0]["reason"] == "UNAUTHENTICATED"
    reader = idp.token(["reader"])
    status, body = rest(envoy.port, "GET", path, reader)
    assert status == 200, body
    assert "features" in body
    feature = {"name": "rest_denied", "entity_type": "customer", "value_type": "INT64", "frequency": "REALTIME"}
    status, body = rest(envoy.port, "POST", path, reader, feature)
    assert status == 403, body
    assert body["details"][0]["reason"] == "PERMISSION_DENIED"
    assert_no_secrets(server, idp)
    assert_no_secrets(envoy, idp)


# -- no secret in any log ---------------------------------------------------------------------


def assert_no_secrets(proc: Proc, idp: Idp) -> None:
    text = proc.log.read_text(errors="replace")
    assert text, f"{proc.name} wrote no log"
    assert idp.secrets
    for secret in idp.secrets:
        assert secret not in text, f"a secret in {proc.log}"
        signature = secret.rsplit(".", 1)[-1]
        assert len(signature) < 16 or signature not in text, f"a token's signature in {proc.log}"


def test_the_module_servers_log_holds_no_secret(auth_server: AuthServer) -> None:
    """Last in the module: every token and key the tests above handed out was sent to this server."""
    assert len(audit_lines(auth_server.proc)) > 50  # it did log the refusals
    assert_no_secrets(auth_server.proc, auth_server.idp)


# -- make up AUTH=on: the local identity provider ---------------------------------------------


def test_make_up_auth_on_tokens_load_the_demo_and_feed_the_pipeline(processes: Processes, redis_url: str) -> None:
    """devstack's provider: the admin token loads the demo, the reader's lists for the pipeline, none is refused."""
    folder = processes.directory / "auth"
    dev = dev_auth(folder)
    SECRETS.update({dev.reader_token, dev.admin_token})
    postgres = processes.postgres()
    server = processes.server(str(postgres.extra["dsn"]), redis_url, [*FAST_SERVER_ARGS, *dev.server_args()])
    target = f"127.0.0.1:{server.port}"

    with pytest.raises(PermissionDenied):  # the client's error for PERMISSION_DENIED
        load_demo(target, dev.reader_token)
    assert load_demo(target, dev.admin_token)
    with pytest.raises(grpc.RpcError) as anonymous:
        load_features(target, ["customer"])
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    features = load_features(target, ["customer"], dev.reader_token)
    assert features
    assert {f.revised_by for f in features} == {"dev-admin"}

    again = dev_auth(folder)  # a restart of the stack: same key, so earlier tokens still verify
    assert again.jwks_file.read_text() == dev.jwks_file.read_text()
    assert load_features(target, ["customer"], dev.reader_token)
    for name in ("signing-key.pem", "reader.token", "admin.token"):
        assert (folder / name).stat().st_mode & 0o077 == 0, f"{name} is readable by others"

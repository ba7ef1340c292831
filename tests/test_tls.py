"""TLS (issue 13): the server's own TLS and mTLS for direct gRPC, and Envoy's TLS listener with mTLS to the server.

The test is its own certificate authority (`cryptography`): a CA, server and client certificates
it signs, and a second, rogue CA. Handshakes that must work do; plaintext, an unknown CA, a missing
or rogue client certificate are refused; a certificate replaced on disk is served to the next
connection without a restart, by the server and by Envoy (SDS from files).
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack import EnvoyTls, Proc, free_port, start_envoy
from tests._helpers import FAST_SERVER_ARGS, SECRETS, Processes, eventually, reaped

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Issued:
    cert: Path
    key: Path
    serial: int


class Authority:
    """A CA writing the certificates it signs into `directory` (replaced whole, as a Secret update does)."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory, self.name = directory, name
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = directory / f"{name}-ca.crt"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, client: bool = False, folder: str = "") -> Issued:
        """A certificate for `localhost` and 127.0.0.1 (server) or `name` (client), in `folder`/tls.crt, tls.key."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        serial = x509.random_serial_number()
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        names: list[x509.GeneralName] = [x509.DNSName(name)]
        if not client:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        where = self.directory / (folder or name)
        where.mkdir(parents=True, exist_ok=True)
        pem_key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        SECRETS.add(pem_key.decode())
        SECRETS.add(pem_key.decode().splitlines()[1])  # a line of the key alone must not show either
        issued = Issued(where / "tls.crt", where / "tls.key", serial)
        _replace(issued.key, pem_key)
        _replace(issued.cert, cert.public_bytes(serialization.Encoding.PEM))
        return issued


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority(tmp_path / "pki", "featurestore-test")


@pytest.fixture
def rogue(tmp_path: Path) -> Authority:
    return Authority(tmp_path / "rogue", "rogue")


def tls_server(processes: Processes, dsn: str, url: str, server: Issued, client_ca: Path | None = None) -> Proc:
    args = [*FAST_SERVER_ARGS, "--tls-cert-file", str(server.cert), "--tls-key-file", str(server.key)]
    args += ["--tls-client-ca-file", str(client_ca)] if client_ca else []
    return processes.server(dsn, url, args)


def health(target: str, credentials: grpc.ChannelCredentials | None) -> int:
    """The server's health over a channel with `credentials` (None: plaintext); raises grpc.RpcError if refused."""
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status)


def refused(target: str, credentials: grpc.ChannelCredentials | None) -> bool:
    try:
        health(target, credentials)
    except grpc.RpcError as err:
        return err.code() == grpc.StatusCode.UNAVAILABLE
    return False


def creds(ca_file: Path, client: Issued | None = None) -> grpc.ChannelCredentials:
    key, chain = (client.key.read_bytes(), client.cert.read_bytes()) if client else (None, None)
    return grpc.ssl_channel_credentials(ca_file.read_bytes(), key, chain)


def served_serial(port: int, ca_file: Path, alpn: str = "h2") -> int:
    """The serial number of the certificate a new TLS connection to `port` is shown."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols([alpn])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


SERVING = health_pb2.HealthCheckResponse.SERVING


# -- the server's own TLS -----------------------------------------------------------------


def test_the_server_serves_tls_only(
    processes: Processes, postgres_dsn: str, redis_url: str, ca: Authority, rogue: Authority
) -> None:
    server = tls_server(processes, postgres_dsn, redis_url, ca.issue("server"))
    target = f"127.0.0.1:{server.port}"
    assert health(target, creds(ca.ca_file)) == SERVING
    assert refused(target, None), "plaintext accepted on a TLS port"
    assert refused(target, creds(rogue.ca_file)), "a certificate of an unknown CA was trusted"
    assert "(TLS, auth off)" in server.log.read_text()


def test_mtls_needs_a_client_certificate_of_the_clients_ca(
    processes: Processes, postgres_dsn: str, redis_url: str, ca: Authority, rogue: Authority
) -> None:
    server = tls_server(processes, postgres_dsn, redis_url, ca.issue("server"), client_ca=ca.ca_file)
    target = f"127.0.0.1:{server.port}"
    assert health(target, creds(ca.ca_file, ca.issue("envoy", client=True))) == SERVING
    assert refused(target, creds(ca.ca_file)), "no client certificate, accepted"
    assert refused(target, creds(ca.ca_file, rogue.issue("mallory", client=True))), "a rogue client, accepted"
    assert refused(target, None)


def test_a_rotated_certificate_is_served_without_a_restart(
    processes: Processes, postgres_dsn: str, redis_url: str, ca: Authority
) -> None:
    first = ca.issue("server", folder="server-tls")
    server = tls_server(processes, postgres_dsn, redis_url, first)
    assert served_serial(server.port, ca.ca_file) == first.serial
    second = ca.issue("server", folder="server-tls")  # the same files, replaced
    eventually(lambda: served_serial(server.port, ca.ca_file) == second.serial, timeout=10)
    assert health(f"127.0.0.1:{server.port}", creds(ca.ca_file)) == SERVING

    _replace(
        second.key,
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )  # a key of another certificate: refused, the last good pair stays
    assert served_serial(server.port, ca.ca_file) == second.serial
    eventually(
        lambda: "TLS files: cannot reload (the key does not belong to the certificate)" in server.log.read_text()
    )


def test_a_key_that_does_not_match_stops_the_start(tmp_path: Path, ca: Authority, postgres_dsn: str) -> None:
    one, other = ca.issue("one"), ca.issue("other")
    cmd = [sys.executable, "-m", "server", "--postgres-dsn", postgres_dsn, "--metrics-port", "0"]
    cmd += ["--tls-cert-file", str(one.cert), "--tls-key-file", str(other.key)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode != 0
    assert "TLS: the key does not belong to the certificate" in done.stderr
    half = [sys.executable, "-m", "server", "--postgres-dsn", postgres_dsn, "--tls-cert-file", str(one.cert)]
    done = subprocess.run(half, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert "TLS needs both tls_cert_file and tls_key_file" in done.stderr


# -- Envoy: TLS at the edge, mTLS to the server ------------------------------------------------


def https(port: int, ca_file: Path, path: str) -> tuple[int, object]:
    context = ssl.create_default_context(cafile=str(ca_file))
    conn = http.client.HTTPSConnection("localhost", port, timeout=30, context=context)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def plaintext_http_fails(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/api/feature-registry/features")
        conn.getresponse().read()
    except (OSError, http.client.HTTPException):
        return True
    finally:
        conn.close()
    return False


def test_envoy_terminates_tls_and_speaks_mtls_to_the_server(
    processes: Processes, postgres_dsn: str, redis_url: str, ca: Authority, rogue: Authority
) -> None:
    server = tls_server(processes, postgres_dsn, redis_url, ca.issue("server"), client_ca=ca.ca_file)
    edge, client = ca.issue("edge", folder="edge-tls"), ca.issue("envoy", client=True)
    tls = EnvoyTls(
        str(edge.cert),
        str(edge.key),
        str(processes.directory / "sds"),
        upstream_ca_file=str(ca.ca_file),
        upstream_cert_file=str(client.cert),
        upstream_key_file=str(client.key),
    )
    envoy = processes.add(reaped(lambda: start_envoy(processes.directory, free_port(), server.port, tls=tls)))

    status, body = https(envoy.port, ca.ca_file, "/api/feature-registry/features")
    assert status == 200, body
    assert health(f"localhost:{envoy.port}", creds(ca.ca_file)) == SERVING  # native gRPC over TLS, through
    assert plaintext_http_fails(envoy.port), "plaintext HTTP accepted on the TLS listener"
    assert refused(f"127.0.0.1:{envoy.port}", None)
    assert refused(f"127.0.0.1:{envoy.port}", creds(rogue.ca_file))

    assert served_serial(envoy.port, ca.ca_file, "http/1.1") == edge.serial
    rotated = ca.issue("edge", folder="edge-tls")
    eventually(lambda: served_serial(envoy.port, ca.ca_file, "http/1.1") == rotated.serial, timeout=15)
    status, _ = https(envoy.port, ca.ca_file, "/api/feature-registry/features")
    assert status == 200


def test_the_server_refuses_an_envoy_without_its_client_certificate(
    processes: Processes, postgres_dsn: str, redis_url: str, ca: Authority, rogue: Authority
) -> None:
    server = tls_server(processes, postgres_dsn, redis_url, ca.issue("server"), client_ca=ca.ca_file)
    edge, stranger = ca.issue("edge"), rogue.issue("envoy", client=True)
    tls = EnvoyTls(
        str(edge.cert),
        str(edge.key),
        str(processes.directory / "sds"),
        upstream_ca_file=str(ca.ca_file),
        upstream_cert_file=str(stranger.cert),
        upstream_key_file=str(stranger.key),
    )
    envoy = processes.add(reaped(lambda: start_envoy(processes.directory, free_port(), server.port, tls=tls)))
    status, body = https(envoy.port, ca.ca_file, "/api/feature-registry/features")
    assert status == 503, body
    assert isinstance(body, dict)
    assert body["code"] == grpc.StatusCode.UNAVAILABLE.value[0]


def test_the_production_tls_config_is_valid_for_envoy(tmp_path: Path, ca: Authority) -> None:
    """gateway/envoy-tls.yaml and its SDS files, with the mounted paths moved under tmp_path: Envoy accepts them."""
    edge, client = ca.issue("edge"), ca.issue("envoy", client=True)
    mounted = {
        "/etc/envoy/tls/tls.crt": edge.cert,
        "/etc/envoy/tls/tls.key": edge.key,
        "/etc/envoy/upstream-tls/ca.crt": ca.ca_file,
        "/etc/envoy/upstream-tls/tls.crt": client.cert,
        "/etc/envoy/upstream-tls/tls.key": client.key,
    }
    for path, source in mounted.items():
        (tmp_path / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path.lstrip("/")).write_bytes(source.read_bytes())
    moved = str(tmp_path / "etc" / "envoy")
    for name in ("edge-certificate.json", "upstream-ca.json", "upstream-client-certificate.json"):
        text = (ROOT / "gateway" / "sds" / name).read_text()
        (tmp_path / "etc" / "envoy" / "sds").mkdir(parents=True, exist_ok=True)
        (tmp_path / "etc" / "envoy" / "sds" / name).write_text(text.replace("/etc/envoy", moved))
    config = (ROOT / "gateway" / "envoy-tls.yaml").read_text().replace("/etc/envoy", moved)
    assert "transport_socket" in config
    (tmp_path / "envoy-tls.yaml").write_text(config)
    envoy = Path(sys.executable).parent / "envoy"
    done = subprocess.run(
        [str(envoy), "--mode", "validate", "-c", str(tmp_path / "envoy-tls.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

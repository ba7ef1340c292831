"""TLS (issue 13): the server's own TLS and mTLS for direct gRPC, and Envoy's TLS listener with mTLS to the server.

The test is its own certificate authority (`cryptography`): a CA, server and client certificates
it signs, and a second, rogue CA. Handshakes that must work do; plaintext, an unknown CA, a missing
or rogue client certificate are refused; a certificate replaced on disk is served to the next
connection without a restart, by the server and by Envoy (SDS from files).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack import EnvoyTls, Proc, free_port, start_envoy
from featurestore.registry.v1 import registry_service_pb2 as rs
from featurestore.registry.v1 import registry_service_pb2_grpc as rs_grpc
from jobs.batch_pipeline import load_features
from tests._helpers import FAST_SERVER_ARGS, Processes, eventually, reaped
from tests._pki import Authority, Issued, replace

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority(tmp_path / "pki", "featurestore-test")


@pytest.fixture
def rogue(tmp_path: Path) -> Authority:
    return Authority(tmp_path / "rogue", "rogue")


def tls_server(
    processes: Processes, dsn: str, url: str, server: Issued, client_ca: Path | None = None, health_port: int = 0
) -> Proc:
    args = [*FAST_SERVER_ARGS, "--tls-cert-file", str(server.cert), "--tls-key-file", str(server.key)]
    args += ["--tls-client-ca-file", str(client_ca)] if client_ca else []
    args += ["--health-port", str(health_port)] if health_port else []
    return processes.server(dsn, url, args)


def list_features(target: str) -> grpc.StatusCode:
    """ListFeatures over plaintext: its status code."""
    with grpc.insecure_channel(target) as channel:
        try:
            rs_grpc.RegistryServiceStub(channel).ListFeatures(rs.ListFeaturesRequest(), timeout=5)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


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
    probes = free_port()
    server = tls_server(processes, postgres_dsn, redis_url, ca.issue("server"), ca.ca_file, health_port=probes)
    target = f"127.0.0.1:{server.port}"
    assert health(target, creds(ca.ca_file, ca.issue("envoy", client=True))) == SERVING
    assert refused(target, creds(ca.ca_file)), "no client certificate, accepted"
    assert refused(target, creds(ca.ca_file, rogue.issue("mallory", client=True))), "a rogue client, accepted"
    assert refused(target, None)
    # The probes' port: health alone, in plaintext.
    assert health(f"127.0.0.1:{probes}", None) == SERVING
    assert list_features(f"127.0.0.1:{probes}") == grpc.StatusCode.UNIMPLEMENTED


def test_a_rotated_certificate_is_served_without_a_restart(
    processes: Processes, postgres_dsn: str, redis_url: str, ca: Authority
) -> None:
    first = ca.issue("server", folder="server-tls")
    server = tls_server(processes, postgres_dsn, redis_url, first)
    assert served_serial(server.port, ca.ca_file) == first.serial
    second = ca.issue("server", folder="server-tls")  # the same files, replaced
    eventually(lambda: served_serial(server.port, ca.ca_file) == second.serial, timeout=10)
    assert health(f"127.0.0.1:{server.port}", creds(ca.ca_file)) == SERVING

    replace(
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
        probe_port=free_port(),
    )
    envoy = processes.add(reaped(lambda: start_envoy(processes.directory, free_port(), server.port, tls=tls)))

    status, body = https(envoy.port, ca.ca_file, "/api/feature-registry/features")
    assert status == 200, body
    assert isinstance(load_features(f"localhost:{envoy.port}", ["customer"], ca_file=str(ca.ca_file)), list)
    with pytest.raises(grpc.RpcError):  # the pipeline without the CA: plaintext, refused
        load_features(f"localhost:{envoy.port}", ["customer"])
    assert health(f"127.0.0.1:{tls.probe_port}", None) == SERVING  # the kubelet's probe, plaintext, through mTLS
    assert list_features(f"127.0.0.1:{tls.probe_port}") != grpc.StatusCode.OK  # and nothing else there
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
        "/etc/envoy-tls/edge/tls.crt": edge.cert,
        "/etc/envoy-tls/edge/tls.key": edge.key,
        "/etc/envoy-tls/upstream/ca.crt": ca.ca_file,
        "/etc/envoy-tls/upstream/tls.crt": client.cert,
        "/etc/envoy-tls/upstream/tls.key": client.key,
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

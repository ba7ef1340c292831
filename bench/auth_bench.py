"""What authentication costs: GetFeatures 1x10 over gRPC, auth off vs required, in one run.

    .venv/bin/python bench/auth_bench.py [--requests 20000] [--rounds 3]

Starts PostgreSQL, Valkey and two servers on the same stores: one with auth off, one with
auth required (a JWKS made here, a reader JWT sent by h2load). Rounds alternate off/on at
concurrency 1 and 64; each runs a fixed number of calls and reads the server's CPU time
(/proc), which a busy 2-core machine disturbs far less than throughput. Also times the
interceptor alone in-process (a cached JWT, an API key) per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import jwt  # noqa: E402
from _serving import wait_servable  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from online_bench import GRPC_HEADERS, STORE, grpc_frame, load, register  # noqa: E402

from devstack import Proc, free_port, start_postgres, start_server, start_valkey  # noqa: E402
from featurestore import FeatureStoreClient  # noqa: E402
from featurestore.serving.v1 import feature_store_service_pb2 as fs  # noqa: E402
from server import auth  # noqa: E402

ISSUER, AUDIENCE = "https://idp.bench", "featurestore"


def identity(state: Path) -> tuple[Path, Path, str, str]:
    """A JWKS file, an API key file, a reader JWT and a reader API key."""
    key = rsa.generate_private_key(65537, 2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks, keys = state / "jwks.json", state / "api-keys.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}))
    api_key = "fsk_bench_reader_key"
    keys.write_text(
        json.dumps({"api_keys": [{"sha256": auth.hash_key(api_key), "principal": "b", "roles": ["reader"]}]})
    )
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "bench", "roles": ["reader"], "exp": int(time.time()) + 3600}
    return jwks, keys, jwt.encode(claims, key, "RS256", headers={"kid": "k1"}), api_key


def interceptor_cost(jwks: Path, keys: Path, token: str, api_key: str, calls: int = 200_000) -> dict[str, float]:
    """Microseconds per intercept_service call: no interceptor work vs a cached JWT vs an API key."""
    verifier = auth.JwtVerifier(jwks, ISSUER, AUDIENCE, leeway=30, roles_claim="roles", cache_size=auth.CACHE_SIZE)
    authenticator = auth.Authenticator(verifier, auth.ApiKeys(keys))
    interceptor = auth.AuthInterceptor(authenticator, auth.METHOD_ROLES, required=True, anonymous=auth.Role.NONE)
    handler: Any = object()

    async def continuation(details: Any) -> Any:
        return handler

    class Details:
        method = f"{STORE}/GetFeatures"

        def __init__(self, credential: str) -> None:
            self.invocation_metadata = (("user-agent", "h2load"), ("authorization", f"Bearer {credential}"))

    async def timed(credential: str | None) -> float:
        details: Any = Details(credential or "")
        if credential is not None:
            assert await interceptor.intercept_service(continuation, details) is handler
        started = time.perf_counter()
        for _ in range(calls):
            if credential is None:
                await continuation(details)
            else:
                await interceptor.intercept_service(continuation, details)
        return (time.perf_counter() - started) / calls * 1e6

    async def all_of() -> dict[str, float]:
        return {"baseline": await timed(None), "jwt": await timed(token), "api_key": await timed(api_key)}

    return asyncio.run(all_of())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="calls of each h2load run")
    parser.add_argument("--rounds", type=int, default=3, help="off/on alternations per concurrency")
    args = parser.parse_args()
    if not shutil.which("h2load"):
        sys.exit("h2load is missing: apt-get install nghttp2-client")
    state = Path(tempfile.mkdtemp(prefix="fs-auth-bench-"))
    jwks, keys, token, api_key = identity(state)
    print(
        "interceptor alone, µs per call:",
        {k: round(v, 2) for k, v in interceptor_cost(jwks, keys, token, api_key).items()},
    )
    pg = start_postgres(state / "postgres", free_port(), durable=False)
    valkey = start_valkey(state / "valkey", free_port(), durable=False)
    dsn, url, quiet = str(pg.extra["dsn"]), str(valkey.extra["url"]), ["--log-level", "WARNING"]
    on_args = ["--auth-mode", "required", "--auth-jwks-file", str(jwks), "--auth-issuer", ISSUER]
    on_args += ["--auth-audience", AUDIENCE, "--metrics-port", "0"]
    off = start_server(state, free_port(), dsn, url, [*quiet, "--metrics-port", "0"])
    on = start_server(state, free_port(), dsn, url, [*quiet, *on_args])
    try:
        return run(args, off, on, token)
    finally:
        for proc in (on, off, valkey, pg):
            proc.stop()
        shutil.rmtree(state, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(url: str, frame: bytes, headers: dict[str, str], requests: int, concurrency: int) -> float:
    """h2load: `requests` calls at `concurrency`; requests/s."""
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body"
        body.write_bytes(frame)
        clients, streams = (1, 1) if concurrency == 1 else (8, concurrency // 8)
        cmd = ["h2load", "-n", str(requests), "-c", str(clients), "-m", str(streams), "-d", str(body)]
        cmd += [arg for key, value in headers.items() for arg in ("-H", f"{key}: {value}")]
        out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    assert f"{requests} succeeded" in out, out
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    assert rate, out
    return float(rate.group(1))


def check(port: int, request: fs.GetFeaturesRequest, token: str) -> None:
    """h2load cannot see grpc-status: make sure the auth server answers a token, and only a token."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            f"{STORE}/GetFeatures", fs.GetFeaturesRequest.SerializeToString, fs.GetFeaturesResponse.FromString
        )
        time.sleep(1)  # the second server's registry snapshot
        assert len(call(request, metadata=(("authorization", f"Bearer {token}"),)).features) == 10
        try:
            call(request)
        except grpc.RpcError as err:
            refused = err.code()
        assert refused is grpc.StatusCode.UNAUTHENTICATED


def run(args: argparse.Namespace, off: Proc, on: Proc, token: str) -> int:
    request = fs.GetFeaturesRequest(entity_type="user", entity_id="u7", feature_groups=["bench_10"])
    with FeatureStoreClient(f"127.0.0.1:{off.port}") as client:
        load(client, register(client, "bench_10", 10), 1000, 1000)
        wait_servable(client, "bench_10")
    check(on.port, request, token)
    frame, headers = grpc_frame(request.SerializeToString()), {**GRPC_HEADERS, "authorization": f"Bearer {token}"}
    for concurrency in (1, 64):
        rates: dict[str, list[float]] = {"off": [], "on": []}
        cpu: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.rounds):
            for mode, proc, sent in (("off", off, GRPC_HEADERS), ("on", on, headers)):
                before = cpu_seconds(proc.popen.pid)
                url = f"http://127.0.0.1:{proc.port}{STORE}/GetFeatures"
                rates[mode].append(drive(url, frame, sent, args.requests, concurrency))
                cpu[mode].append((cpu_seconds(proc.popen.pid) - before) / args.requests * 1e6)
        r_off, r_on = statistics.median(rates["off"]), statistics.median(rates["on"])
        c_off, c_on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
        print(
            f"GetFeatures 1x10 gRPC c={concurrency}: server CPU per call off {c_off:.0f} µs, on {c_on:.0f} µs "
            f"({c_on / c_off - 1:+.1%}); req/s off {r_off:,.0f}, on {r_on:,.0f} ({r_on / r_off - 1:+.1%})"
        )
        print(f"  rounds: req/s {rates}, µs/call {cpu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

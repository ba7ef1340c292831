"""What authentication costs: GetFeatures 1x10 over gRPC, auth off vs required, in one run.

    .venv/bin/python bench/auth_bench.py [--requests 5000] [--rounds 9]

Starts PostgreSQL, Valkey and two servers on the same stores: one with auth off, one with
auth required (a JWKS made here, a reader JWT sent by h2load). Rounds are off/on pairs
(in alternating order) at concurrency 1 and 64; each run makes a fixed number of calls and
reads the server's CPU time (/proc), which a busy 2-core machine disturbs less than
throughput. Reported: the median of the pairs' ratios, and least CPU vs least CPU. Also times a trivial
handler in-process, bare and checked by the guard (a cached JWT, an API key), per call.
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


def guard_cost(jwks: Path, keys: Path, token: str, api_key: str, calls: int = 200_000) -> dict[str, float]:
    """Microseconds per call of a trivial handler: bare vs checked by the guard (a cached JWT, an API key)."""
    verifier = auth.JwtVerifier(jwks, ISSUER, AUDIENCE, leeway=30, roles_claim="roles")
    guard = auth.Guard(
        auth.Authenticator(verifier, auth.ApiKeys(keys)), auth.METHOD_ROLES, required=True, anonymous=auth.Role.NONE
    )

    async def behavior(request: Any, context: Any) -> Any:
        return request

    bare = grpc.unary_unary_rpc_method_handler(behavior)
    checked = guard.wrap(f"{STORE}/GetFeatures", bare)

    class Context:
        def __init__(self, credential: str) -> None:
            self.metadata = (("user-agent", "h2load"), ("authorization", f"Bearer {credential}"))

        def invocation_metadata(self) -> Any:
            return self.metadata

    async def timed(handler: Any, credential: str) -> float:
        context: Any = Context(credential)
        call = handler.unary_unary
        assert await call(b"", context) == b""
        started = time.perf_counter()
        for _ in range(calls):
            await call(b"", context)
        return (time.perf_counter() - started) / calls * 1e6

    async def all_of() -> dict[str, float]:
        return {
            "bare": await timed(bare, ""),
            "jwt": await timed(checked, token),
            "api_key": await timed(checked, api_key),
        }

    return asyncio.run(all_of())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5_000, help="calls of each h2load run")
    parser.add_argument("--rounds", type=int, default=9, help="off/on pairs per concurrency")
    args = parser.parse_args()
    if not shutil.which("h2load"):
        sys.exit("h2load is missing: apt-get install nghttp2-client")
    state = Path(tempfile.mkdtemp(prefix="fs-auth-bench-"))
    jwks, keys, token, api_key = identity(state)
    print(
        "a handler alone, in-process, µs per call:",
        {k: round(v, 2) for k, v in guard_cost(jwks, keys, token, api_key).items()},
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
        runs = [("off", off, GRPC_HEADERS), ("on", on, headers)]
        for round_number in range(args.rounds):
            # Pairs, each in the other order than the last, so a drift in the machine's load hits both alike.
            for mode, proc, sent in runs if round_number % 2 == 0 else runs[::-1]:
                before = cpu_seconds(proc.popen.pid)
                url = f"http://127.0.0.1:{proc.port}{STORE}/GetFeatures"
                rates[mode].append(drive(url, frame, sent, args.requests, concurrency))
                cpu[mode].append((cpu_seconds(proc.popen.pid) - before) / args.requests * 1e6)
        pairs = [on_cpu / off_cpu - 1 for off_cpu, on_cpu in zip(cpu["off"], cpu["on"], strict=True)]
        rate_pairs = [on_rate / off_rate - 1 for off_rate, on_rate in zip(rates["off"], rates["on"], strict=True)]
        print(
            f"GetFeatures 1x10 gRPC c={concurrency}: server CPU per call, auth on vs off: median of {args.rounds} "
            f"pairs {statistics.median(pairs):+.1%}, least vs least {min(cpu['on']) / min(cpu['off']) - 1:+.1%} "
            f"({min(cpu['off']):.0f} -> {min(cpu['on']):.0f} µs); req/s median of pairs "
            f"{statistics.median(rate_pairs):+.1%} (off {statistics.median(rates['off']):,.0f}, "
            f"on {statistics.median(rates['on']):,.0f})"
        )
        print(f"  rounds: µs/call {cpu}, req/s {rates}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

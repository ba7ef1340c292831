"""The production Envoy config with TLS (gateway/envoy-tls.yaml and its SDS files), generated from gateway/envoy.yaml.

The overlay is devstack's `with_tls`, the one the tests run; here with the paths the Kubernetes
manifests mount (kubernetes/feature-engineering/feature-store.yaml):

python tools/envoy_tls.py --write   # rewrite gateway/envoy-tls.yaml and gateway/sds/*.json
python tools/envoy_tls.py --check   # exit 1 when they are stale (make check-gen)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devstack import EnvoyTls, with_tls  # noqa: E402

# Secrets mounted into the Envoy container: the public certificate (a kubernetes.io/tls Secret),
# and Envoy's client certificate for the server with the CA of the server's certificate.
PRODUCTION = EnvoyTls(
    cert_file="/etc/envoy-tls/edge/tls.crt",
    key_file="/etc/envoy-tls/edge/tls.key",
    sds_dir="/etc/envoy/sds",
    upstream_ca_file="/etc/envoy-tls/upstream/ca.crt",
    upstream_cert_file="/etc/envoy-tls/upstream/tls.crt",
    upstream_key_file="/etc/envoy-tls/upstream/tls.key",
    upstream_server_name="localhost",
    probe_port=8081,
)
HEADER = "# Generated from gateway/envoy.yaml by tools/envoy_tls.py (make gen): do not edit; see docs/security.md.\n"


def generated() -> dict[Path, str]:
    config, sds = with_tls(yaml.safe_load((ROOT / "gateway" / "envoy.yaml").read_text()), PRODUCTION)
    files = {ROOT / "gateway" / "envoy-tls.yaml": HEADER + yaml.safe_dump(config, sort_keys=False, width=120)}
    for name, resource in sorted(sds.items()):
        files[ROOT / "gateway" / "sds" / name] = json.dumps(resource, indent=2) + "\n"
    return files


def main(argv: list[str]) -> int:
    files = generated()
    if argv == ["--write"]:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return 0
    if argv == ["--check"]:
        stale = [str(p.relative_to(ROOT)) for p, text in files.items() if not p.exists() or p.read_text() != text]
        if stale:
            print(f"stale: {', '.join(stale)}; run `make gen`", file=sys.stderr)
            return 1
        print("gateway/envoy-tls.yaml is up to date")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The deployment as written: Kubernetes manifests and the Dockerfile, checked offline.

Every document of kubernetes/**/*.yaml is valid against the Kubernetes schema (kubernetes-validate,
strict: unknown fields fail) and clean under checkov's Kubernetes and Dockerfile checks (a skipped
check must carry its reason). Each probe is aimed at what its container binds: the server's bind
address and port come from the server's own settings parser fed the manifest's args and env, Envoy's
listeners from gateway/envoy-tls.yaml (what the manifest mounts). The server runs with auth required,
reflection off and TLS, its files on the volumes mounted; the probes the kubelet would send are then
sent to a server and an Envoy started as the manifest configures them (TLS, mTLS, plaintext probe ports).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack import EnvoyTls, free_port, start_envoy
from jobs.batch_pipeline import parser as pipeline_parser
from server import core
from server._app import REGISTRY_SERVICE
from server._settings import Settings
from tests._helpers import FAST_SERVER_ARGS, Processes, reaped
from tests._pki import Authority

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "kubernetes").rglob("*.yaml"))
ENVOY_CONFIG = ROOT / "gateway" / "envoy-tls.yaml"  # what the featurestore-envoy ConfigMap holds
# Created by `make pytest` (Makefile target $(CHECKOV)): checkov's pins conflict with the project's.
CHECKOV = ROOT / ".tools" / "checkov-venv" / "bin" / "checkov"
# The oldest Kubernetes the manifests support (preStop `sleep` is on by default from 1.30) and the
# newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
ANY_ADDRESS = {"0.0.0.0", "::"}
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
PINNED_IMAGE = re.compile(r"^[\w.\-/]+:v?\d+\.\d+\.\d+(-[\w.]+)?(@sha256:[0-9a-f]{64})?$")
FLOATING = re.compile(r"latest|-rc|-dev", re.IGNORECASE)
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")

Doc = dict[str, Any]


def _documents() -> list[tuple[Path, Doc]]:
    docs = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


DOCUMENTS = _documents()


def _find(kind: str, name: str) -> Doc:
    found = [doc for _, doc in DOCUMENTS if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in kubernetes/, found {len(found)}"
    return found[0]


def _pod_spec(doc: Doc) -> Doc:
    template = doc["spec"]["jobTemplate"]["spec"]["template"] if doc["kind"] == "CronJob" else doc["spec"]["template"]
    spec: Doc = template["spec"]
    return spec


def _pod_labels(doc: Doc) -> dict[str, str]:
    template = doc["spec"]["jobTemplate"]["spec"]["template"] if doc["kind"] == "CronJob" else doc["spec"]["template"]
    labels: dict[str, str] = template["metadata"]["labels"]
    return labels


def _container(pod: Doc, name: str) -> Doc:
    found: list[Doc] = [c for c in pod["containers"] if c["name"] == name]
    assert len(found) == 1, f"no container {name!r}"
    return found[0]


def _workloads() -> Iterator[tuple[str, Doc]]:
    for _, doc in DOCUMENTS:
        if doc["kind"] in POD_KINDS:
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc


def _probe_port(container: Doc, probe: Doc) -> int:
    """The port a probe dials; a named port resolves through the container's ports."""
    action = next(probe[key] for key in ("grpc", "tcpSocket", "httpGet") if key in probe)
    port = action["port"]
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert named, f"probe port {port!r} is not a port of container {container['name']}"
    return int(named[0])


def _server_settings() -> Settings:
    """What `python -m server` in the feature-store pod binds: its own parser, the manifest's args and env."""
    server = _container(_pod_spec(_find("Deployment", "feature-store")), "server")
    env: dict[str, str] = {}
    for source in server.get("envFrom", []):
        env.update(_find("ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in server.get("env", []) if "value" in e})
    return Settings.load(server.get("args", []), env)


def _envoy_config() -> Doc:
    config: Doc = yaml.safe_load(ENVOY_CONFIG.read_text())
    return config


def _envoy_listeners() -> dict[int, str]:
    """Envoy's listeners in gateway/envoy.yaml: port -> bound address."""
    listeners = {}
    for listener in _envoy_config()["static_resources"]["listeners"]:
        address = listener["address"]["socket_address"]
        listeners[int(address["port_value"])] = str(address["address"])
    return listeners


# -- schema and scanner ------------------------------------------------------


def test_every_manifest_is_found_and_parsed() -> None:
    kinds = {doc["kind"] for _, doc in DOCUMENTS}
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "Job", "CronJob"} <= kinds
    assert {path.name for path, _ in DOCUMENTS} == {path.name for path in MANIFESTS}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_schema(version: str) -> None:
    errors = []
    for path, doc in DOCUMENTS:
        where = f"{path.relative_to(ROOT)} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{where}: {exc.message} at {'.'.join(map(str, exc.path))}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{where}: {exc.message}")
    assert not errors, "\n".join(errors)


def _checkov(*args: str) -> dict[str, Any]:
    assert CHECKOV.is_file(), f"{CHECKOV.relative_to(ROOT)} is missing: `make {CHECKOV.relative_to(ROOT)}` installs it"
    run = subprocess.run(
        [str(CHECKOV), *args, "--output", "json", "--skip-download", "--skip-results-upload"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode in (0, 1), f"checkov failed to run ({run.returncode}):\n{run.stderr[-3000:]}"
    report: dict[str, Any] = json.loads(run.stdout)
    return report


def _assert_clean(report: dict[str, Any]) -> None:
    results, summary = report["results"], report["summary"]
    assert summary["parsing_errors"] == 0, results["parsing_errors"]
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})" for c in results["failed_checks"]
    ]
    assert not failed, "checkov found:\n" + "\n".join(failed)
    assert summary["passed"] > 0
    for check in results["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment") or ""
        assert reason != "No comment provided", f"{check['check_id']} skipped without a reason"
        assert len(reason) >= 40, f"{check['check_id']} skipped with too short a reason: {reason!r}"


def test_checkov_passes_every_kubernetes_manifest() -> None:
    report = _checkov("--directory", "kubernetes", "--framework", "kubernetes")
    _assert_clean(report)
    scanned = {c["resource"] for key in ("passed_checks", "skipped_checks") for c in report["results"][key]}
    for name, doc in _workloads():
        kind, _, short = name.partition("/")
        assert f"{kind}.{doc['metadata']['namespace']}.{short}" in scanned, f"checkov did not check {name}"


def test_checkov_passes_the_dockerfile() -> None:
    report = _checkov("--file", "Dockerfile", "--framework", "dockerfile")
    _assert_clean(report)
    bases = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    external = [base for base in bases if ":" in base]
    assert external, "no pinned base image"
    for base in external:
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+-[\w.-]+(@sha256:[0-9a-f]{64})?", base), f"base {base} not exact"


# -- what every pod must have --------------------------------------------------


@pytest.mark.parametrize(("name", "doc"), list(_workloads()), ids=[name for name, _ in _workloads()])
def test_every_pod_is_locked_down_and_sized(name: str, doc: Doc) -> None:
    pod = _pod_spec(doc)
    assert pod.get("automountServiceAccountToken") is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"] + pod.get("initContainers", []):
        where = f"{name} container {container['name']}"
        image = container["image"]
        assert PINNED_IMAGE.match(image), f"{where}: image {image} is not pinned to a version"
        assert not FLOATING.search(image), f"{where}: image {image} has a floating tag"
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True, where
        assert int(sc["runAsUser"]) >= 10000, where
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["capabilities"] == {"drop": ["ALL"]}, where
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{where}: {bound}"
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"


# -- probes against what each container binds ----------------------------------


def test_server_probes_reach_the_address_and_port_it_binds() -> None:
    pod = _pod_spec(_find("Deployment", "feature-store"))
    server = _container(pod, "server")
    settings = _server_settings()
    # The kubelet dials the pod IP: a loopback-bound server never answers its probes.
    assert settings.host in ANY_ADDRESS, f"server binds {settings.host}"
    assert [p["containerPort"] for p in server["ports"] if p["name"] == "grpc"] == [settings.port]
    for key in ("startupProbe", "livenessProbe"):
        assert _probe_port(server, server[key]) == settings.port, key
    # The main port serves TLS only, and the kubelet's gRPC probes speak no TLS: readiness asks the
    # plaintext health port, bound on the same address.
    assert settings.tls_cert_file
    assert settings.health_port
    assert _probe_port(server, server["readinessProbe"]) == settings.health_port
    assert [p["containerPort"] for p in server["ports"] if p["name"] == "health"] == [settings.health_port]
    # Its gRPC health statuses follow PostgreSQL/Redis (server/_health.py): they decide readiness,
    # and must not decide liveness, or a store outage restarts every pod.
    for key in ("startupProbe", "livenessProbe"):
        assert "tcpSocket" in server[key], f"server {key} must not follow the stores"
    assert server["readinessProbe"]["grpc"]["service"] == core.FEATURE_STORE_SERVICE.full_name


def test_envoy_probes_reach_a_listener_envoy_binds_on_the_pod_ip() -> None:
    pod = _pod_spec(_find("Deployment", "feature-store"))
    envoy = _container(pod, "envoy")
    listeners = _envoy_listeners()
    admin = _envoy_config()["admin"]["address"]["socket_address"]
    for key in ("livenessProbe", "readinessProbe"):
        port = _probe_port(envoy, envoy[key])
        if port == int(admin["port_value"]):
            assert admin["address"] not in LOOPBACK, f"envoy {key} dials the admin port, bound to loopback"
        else:
            assert listeners.get(port) in ANY_ADDRESS, f"envoy {key} dials {port}; listeners: {listeners}"
    # Readiness goes through Envoy's listener to the server: both services' health gate the pod.
    assert envoy["readinessProbe"]["grpc"]["service"] == REGISTRY_SERVICE
    assert "tcpSocket" in envoy["livenessProbe"]
    https = [p["containerPort"] for p in envoy["ports"] if p["name"] == "https"]
    assert len(https) == 1
    assert listeners.get(https[0]) in ANY_ADDRESS


def _connection_managers(config: Doc) -> Iterator[Doc]:
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                if network_filter["name"].endswith("http_connection_manager"):
                    hcm: Doc = network_filter["typed_config"]
                    yield hcm


def test_envoy_upstream_is_the_server_port_and_its_config_is_mounted_where_it_is_read() -> None:
    pod = _pod_spec(_find("Deployment", "feature-store"))
    envoy = _container(pod, "envoy")
    settings, config = _server_settings(), _envoy_config()
    hcms = list(_connection_managers(config))
    routed = {
        route["route"]["cluster"]
        for hcm in hcms
        for host in hcm["route_config"]["virtual_hosts"]
        for route in host["routes"]
        if "cluster" in route.get("route", {})
    }
    assert routed, "no route to the server in gateway/envoy.yaml"
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] in routed:
            addresses = {
                (
                    ep["endpoint"]["address"]["socket_address"]["address"],
                    ep["endpoint"]["address"]["socket_address"]["port_value"],
                )
                for group in cluster["load_assignment"]["endpoints"]
                for ep in group["lb_endpoints"]
            }
            # The server in the same pod, through loopback (which a 0.0.0.0 bind includes).
            assert addresses == {("127.0.0.1", settings.port)}, cluster["name"]
    assert settings.host in ANY_ADDRESS | {"127.0.0.1"}

    # `-c` names a file of the ConfigMap volume; the transcoder's descriptor (relative to the
    # working directory) is another item of it.
    args = envoy["command"] + envoy["args"]
    config_path = Path(args[args.index("-c") + 1])
    mount = next(m for m in envoy["volumeMounts"] if config_path.is_relative_to(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    items = {Path(mount["mountPath"]) / item["path"] for item in volume["configMap"]["items"]}
    assert config_path in items
    transcoders = [f for hcm in hcms for f in hcm["http_filters"] if f["name"].endswith("grpc_json_transcoder")]
    assert transcoders
    for transcoder in transcoders:
        descriptor = Path(envoy["workingDir"]) / transcoder["typed_config"]["proto_descriptor"]
        assert descriptor in items, f"Envoy reads {descriptor}; the ConfigMap volume holds {sorted(map(str, items))}"


def test_service_and_network_policies_expose_only_envoy() -> None:
    listeners = _envoy_listeners()
    envoy = _container(_pod_spec(_find("Deployment", "feature-store")), "envoy")
    service = _find("Service", "feature-store")
    assert {p["port"]: p["targetPort"] for p in service["spec"]["ports"]} == {443: "https", 8080: "https"}

    labels = _pod_labels(_find("Deployment", "feature-store"))
    policies = [doc for _, doc in DOCUMENTS if doc["kind"] == "NetworkPolicy"]

    def selects(policy: Doc, pod_labels: dict[str, str]) -> bool:
        selector = policy["spec"]["podSelector"]
        assert "matchExpressions" not in selector, "simple selectors only, so this test can read them"
        return all(pod_labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())

    ingress_ports = set()
    for policy in policies:
        if selects(policy, labels):
            for rule in policy["spec"].get("ingress", []):
                assert rule.get("ports"), f"{policy['metadata']['name']} admits every port"
                ingress_ports |= {int(p["port"]) for p in rule["ports"]}
    # Only the port the Service sends to: Envoy's listener (any other listener stays pod-internal).
    service_port = _probe_port(envoy, {"tcpSocket": {"port": "https"}})
    assert listeners.get(service_port) in ANY_ADDRESS
    assert ingress_ports == {service_port}

    # Every pod of ours is covered by a deny-all for both directions; only the server pods and the
    # jobs may open connections to PostgreSQL (5432) and Redis (6379).
    pipelines = {"batch-pipeline", "streaming-pipeline"}
    allowed = {5432: {"feature-store", "feature-registry", *pipelines}, 6379: {"feature-store", *pipelines}}
    for name, doc in _workloads():
        pod_labels = _pod_labels(doc)
        mine = [p for p in policies if selects(p, pod_labels)]
        assert any(
            set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} and not p["spec"].get("egress") for p in mine
        ), f"{name} is not covered by a default-deny policy"
        egress = {int(port["port"]) for p in mine for rule in p["spec"].get("egress", []) for port in rule["ports"]}
        for port, components in allowed.items():
            if port in egress:
                assert pod_labels["app.kubernetes.io/component"] in components, f"{name} may reach port {port}"
    for policy in policies:
        for port, components in allowed.items():
            for rule in policy["spec"].get("ingress", []):
                if port in {int(p["port"]) for p in rule.get("ports", [])}:
                    for source in rule["from"]:
                        expr = {e["key"]: set(e["values"]) for e in source["podSelector"]["matchExpressions"]}
                        assert expr["app.kubernetes.io/component"] <= components


def test_shutdown_fits_in_the_termination_grace_period() -> None:
    pod = _pod_spec(_find("Deployment", "feature-store"))
    grace = pod["terminationGracePeriodSeconds"]
    pauses = {c["name"]: c["lifecycle"]["preStop"]["sleep"]["seconds"] for c in pod["containers"]}
    # Envoy exits at once on SIGTERM, so it pauses until the endpoint is gone; the server keeps
    # serving at least as long, then drains its in-flight calls.
    assert pauses["server"] >= pauses["envoy"] >= 5
    assert pauses["server"] + _server_settings().shutdown_grace <= grace


# -- the CronJob's as-of -----------------------------------------------------------


def test_cronjob_passes_the_scheduled_day_as_as_of(tmp_path: Path) -> None:
    cron = _find("CronJob", "batch-feature-engineering")
    container = _container(_pod_spec(cron), "batch-pipeline")
    # Run the container's command with a stand-in `python` that prints what it was given.
    (tmp_path / "python").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (tmp_path / "python").chmod(0o755)
    before = datetime.now(UTC)
    run = subprocess.run(
        [*container["command"], *container["args"]],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
        check=True,
    )
    after = datetime.now(UTC)
    script, *argv = run.stdout.splitlines()
    assert script == "/app/jobs/batch_pipeline.py"
    args = pipeline_parser({}).parse_args(argv)  # the pipeline's own parser accepts every flag
    midnights = {moment.replace(hour=0, minute=0, second=0, microsecond=0) for moment in (before, after)}
    assert args.as_of in midnights
    assert args.feature_types == ["customer", "product"]

    # Every pod of a run (retries included) starts on the scheduled UTC day, so all pass one as-of.
    spec = cron["spec"]
    assert spec["timeZone"] in {"Etc/UTC", "UTC"}
    minute, hour, *days = spec["schedule"].split()
    assert days == ["*", "*", "*"], "a daily schedule"
    latest_start = timedelta(hours=int(hour), minutes=int(minute), seconds=spec["startingDeadlineSeconds"])
    assert latest_start + timedelta(seconds=spec["jobTemplate"]["spec"]["activeDeadlineSeconds"]) < timedelta(days=1)


# -- identity and TLS: what the server and Envoy read, from which volumes ------------------


def _mounted(pod: Doc, container: Doc, path: str) -> Doc:
    """The volume whose mount in `container` holds `path` (a file of it, by its key)."""
    for mount in container.get("volumeMounts", []):
        if Path(path).is_relative_to(mount["mountPath"]):
            volume: Doc = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            return volume
    raise AssertionError(f"{container['name']} mounts nothing at {path}")


def test_the_server_requires_tokens_serves_no_schema_and_only_tls() -> None:
    pod = _pod_spec(_find("Deployment", "feature-store"))
    server = _container(pod, "server")
    settings = _server_settings()
    assert settings.auth_mode == "required"
    assert settings.reflection is False
    assert settings.auth_issuer
    assert settings.auth_audience
    # Every file the server reads comes from a mounted Secret (keys) or ConfigMap (the JWKS).
    files = {
        settings.tls_cert_file: "secret",
        settings.tls_key_file: "secret",
        settings.tls_client_ca_file: "secret",
        settings.auth_api_keys_file: "secret",
        settings.auth_jwks_file: "configMap",
    }
    for path, kind in files.items():
        assert path, "a TLS or auth file setting is empty"
        volume = _mounted(pod, server, path)
        assert kind in volume, f"{path} is not on a {kind} volume"
        assert volume[kind].get("defaultMode", 0o644) & 0o007 == 0 or kind == "configMap", f"{path}: world-readable"


def test_envoy_reads_its_certificates_from_mounted_secrets() -> None:
    pod = _pod_spec(_find("Deployment", "feature-store"))
    envoy = _container(pod, "envoy")
    config = _envoy_config()
    for listener in config["static_resources"]["listeners"]:
        if listener["name"] != "probes":
            assert listener["filter_chains"][0]["transport_socket"]["name"] == "envoy.transport_sockets.tls"
    assert config["static_resources"]["clusters"][0]["transport_socket"]["name"] == "envoy.transport_sockets.tls"
    # The SDS files are items of the config volume; the certificates they name, of Secret volumes.
    config_volume = _mounted(pod, envoy, "/etc/envoy/envoy.yaml")
    items = {Path("/etc/envoy") / item["path"] for item in config_volume["configMap"]["items"]}
    sds = sorted((ROOT / "gateway" / "sds").glob("*.json"))
    assert sds
    for file in sds:
        assert Path("/etc/envoy/sds") / file.name in items, f"{file.name} is not mounted"
        for resource in json.loads(file.read_text())["resources"]:
            named = resource.get("tls_certificate") or resource["validation_context"]
            for key in ("certificate_chain", "private_key", "trusted_ca"):
                if key in named:
                    assert "secret" in _mounted(pod, envoy, named[key]["filename"]), named[key]


# -- the kubelet's probes, sent to the real servers ----------------------------------


def _health(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def test_kubelet_probes_pass_against_a_server_and_envoy_configured_as_the_manifest(
    processes: Processes, postgres_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    """TLS, mTLS and the plaintext probe ports as in the pod; each port of the manifest mapped to a free one."""
    pod = _pod_spec(_find("Deployment", "feature-store"))
    ca = Authority(tmp_path / "pki", "featurestore-test")
    server_tls, edge, client = ca.issue("server"), ca.issue("edge"), ca.issue("envoy", client=True)
    settings = _server_settings()
    ports = {settings.port: free_port(), settings.health_port: free_port(), 8081: free_port()}
    args = [*FAST_SERVER_ARGS, "--health-port", str(ports[settings.health_port]), "--reflection", "false"]
    args += ["--tls-cert-file", str(server_tls.cert), "--tls-key-file", str(server_tls.key)]
    args += ["--tls-client-ca-file", str(ca.ca_file)]
    server = processes.server(postgres_dsn, redis_url, args, port=ports[settings.port])
    tls = EnvoyTls(
        str(edge.cert),
        str(edge.key),
        str(tmp_path / "sds"),
        upstream_ca_file=str(ca.ca_file),
        upstream_cert_file=str(client.cert),
        upstream_key_file=str(client.key),
        probe_port=ports[8081],
    )
    envoy = processes.add(reaped(lambda: start_envoy(tmp_path, free_port(), server.port, tls=tls)))
    ports[8080] = envoy.port
    for name in ("server", "envoy"):
        container = _container(pod, name)
        for key in PROBES:
            if key not in container:
                continue
            probe = container[key]
            port = ports[_probe_port(container, probe)]
            if "tcpSocket" in probe:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            else:
                status = _health(f"127.0.0.1:{port}", probe["grpc"]["service"])
                assert status == health_pb2.HealthCheckResponse.SERVING, f"{name} {key}"


def test_the_streaming_deployment_runs_the_pipelines_flags_and_probes_its_heartbeat(tmp_path: Path) -> None:
    from jobs.streaming_pipeline import parser as streaming_parser

    deployment = _find("Deployment", "streaming-feature-engineering")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = _pod_spec(deployment)
    container = _container(pod, "streaming-pipeline")
    config = _find("ConfigMap", "streaming-feature-engineering")["data"]
    args = streaming_parser(dict(config)).parse_args(container["args"])  # the pipeline's own parser
    assert (args.source, args.kafka_reader) == ("kafka", "native")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "persistentVolumeClaim" in volumes[mounts[args.checkpoint_dir]], "checkpoints on a persistent volume"
    assert Path(args.heartbeat_file).parent == Path("/tmp")
    # The probes, run here against a fresh and a stale heartbeat file.
    heartbeat = tmp_path / "heartbeat"

    def probe(name: str) -> int:
        command = [c.replace(args.heartbeat_file, str(heartbeat)) for c in container[name]["exec"]["command"]]
        command[0] = sys.executable if command[0] == "python" else command[0]
        return subprocess.run(command, timeout=30, check=False).returncode

    assert probe("startupProbe") != 0
    heartbeat.touch()
    assert [probe(p) for p in PROBES] == [0, 0, 0]
    stale = datetime.now(UTC).timestamp() - 600
    os.utime(heartbeat, (stale, stale))
    assert probe("livenessProbe") != 0
    assert probe("readinessProbe") != 0

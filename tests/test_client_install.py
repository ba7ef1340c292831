"""The client on the oldest Python it declares, installed as a model server would install it.

`pip install ./clients/python` into a fresh virtualenv of the oldest Python that
`requires-python` allows (a pyenv interpreter: CI's image has it, so a missing one fails):
none of the server's dependencies come with it, `featurestore` imports, and it talks to the
test server from there. The Parquet export runs there too, with pyarrow (the `parquet`
extra) installed beside the virtualenv so the base install stays pristine. Static guards
keep ruff's and the stubs' versions in step with what the client declares.

The virtualenv is built once for the module: 15-20 s with pip's cache, about 22 s without
(venv and pip bootstrap, the client's wheel build, grpcio); pyarrow adds 5 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from featurestore import FeatureStoreClient
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "python"
PROJECT = tomllib.loads((CLIENT / "pyproject.toml").read_text())
# Would come with a mistaken dependency on the server, its stores or the pipeline.
SERVER_ONLY = ("pyspark", "asyncpg", "redis", "hiredis", "sqlglot", "server", "jobs", "devstack")


def _oldest_minor() -> int:
    """The minor version of the oldest Python 3 that `requires-python` allows."""
    spec = SpecifierSet(PROJECT["project"]["requires-python"])
    allowed = [minor for minor in range(6, 30) if Version(f"3.{minor}") in spec]
    assert allowed, f"requires-python {spec} allows no Python 3"
    return allowed[0]


OLDEST = f"3.{_oldest_minor()}"


def _oldest_python() -> Path:
    """The interpreter of the oldest declared Python: pyenv's newest patch release of it, or PATH's."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    pyenv = sorted(
        root.glob(f"versions/{OLDEST}.*/bin/python{OLDEST}"),
        key=lambda p: Version(p.parent.parent.name) if re.fullmatch(r"[\d.]+", p.parent.parent.name) else Version("0"),
    )
    if pyenv:
        return pyenv[-1]
    on_path = shutil.which(f"python{OLDEST}")
    if on_path:
        return Path(on_path)
    pytest.fail(
        f"no Python {OLDEST} (the client's oldest, from requires-python) at {root}/versions/{OLDEST}.*/bin "
        f"or on PATH: install it (`pyenv install {OLDEST}`); CI's image has it"
    )


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would put this repository or this venv on the path."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


def _check(cmd: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    run = subprocess.run(
        cmd, cwd=cwd, env=env or _clean_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert run.returncode == 0, f"{' '.join(cmd)} failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"
    return run.stdout


class OldVenv:
    """A fresh virtualenv of the oldest Python with the client installed."""

    def __init__(self, python: Path, workdir: Path) -> None:
        self.python = python
        self.workdir = workdir

    def run(self, script: str, *args: str, timeout: float = 60, **env: str) -> Any:
        """Run the script in the virtualenv (from outside the repository); return the JSON it prints."""
        path = self.workdir / "script.py"
        path.write_text(script)
        out = _check([str(self.python), str(path), *args], self.workdir, timeout, _clean_env(**env))
        return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def old_venv(tmp_path_factory: pytest.TempPathFactory) -> OldVenv:
    base = tmp_path_factory.mktemp("client-install")
    # A copy: pip builds in the source tree (build/, *.egg-info), and others may run this test at once.
    source = base / "client"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".*"))
    venv = base / "venv"
    _check([str(_oldest_python()), "-m", "venv", str(venv)], base, 120)
    python = venv / "bin" / "python"
    _check([str(python), "-m", "pip", "install", "-q", str(source)], base, 300)
    work = base / "work"
    work.mkdir()
    return OldVenv(python, work)


ENVIRONMENT = """
import importlib.metadata, importlib.util, json, re, sys
import featurestore
print(json.dumps({
    "version": list(sys.version_info[:2]),
    "featurestore": featurestore.__file__,
    "present": [m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None],
    "dists": sorted(re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in importlib.metadata.distributions()),
}))
"""


def test_installs_alone_and_imports(old_venv: OldVenv) -> None:
    env = old_venv.run(ENVIRONMENT, *SERVER_ONLY, "pyarrow")
    assert env["version"] == [3, _oldest_minor()]
    venv = old_venv.python.parent.parent.resolve()
    assert Path(env["featurestore"]).resolve().is_relative_to(venv), "imported from outside the venv"
    assert env["present"] == [], f"the client brought {env['present']} with it"
    assert set(env["dists"]) <= {
        "featurestore-client",
        "grpcio",
        "grpcio-status",
        "protobuf",
        "googleapis-common-protos",
        "typing-extensions",  # grpcio's
        "pip",
        "setuptools",
    }


CALLS = """
import json, sys
from datetime import timezone
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from featurestore import Client, FeatureStoreClient, NotFound, error_details, python_value
from featurestore.registry.v1 import registry_service_pb2 as rs
from featurestore.serving.v1 import value_pb2

target, name = sys.argv[1], sys.argv[2]
with Client(target) as facade:
    facade.wait_ready()
    paged = [f.name for f in facade.list_features(page_size=1)]
    try:
        facade.get_feature("missing")
    except NotFound as err:
        not_found = [err.reason, err.metadata]
with FeatureStoreClient(target) as client:
    grpc.channel_ready_future(client.channel).result(timeout=10)
    got = client.registry.GetFeature(rs.GetFeatureRequest(name=name), timeout=10)
    listed = client.registry.ListFeatures(rs.ListFeaturesRequest(page_size=10), timeout=10)
    missing = None
    try:
        client.registry.GetFeature(rs.GetFeatureRequest(name="missing"), timeout=10)
    except grpc.RpcError as err:
        missing = error_details(err)
when = python_value(value_pb2.Value(timestamp_value=Timestamp(seconds=1700000000, nanos=123456000)))
print(json.dumps({
    "feature": got.SerializeToString().hex(),
    "listed": [f.name for f in listed.features],
    "paged": paged,
    "not_found": not_found,
    "missing": missing and [missing.code.name, missing.reason, missing.metadata],
    "when": when.isoformat(),
    "utc": when.tzinfo is timezone.utc,
}))
"""


@pytest.mark.usefixtures("empty_registry")
def test_calls_the_server(old_venv: OldVenv, client: FeatureStoreClient, grpc_target: str) -> None:
    sent = pb.Feature(
        name="old_python_total",
        entity_type="customer",
        value_type=pb.FLOAT,
        source=pb.BATCH,
        category=pb.DERIVED,
        frequency=pb.DAILY,
        owner="team-a",
        description="read from the oldest Python",
    )
    created = client.registry.CreateFeature(rs.CreateFeatureRequest(feature=sent))

    out = old_venv.run(CALLS, grpc_target, created.name)

    assert pb.Feature.FromString(bytes.fromhex(out["feature"])) == created
    assert out["listed"] == [created.name]
    assert out["paged"] == [created.name]
    assert out["not_found"] == ["FEATURE_NOT_FOUND", {"name": "missing"}]
    assert out["missing"] == ["NOT_FOUND", "FEATURE_NOT_FOUND", {"name": "missing"}]
    assert out["when"] == "2023-11-14T22:13:20.123456+00:00"
    assert out["utc"] is True

    # The console script, without any extra: reads work, and YAML definitions ask for the `cli` extra.
    cli = str(old_venv.python.parent / "featurestore")
    listed = _check([cli, "--target", grpc_target, "-o", "json", "features", "list"], old_venv.workdir, 60)
    assert [f["name"] for f in json.loads(listed)] == [created.name]
    (old_venv.workdir / "defs.yaml").write_text("name: x\nentity_type: customer\nvalue_type: FLOAT\n")
    plan = subprocess.run(
        [cli, "--target", grpc_target, "plan", "-f", str(old_venv.workdir / "defs.yaml")],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=60,
        check=False,
    )
    assert plan.returncode == 1
    assert "pip install 'featurestore-client[cli]'" in plan.stderr


PARQUET = """
import json, sys
from datetime import datetime
import pyarrow
import pyarrow.parquet as pq
from google.protobuf.timestamp_pb2 import Timestamp
from featurestore import write_training_parquet
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2

ts = Timestamp(seconds=1700000000, nanos=123456000)
example = fs.TrainingExample(
    entity_id="c1",
    timestamp=ts,
    extra={"label": value_pb2.Value(int64_value=-(2**63))},
    features=[
        fs.FeatureValue(name="last_seen", value=value_pb2.Value(timestamp_value=ts), status=fs.PRESENT),
        fs.FeatureValue(name="total", status=fs.NOT_FOUND),
    ],
)
chunks = [fs.GetTrainingDatasetResponse(), fs.GetTrainingDatasetResponse(examples=[example])]
rows = write_training_parquet(chunks, sys.argv[1])
table = pq.read_table(sys.argv[1])
print(json.dumps({
    "pyarrow": pyarrow.__version__,
    "rows": rows,
    "types": {f.name: str(f.type) for f in table.schema},
    "values": {k: [v.isoformat() if isinstance(v, datetime) else v for v in c] for k, c in table.to_pydict().items()},
}))
"""


def test_parquet_export(old_venv: OldVenv) -> None:
    # pyarrow >= 15 (the `parquet` extra) has wheels for the oldest Python; beside the venv, not in it.
    extra = PROJECT["project"]["optional-dependencies"]["parquet"]
    site = old_venv.workdir / "parquet-extra"
    _check([str(old_venv.python), "-m", "pip", "install", "-q", "--target", str(site), *extra], old_venv.workdir, 300)

    out = old_venv.run(PARQUET, str(old_venv.workdir / "train.parquet"), PYTHONPATH=str(site))

    assert out["rows"] == 1
    assert out["types"] == {
        "entity_id": "string",
        "timestamp": "timestamp[us, tz=UTC]",
        "label": "int64",
        "last_seen": "timestamp[us, tz=UTC]",
        "last_seen__status": "string",
        "total": "null",
        "total__status": "string",
    }
    assert out["values"] == {
        "entity_id": ["c1"],
        "timestamp": ["2023-11-14T22:13:20.123456+00:00"],
        "label": [-(2**63)],
        "last_seen": ["2023-11-14T22:13:20.123456+00:00"],
        "last_seen__status": ["PRESENT"],
        "total": [None],
        "total__status": ["NOT_FOUND"],
    }


def test_ruff_targets_the_oldest_python() -> None:
    # pyupgrade (UP) rules rewrite to what the target allows: a newer target would bring 3.11-only APIs back.
    assert PROJECT["tool"]["ruff"]["target-version"] == f"py{OLDEST.replace('.', '')}"


def test_types_check_on_the_oldest_python(tmp_path: Path) -> None:
    # Catches newer-only APIs on paths the import above does not run (typeshed gates them by version).
    cmd = [sys.executable, "-m", "mypy", "--python-version", OLDEST, "--cache-dir", str(tmp_path)]
    _check([*cmd, str(CLIENT / "featurestore")], ROOT, 120, dict(os.environ))


def _pin(name: str) -> Version:
    """The lower bound the client declares for a dependency."""
    for requirement in PROJECT["project"]["dependencies"]:
        found = re.fullmatch(rf"{re.escape(name)}>=([\d.]+)", requirement)
        if found:
            return Version(found[1])
    raise AssertionError(f"{name} has no `>=` lower bound in {CLIENT / 'pyproject.toml'}")


def test_declared_runtimes_are_at_least_the_generators() -> None:
    # protobuf refuses a runtime older than the gencode, and the gRPC stubs a grpcio older than
    # grpcio-tools: the lower bounds must follow `make gen`, or the oldest allowed install fails.
    generated = "".join(p.read_text() for p in sorted((CLIENT / "featurestore").glob("*/v1/*.py")))
    protobuf = {Version(v) for v in re.findall(r"# Protobuf Python Version: (\S+)", generated)}
    grpc = {Version(v) for v in re.findall(r"GRPC_GENERATED_VERSION = '(\S+)'", generated)}
    assert protobuf, "no generated protobuf module found"
    assert grpc, "no generated gRPC module found"
    assert max(protobuf) <= _pin("protobuf")
    assert max(grpc) <= _pin("grpcio")
    assert max(grpc) <= _pin("grpcio-status")

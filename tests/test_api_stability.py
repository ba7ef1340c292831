"""The API stability gate: `make buf-breaking` fails on incompatible changes to protos/.

Each case copies protos/ and buf.yaml to a scratch folder, makes one change and
runs `buf breaking` against the committed baseline of the released API, as the
Makefile does. The REST paths (google.api.http options) are outside buf's
rules, so they are compared with the baseline here. No network: buf.yaml has no
remote dependencies.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
BASELINE = ROOT / "protos" / "baseline" / "featurestore-v1.binpb"
DESCRIPTOR_SET = ROOT / "gateway" / "featurestore.pb"
FEATURE = "protos/featurestore/registry/v1/feature.proto"
REGISTRY = "protos/featurestore/registry/v1/registry_service.proto"


def _buf() -> Path:
    if not BUF.is_file():
        pytest.fail(f"{BUF.relative_to(ROOT)} is missing: run `make lint` (or `make {BUF.relative_to(ROOT)}`) first")
    return BUF


def _tree(tmp_path: Path) -> Path:
    """A copy of the buf workspace (buf.yaml and protos/) to change."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "protos", tree / "protos")
    shutil.copy(ROOT / "buf.yaml", tree / "buf.yaml")
    return tree


def _edit(tree: Path, path: str, old: str, new: str) -> None:
    file = tree / path
    text = file.read_text()
    assert text.count(old) == 1, f"{old!r} is not once in {path}: update this test"
    file.write_text(text.replace(old, new))


def _breaking(tree: Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(_buf()), "breaking", "--against", str(BASELINE), "--error-format", "json"]
    return subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=120, check=False)


def test_unchanged_protos_pass(tmp_path: Path) -> None:
    result = _breaking(_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_comment_changes_pass(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    _edit(tree, FEATURE, "// The team or person that owns the feature.", "// Who owns the feature.")
    result = _breaking(tree)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("path", "old", "new", "rule"),
    [
        pytest.param(FEATURE, "string owner = 8;", "string owner = 99;", "FIELD_NO_DELETE", id="renumbered-field"),
        pytest.param(
            REGISTRY,
            "rpc GetFeature(GetFeatureRequest)",
            "rpc FetchFeature(GetFeatureRequest)",
            "RPC_NO_DELETE",
            id="renamed-method",
        ),
        pytest.param(
            FEATURE,
            "string owner = 8;",
            'string owner = 8 [json_name = "ownerName"];',
            "FIELD_SAME_JSON_NAME",
            id="renamed-json-field",
        ),
        pytest.param(FEATURE, "string owner = 8;", "string team = 8;", "FIELD_SAME_NAME", id="renamed-field"),
        pytest.param(FEATURE, "  DAILY = 3;", "  DAY = 3;", "ENUM_VALUE_SAME_NAME", id="renamed-enum-value"),
        pytest.param(FEATURE, "string owner = 8;", "bytes owner = 8;", "FIELD_SAME_TYPE", id="changed-field-type"),
    ],
)
def test_incompatible_change_fails(tmp_path: Path, path: str, old: str, new: str, rule: str) -> None:
    tree = _tree(tmp_path)
    _edit(tree, path, old, new)
    result = _breaking(tree)
    assert result.returncode != 0, f"buf breaking accepted {new!r}"
    rules = {json.loads(line)["type"] for line in result.stdout.splitlines() if line.strip()}
    assert rule in rules, result.stdout + result.stderr


def _descriptors(path: Path) -> descriptor_pb2.FileDescriptorSet:
    """A descriptor set; a buf image parses as one (its extra field per file is kept as unknown)."""
    return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())


def _rest_routes(files: descriptor_pb2.FileDescriptorSet) -> dict[str, str]:
    """Each featurestore method's google.api.http rule, as text ("" for a gRPC-only method)."""
    routes = {}
    for file in files.file:
        if not file.package.startswith("featurestore."):
            continue
        for service in file.service:
            for method in service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                routes[f"{file.package}.{service.name}.{method.name}"] = str(rule)
    return routes


def _route_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [f"{name}: {rule!r} -> {after.get(name)!r}" for name, rule in before.items() if after.get(name) != rule]


def test_rest_routes_match_the_baseline() -> None:
    baseline = _rest_routes(_descriptors(BASELINE))
    assert baseline, "the baseline holds no featurestore methods"
    assert _route_changes(baseline, _rest_routes(_descriptors(DESCRIPTOR_SET))) == []


def test_a_changed_rest_route_is_reported() -> None:
    current = _descriptors(DESCRIPTOR_SET)
    baseline = _rest_routes(_descriptors(BASELINE))
    method = next(m for f in current.file for s in f.service for m in s.method if m.name == "GetFeature")
    method.options.Extensions[annotations_pb2.http].get = "/api/feature-registry/v2/features/{name}"
    assert [c.split(":")[0] for c in _route_changes(baseline, _rest_routes(current))] == [
        "featurestore.registry.v1.RegistryService.GetFeature"
    ]

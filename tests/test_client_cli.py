"""Definitions as code (`featurestore plan/apply`) and the `featurestore` command line, against the test server.

The shipped definitions (definitions/demo and definitions/seed) are planned and applied
into an empty registry; reruns change nothing; a field change shows as a field diff; a
change made by someone else between plan and apply makes the apply fail; --prune deletes,
never by default. The read commands print tables or JSON and fail with the server's message.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import (
    Client,
    DefinitionError,
    EtagMismatch,
    apply_plan,
    load_definitions,
    plan_definitions,
)
from featurestore._cli import main

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def run(target: str, *argv: str) -> tuple[int, str]:
    """Run the CLI in-process; its exit code and stdout."""
    out = io.StringIO()
    code = main(["--target", target, *argv], out=out)
    return code, out.getvalue()


@pytest.fixture
def defs(tmp_path: Path) -> Path:
    """A copy of the shipped definitions, to edit."""
    target = tmp_path / "defs"
    shutil.copytree(ROOT / "definitions", target, ignore=shutil.ignore_patterns("*.md"))
    return target


@pytest.mark.usefixtures("empty_registry")
def test_plan_apply_rerun_change_and_prune(grpc_target: str, defs: Path) -> None:
    code, out = run(grpc_target, "plan", "-f", str(defs), "--detailed-exitcode")
    assert code == 3
    assert "+ feature customer_total_purchases_30d (create)" in out
    # demo/ (4 features, 1 group), seed/ (2 and 1), streaming/ (3 features)
    assert out.strip().endswith("Plan: 11 to create, 0 to change, 0 to delete.")

    code, out = run(
        grpc_target, "apply", "-f", str(defs / "demo"), "-f", str(defs / "seed"), "-f", str(defs / "streaming")
    )
    assert code == 0
    assert out.strip().endswith("Applied: 11 created, 0 changed, 0 deleted.")
    with Client(grpc_target) as client:
        assert len(list(client.list_features())) == 9
        assert client.get_feature("customer_total_purchases_30d").source_config.filter.startswith("purchase_date")

    # Idempotent: nothing to do, exit 0 even with --detailed-exitcode.
    assert run(grpc_target, "plan", "-f", str(defs), "--detailed-exitcode") == (
        0,
        "No changes: the registry matches the definitions.\n",
    )
    assert run(grpc_target, "apply", "-f", str(defs))[1] == "No changes: the registry matches the definitions.\n"

    # A field change is planned field by field and applied as a new revision.
    price = defs / "demo" / "product_price.yaml"
    price.write_text(
        price.read_text().replace("Current list price", "List price").replace("[catalog, monetary]", "[catalog]")
    )
    code, out = run(grpc_target, "plan", "-f", str(defs))
    assert code == 0
    assert out.splitlines() == [
        "~ feature product_price",
        '    description: "Current list price of the product" -> "List price of the product"',
        '    tags: ["catalog", "monetary"] -> ["catalog"]',
        "Plan: 0 to create, 1 to change, 0 to delete.",
    ]
    code, out = run(grpc_target, "--output", "json", "apply", "-f", str(defs))
    assert json.loads(out)["applied"]["update"] == 1
    with Client(grpc_target) as client:
        assert client.get_feature("product_price").revision == 2

    # An entity or value type cannot change: the plan says so, and nothing is applied.
    price.write_text(price.read_text().replace("value_type: FLOAT", "value_type: INT64"))
    assert run(grpc_target, "apply", "-f", str(defs))[0] == 1
    price.write_text(price.read_text().replace("value_type: INT64", "value_type: FLOAT"))

    # Files removed: nothing is deleted without --prune.
    (defs / "demo" / "product_category.yaml").unlink()
    (defs / "demo" / "product_catalog_features.yaml").unlink()
    assert run(grpc_target, "plan", "-f", str(defs))[1].startswith("No changes")
    code, out = run(grpc_target, "plan", "-f", str(defs), "--prune")
    assert out.splitlines() == [
        "- group product_catalog_features (delete)",
        "- feature product_category (delete)",
        "Plan: 0 to create, 0 to change, 2 to delete.",
    ]
    assert run(grpc_target, "apply", "-f", str(defs), "--prune")[0] == 0
    with Client(grpc_target) as client:
        assert "product_category" not in {f.name for f in client.list_features()}


@pytest.mark.usefixtures("empty_registry")
def test_a_change_since_the_plan_fails_the_apply(grpc_target: str, defs: Path) -> None:
    with Client(grpc_target) as client:
        apply_plan(client, plan_definitions(client, load_definitions(defs / "demo")))
        price = defs / "demo" / "product_price.yaml"
        price.write_text(price.read_text().replace("Current list price", "List price"))
        plan = plan_definitions(client, load_definitions(defs / "demo"))
        client.update_feature({"name": "product_price", "owner": "someone-else"})  # meanwhile
        with pytest.raises(EtagMismatch):
            apply_plan(client, plan)
        assert client.get_feature("product_price").owner == "someone-else"
        # A fresh plan shows both differences; applying it restores the files' definition.
        fresh = plan_definitions(client, load_definitions(defs / "demo"))
        assert [f.field for f in fresh.changes[0].fields] == ["description", "owner"]
        apply_plan(client, fresh)
        assert client.get_feature("product_price").owner == "catalog-team"


def test_bad_definitions_files_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nentity_type: customer\nvalue_type: FLOAT\ncolour: red\n")
    with pytest.raises(DefinitionError, match=r"bad.yaml \(document 1\).*colour"):
        load_definitions(bad)
    bad.write_text("name: x\nentity_type: customer\nvalue_type: FLOAT\netag: abc\n")
    with pytest.raises(DefinitionError, match="etag is set by the server"):
        load_definitions(bad)
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps([{"name": "x", "entity_type": "c", "value_type": "FLOAT"}] * 2))
    with pytest.raises(DefinitionError, match=r"document 2\): feature 'x' is also defined in"):
        load_definitions(twice)
    assert main(["plan", "-f", str(tmp_path / "missing")]) == 1
    assert "no such file or directory" in capsys.readouterr().err


@pytest.mark.usefixtures("empty_registry", "empty_online")
def test_read_commands(grpc_target: str, defs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(grpc_target, "apply", "-f", str(defs))[0] == 0
    with Client(grpc_target) as client:
        client.write_features(
            "customer",
            [
                {"entity_id": "c1", "event_time": T0 + timedelta(days=d), "customer_purchase_frequency_30d": d}
                for d in range(3)
            ],
        )
        client.update_feature({"name": "customer_purchase_frequency_30d", "owner": "me"})

    code, out = run(grpc_target, "features", "list", "--entity-type", "product")
    assert out.splitlines()[0].split() == ["NAME", "ENTITY_TYPE", "VALUE_TYPE", "SOURCE", "OWNER", "REVISION", "TAGS"]
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["product_category", "product_price"]
    code, out = run(grpc_target, "-o", "json", "features", "get", "product_price")
    assert json.loads(out)["value_type"] == "FLOAT"
    code, out = run(grpc_target, "features", "revisions", "customer_purchase_frequency_30d", "-o", "json")
    assert [r["revision"] for r in json.loads(out)] == ["2", "1"]  # int64 in protobuf JSON: strings
    assert "customer_rfm_features" in run(grpc_target, "groups", "list")[1]
    assert "feature_names:" in run(grpc_target, "groups", "get", "customer_rfm_features")[1]

    code, out = run(
        grpc_target, "get", "--entity-type", "customer", "--entity", "c1,c2", "--groups", "customer_rfm_features"
    )
    lines = out.splitlines()
    assert lines[0].split() == ["ENTITY", "FEATURE", "VALUE", "STATUS", "EVENT_TIME"]
    assert lines[2].split()[:4] == ["c1", "customer_purchase_frequency_30d", "2", "EXPIRED"]
    code, out = run(
        grpc_target,
        "get",
        "--entity-type",
        "customer",
        "--entity",
        "c1",
        "--features",
        "customer_purchase_frequency_30d",
        "-o",
        "json",
    )
    assert json.loads(out)[0]["features"][0] == {
        "name": "customer_purchase_frequency_30d",
        "value": 2,
        "status": "EXPIRED",
        "event_time": "2024-01-03T00:00:00Z",
    }
    code, out = run(
        grpc_target,
        "history",
        "--entity-type",
        "customer",
        "--entity",
        "c1",
        "--features",
        "customer_purchase_frequency_30d",
    )
    assert [line.split()[-1] for line in out.splitlines()[1:]] == ["0", "1", "2"]

    rows = tmp_path / "rows.parquet"
    pq.write_table(
        pa.table({"entity_id": ["c1", "c2"], "timestamp": [T0 + timedelta(days=1, hours=1)] * 2, "label": [1, 0]}),
        rows,
    )
    train = tmp_path / "train.parquet"
    code, out = run(
        grpc_target,
        "training-dataset",
        "--entity-type",
        "customer",
        "--rows",
        str(rows),
        "--features",
        "customer_purchase_frequency_30d",
        "--out",
        str(train),
    )
    assert (code, out) == (0, f"wrote 2 rows to {train}\n")
    assert "[##############################] 2/2 rows" in capsys.readouterr().err
    assert pq.read_table(train).to_pydict()["customer_purchase_frequency_30d"] == [1, None]

    # Errors: the server's message once (the field violations it already names are not repeated).
    assert run(grpc_target, "get", "--entity-type", "customer", "--entity", "c1", "--features", "nope")[0] == 1
    assert capsys.readouterr().err == (
        "error: INVALID_ARGUMENT: invalid request: feature_names[0]: feature 'nope' does not exist\n"
    )

    # The console script: a non-zero exit with the server's message.
    script = Path(sys.executable).parent / "featurestore"
    env = {**os.environ, "FEATURESTORE_TARGET": grpc_target}
    failed = subprocess.run(
        [str(script), "features", "get", "missing"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert (failed.returncode, failed.stderr) == (1, "error: NOT_FOUND: feature 'missing' not found\n")
    usage = subprocess.run([str(script), "nonsense"], capture_output=True, text=True, timeout=60, check=False)
    assert usage.returncode == 2


def test_server_fields_are_never_a_difference() -> None:
    # OUTPUT_ONLY fields (read from the proto's field_behavior, so new ones such as revised_by
    # count too) and the etag are set by the server: a registry definition equal but for them
    # plans no change.
    from featurestore._definitions import diff
    from featurestore.registry.v1 import feature_pb2 as pb

    served = pb.Feature(name="x", description="d", revision=3, etag="e", revised_by="alice")
    served.update_time.GetCurrentTime()
    assert diff(served, pb.Feature(name="x", description="d")) == []
    assert [f.field for f in diff(served, pb.Feature(name="x"))] == ["description"]


@pytest.mark.usefixtures("empty_registry")
def test_a_streaming_definition_round_trips(grpc_target: str, tmp_path: Path) -> None:
    (tmp_path / "stream.yaml").write_text(
        """
name: customer_purchase_amount_sum_1h
entity_type: customer
value_type: FLOAT
source: STREAMING
frequency: REALTIME
source_config:
  stream: purchases
  entity_column: customer_id
  fields:
    - {name: customer_id, type: STRING}
    - {name: purchase_amount, type: FLOAT}
    - {name: event_time, type: TIMESTAMP}
  watermark: 120s
transformations:
  - {type: aggregation, function: sum, column: purchase_amount, window: 3600s}
"""
    )
    assert run(grpc_target, "apply", "-f", str(tmp_path))[0] == 0
    assert run(grpc_target, "plan", "-f", str(tmp_path), "--detailed-exitcode") == (
        0,
        "No changes: the registry matches the definitions.\n",
    )


def test_the_seed_definitions_are_the_seeds_examples() -> None:
    from google.protobuf import json_format

    from tests._seed import curls

    bodies = {}
    for curl in curls():
        if curl.method == "POST" and curl.path.startswith("/api/feature-registry/"):
            bodies[curl.body()["name"]] = curl.body()
    shipped = load_definitions(ROOT / "definitions" / "seed")
    as_json = {m.name: json_format.MessageToDict(m, preserving_proto_field_name=True) for m in shipped.features}
    as_json.update({g.name: json_format.MessageToDict(g, preserving_proto_field_name=True) for g in shipped.groups})
    assert set(bodies) == {"customer_total_purchases_30d", "customer_rfm_features"}
    for name, body in bodies.items():
        assert as_json[name] == body, name
    assert "customer_average_purchase_amount" in as_json  # the seed's Python example


COMMANDS = ["", "features", "features list", "features get", "features revisions", "groups list", "groups get"]
COMMANDS += ["get", "history", "training-dataset", "plan", "apply"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*command.split(), "--help"])
    assert done.value.code == 0
    assert "--target" in capsys.readouterr().out

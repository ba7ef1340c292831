"""Generate the Python stubs and Envoy's descriptor set from protos/.

Generated files live in exactly two places and are never edited by hand:
  clients/python/featurestore/{registry,serving}/v1/   (*_pb2.py, *.pyi, *_pb2_grpc.py)
  gateway/featurestore.pb                              (descriptor set for Envoy)

`python tools/protogen.py --check` regenerates into a scratch folder and fails
when the committed files differ (stale stubs).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PY_OUT = ROOT / "clients" / "python"
PACKAGES = ("featurestore/registry/v1", "featurestore/serving/v1")
DESCRIPTOR = Path("gateway") / "featurestore.pb"
INIT_TEXT = '"""Generated from protos/ by tools/protogen.py. Do not edit."""\n'


def _protoc(args: list[str]) -> None:
    include = Path(grpc_tools.__file__).parent / "_proto"
    bindir = Path(sys.executable).parent
    plugins = [f"--plugin=protoc-gen-{name}={bindir / f'protoc-gen-{name}'}" for name in ("mypy", "mypy_grpc")]
    cmd = [sys.executable, "-m", "grpc_tools.protoc", *plugins, f"-I{PROTOS}", f"-I{include}", *args]
    subprocess.run(cmd, check=True)


def _sources() -> list[str]:
    return sorted(str(p.relative_to(PROTOS)) for pkg in PACKAGES for p in (PROTOS / pkg).glob("*.proto"))


def generate(out: Path) -> None:
    """Write every generated file below `out`, laid out as in the repository."""
    py_out = out / PY_OUT.relative_to(ROOT)
    py_out.mkdir(parents=True, exist_ok=True)
    sources = _sources()
    _protoc(
        [
            f"--python_out={py_out}",
            f"--mypy_out={py_out}",
            f"--grpc_python_out={py_out}",
            f"--mypy_grpc_out={py_out}",
            *sources,
        ]
    )
    for pkg in PACKAGES:
        parts = Path(pkg).parts
        for depth in range(1, len(parts) + 1):
            init = py_out.joinpath(*parts[:depth], "__init__.py")
            if depth > 1 and not init.exists():
                init.write_text(INIT_TEXT)
    descriptor = out / DESCRIPTOR
    descriptor.parent.mkdir(parents=True, exist_ok=True)
    services = [s for s in sources if s.endswith("_service.proto")]
    extra = ["google/rpc/status.proto", "google/rpc/error_details.proto"]
    _protoc(["--include_imports", "--include_source_info", f"--descriptor_set_out={descriptor}", *services, *extra])


def _generated_files(base: Path) -> set[Path]:
    files = {DESCRIPTOR} if (base / DESCRIPTOR).exists() else set()
    for pkg in PACKAGES:
        folder = base / PY_OUT.relative_to(ROOT) / pkg
        files |= {p.relative_to(base) for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    for pkg in PACKAGES:
        parts = Path(pkg).parts
        for depth in range(2, len(parts)):
            init = PY_OUT.relative_to(ROOT).joinpath(*parts[:depth], "__init__.py")
            if (base / init).exists():
                files.add(init)
    return files


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want, have = _generated_files(fresh), _generated_files(ROOT)
        stale = sorted(str(p) for p in want ^ have)
        stale += sorted(str(p) for p in want & have if not filecmp.cmp(fresh / p, ROOT / p, shallow=False))
    if stale:
        print("generated files are stale; run `make gen`:", *stale, sep="\n  ", file=sys.stderr)
        return 1
    print("generated files are up to date")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when committed files are stale")
    if parser.parse_args().check:
        return check()
    for pkg in PACKAGES:
        shutil.rmtree(PY_OUT / pkg, ignore_errors=True)
    generate(ROOT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Check the import graph's architecture rules (run by `make lint`).

1. No import cycles between first-party modules (runtime imports: `if TYPE_CHECKING:` blocks
   are left out, as they never run).
2. Packages use each other's public API only: a private module (`_name`) may be imported only
   from inside the package that holds it, except by the importers in ALLOWED_PRIVATE (tests);
   benchmarks, tools, jobs and DAGs use public APIs like any user.
3. `server.core` imports nothing else of the server, so a Spark executor or the client side can
   load it without the rest.

`python tools/import_graph.py` prints each violation and exits 1 when there is one.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Top-level source folders and the import prefix their modules have.
SOURCES: dict[str, Path] = {
    "server": ROOT / "server",
    "jobs": ROOT / "jobs",
    "devstack": ROOT / "devstack",
    "featurestore": ROOT / "clients" / "python" / "featurestore",
    "bench": ROOT / "bench",
    "tools": ROOT / "tools",
    "tests": ROOT / "tests",
    "dags": ROOT / "dags",
}
# Generated stubs import each other freely; they are protoc's, not ours.
GENERATED = ("featurestore.registry.", "featurestore.serving.")
# Importers (prefixes) that may use any first-party private module, with the reason.
ALLOWED_PRIVATE: dict[str, str] = {
    "tests.": "white-box tests exercise private functions (transforms, guards, the Redis transport) directly",
    "dags.tests.": "the DAGs' tests (make test-airflow) start their stack with the test helpers",
    "bench.metrics_bench": "times the read path's own instrumentation calls in-process (white-box, like a test)",
    "bench.client_bench": "times the client's protobuf decoding path beside the default one, in the same run",
    "bench.encode_bench": "times the sink's private encoder alone, beside the per-value path (white-box)",
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for prefix, folder in SOURCES.items():
        if not folder.is_dir():
            continue
        for path in folder.rglob("*.py"):
            parts = [prefix, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _runtime_body(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement that runs at import time, leaving out `if TYPE_CHECKING:` blocks."""
    for node in body:
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            yield from _runtime_body(node.orelse)
            continue
        yield node
        if isinstance(node, ast.If | ast.Try | ast.With):
            for block in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, block, []):
                    yield from _runtime_body(child.body if isinstance(child, ast.ExceptHandler) else [child])


def _imports(name: str, path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, bool]]:
    """(imported first-party module, whether at module level) for each import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    top_level = set(map(id, _runtime_body(tree.body)))
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" for alias in node.names]
            targets = [t if t in modules else base for t in targets]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target, id(node) in top_level


def _private_violation(importer: str, target: str) -> bool:
    parts = target.split(".")
    for depth, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            owner = ".".join(parts[:depth])
            return not (importer == owner or importer.startswith(owner + "."))
    return False


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def problems() -> list[str]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    found: list[str] = []
    for name, path in sorted(modules.items()):
        if name.startswith(GENERATED):
            continue
        for target, at_import in _imports(name, path, modules):
            if at_import:
                graph.setdefault(name, set()).add(target)
            allowed = any(name.startswith(prefix) for prefix in ALLOWED_PRIVATE)
            if not allowed and _private_violation(name, target):
                found.append(f"{name} imports {target}: a private module of another package")
            if name.startswith("server.core") and target.startswith("server.") and not target.startswith("server.core"):
                found.append(f"{name} imports {target}: server.core imports nothing else of the server")
    found += [f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(graph)]
    return sorted(set(found))


def main() -> int:
    found = problems()
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

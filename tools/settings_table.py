"""The server configuration table (docs/configuration.md), generated from Settings' metadata so it cannot drift.

python tools/settings_table.py           # print the table
python tools/settings_table.py --write   # replace it in docs/configuration.md (between the markers)
python tools/settings_table.py --check   # exit 1 when docs/configuration.md's table is stale
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server import ENV_PREFIX, Settings  # noqa: E402

BEGIN, END = "<!-- settings:begin (tools/settings_table.py) -->", "<!-- settings:end -->"


def _default(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def table() -> str:
    rows = ["| Flag | Environment | Default | Meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(Settings):
        flag, env = "--" + f.name.replace("_", "-"), ENV_PREFIX + f.name.upper()
        rows.append(f"| `{flag}` | `{env}` | `{_default(f.default)}` | {f.metadata['help']} |")
    return "\n".join(rows)


def _replaced(readme: str) -> str:
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    path = ROOT / "docs" / "configuration.md"
    readme = path.read_text()
    if "--write" in argv:
        path.write_text(_replaced(readme))
    elif "--check" in argv:
        if _replaced(readme) != readme:
            print("docs/configuration.md's configuration table is stale: run python tools/settings_table.py --write")
            return 1
    else:
        print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

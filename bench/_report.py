"""What every benchmark does last: print its checks as a table and keep its results as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Check = tuple[str, float, str]  # label, measured value, target


def print_checks(checks: list[Check]) -> None:
    for label, value, target in checks:
        print(f"{label:52} {value:>14,.3f}   target {target}")


def write_json(out: Path, payload: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))

"""The seed README's curl commands, extracted verbatim so tests run exactly them."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEED = Path(__file__).resolve().parent.parent / "docs" / "seed-feature-engineering-README.md"
_BLOCK = re.compile(r"```bash\n(.*?)```", re.S)


@dataclass(frozen=True)
class Curl:
    command: str

    @property
    def path(self) -> str:
        match = re.search(r"http://localhost(/\S*)", self.command)
        assert match, self.command
        return match.group(1)

    @property
    def method(self) -> str:
        match = re.search(r"-X (\w+)", self.command)
        return match.group(1) if match else "GET"

    def body(self) -> Any:
        """The JSON sent with -d, as the shell would pass it."""
        words = shlex.split(self.command.replace("\\\n", " "))
        return json.loads(words[words.index("-d") + 1])

    def run(self, base_url: str) -> tuple[int, Any]:
        """Run the command with bash against `base_url` instead of http://localhost; (status, JSON body)."""
        command = self.command.replace("http://localhost/", base_url.rstrip("/") + "/", 1)
        command = command.replace("curl ", "curl -sS -w '\\n%{http_code}' ", 1)
        out = subprocess.run(["bash", "-c", command], check=True, capture_output=True, text=True).stdout
        body, _, status = out.rpartition("\n")
        return int(status), json.loads(body) if body else None


def curls() -> list[Curl]:
    """Every curl command in the seed's bash blocks, in document order."""
    found = []
    for block in _BLOCK.findall(SEED.read_text()):
        lines = block.splitlines(keepends=True)
        i = 0
        while i < len(lines):
            if lines[i].startswith("curl "):
                command = lines[i]
                while not _complete(command) and i + 1 < len(lines):
                    i += 1
                    command += lines[i]
                found.append(Curl(command.strip()))
            i += 1
    return found


def _complete(command: str) -> bool:
    """Whether the shell would see a whole command (no open quote, no trailing backslash)."""
    if command.rstrip("\n").endswith("\\"):
        return False
    try:
        shlex.split(command)
    except ValueError:
        return False
    return True


def registry_curls() -> list[Curl]:
    return [c for c in curls() if "/api/feature-registry/" in c.command]


def store_curls() -> list[Curl]:
    return [c for c in curls() if "/api/feature-store/" in c.command]

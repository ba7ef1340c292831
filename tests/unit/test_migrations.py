"""The migrations folder: numbered files applied in order, never two with one number."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.core.postgres import _migrations


def test_the_shipped_migrations_are_numbered_once_each() -> None:
    versions = [version for version, _, _ in _migrations()]
    assert versions == sorted(set(versions))
    assert versions[0] == 1


def test_two_files_with_one_number_are_refused(tmp_path: Path) -> None:
    """Two branches that each added "the next" migration: one of them would never run."""
    (tmp_path / "0004_revised_by.sql").write_text("SELECT 1")
    (tmp_path / "0004_streams.sql").write_text("SELECT 1")
    (tmp_path / "0003_older.sql").write_text("SELECT 1")
    with pytest.raises(RuntimeError, match=r"0004_revised_by\.sql, 0004_streams\.sql"):
        _migrations(tmp_path)
    (tmp_path / "0004_streams.sql").rename(tmp_path / "0005_streams.sql")
    assert [name for _, name, _ in _migrations(tmp_path)] == [
        "0003_older.sql",
        "0004_revised_by.sql",
        "0005_streams.sql",
    ]

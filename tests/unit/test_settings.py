"""Settings.load: flags over environment over defaults, and bad values refused with their name."""

from __future__ import annotations

import dataclasses

import pytest

from server._settings import Settings


def test_nothing_given_is_the_defaults() -> None:
    assert Settings.load([], {}) == Settings()


def test_the_environment_overrides_the_default() -> None:
    env = {"FEATURESTORE_PORT": "6000", "FEATURESTORE_REDIS_TIMEOUT": "1.5", "FEATURESTORE_REDIS_CLUSTER": "yes"}
    settings = Settings.load([], env)
    assert (settings.port, settings.redis_timeout, settings.redis_cluster) == (6000, 1.5, True)
    assert settings.postgres_dsn == Settings().postgres_dsn  # what is not set keeps its default


def test_a_flag_overrides_the_environment() -> None:
    settings = Settings.load(["--port", "7000", "--log-level", "DEBUG"], {"FEATURESTORE_PORT": "6000"})
    assert (settings.port, settings.log_level) == (7000, "DEBUG")


def test_variables_without_the_prefix_are_ignored() -> None:
    assert Settings.load([], {"PORT": "1", "port": "2", "FEATURESTORE_port": "3"}) == Settings()


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("true", True), ("ON", True), ("0", False), ("off", False)])
def test_booleans_read_the_usual_words(raw: str, expected: bool) -> None:
    assert Settings.load([], {"FEATURESTORE_REDIS_CLUSTER": raw}).redis_cluster is expected
    assert Settings.load(["--redis-cluster", raw], {}).redis_cluster is expected


@pytest.mark.parametrize(
    ("name", "raw", "type_name"),
    [("FEATURESTORE_PORT", "eighty", "int"), ("FEATURESTORE_REDIS_TIMEOUT", "soon", "float"),
     ("FEATURESTORE_MIGRATE_ONLY", "maybe", "bool")],
)  # fmt: skip
def test_a_bad_environment_value_names_the_variable(name: str, raw: str, type_name: str) -> None:
    with pytest.raises(SystemExit) as info:
        Settings.load([], {name: raw})
    assert str(info.value) == f"{name}={raw!r} is not a valid {type_name}"


@pytest.mark.parametrize("argv", [["--port", "eighty"], ["--redis-timeout", "soon"], ["--no-such-flag", "1"]])
def test_a_bad_flag_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        Settings.load(argv, {})
    assert info.value.code == 2
    assert argv[0] in capsys.readouterr().err


def _other_than(value: object) -> str:
    """A raw value of `value`'s type that parses to something else."""
    if isinstance(value, bool):
        return str(not value).lower()
    if isinstance(value, int | float):
        return str(value + 1)
    return f"other-{value}"


def test_every_setting_has_a_flag_an_environment_variable_and_help() -> None:
    for f in dataclasses.fields(Settings):
        assert f.metadata.get("help"), f.name
        raw = _other_than(f.default)
        flagged = Settings.load(["--" + f.name.replace("_", "-"), raw], {})
        from_env = Settings.load([], {"FEATURESTORE_" + f.name.upper(): raw})
        assert getattr(flagged, f.name) == getattr(from_env, f.name) != f.default, f.name


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]

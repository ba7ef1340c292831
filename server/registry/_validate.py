"""Validation of registry definitions; every problem becomes a FieldViolation.

Names are lowercase identifiers so that they are safe as Redis keys, column
names and file names alike. Free text (descriptions, tags, owners) may hold
any Unicode except control characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from featurestore.registry.v1 import feature_pb2
from server import core
from server.core import identifier_problem
from server.core.errors import FieldViolation
from server.registry._model import Feature, FeatureGroup

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_TEXT_MAX = {"description": 4096, "owner": 256, "column": 256, "tag": 64}
TAGS_MAX = 64
# Every replica's every worker holds every definition and reloads on each change: keep them small.
DEFINITION_MAX_BYTES = 64 * 1024
GROUP_FEATURES_MAX = 1000

VALUE_TYPES = frozenset(feature_pb2.ValueType.keys()) - {"VALUE_TYPE_UNSPECIFIED"}
SOURCES = frozenset(feature_pb2.FeatureSource.keys())
CATEGORIES = frozenset(feature_pb2.FeatureCategory.keys())
FREQUENCIES = frozenset(feature_pb2.FeatureFrequency.keys())


def _text_problem(value: str, max_len: int) -> str | None:
    if len(value) > max_len:
        return f"must be at most {max_len} characters, got {len(value)}"
    if _CONTROL.search(value):
        return "must not contain control characters"
    return None


def _check(out: list[FieldViolation], path: str, problem: str | None) -> None:
    if problem:
        out.append(FieldViolation(path, problem))


def _enum(out: list[FieldViolation], path: str, value: str, allowed: frozenset[str]) -> None:
    if value not in allowed:
        out.append(FieldViolation(path, f"unknown value {value}; expected one of {', '.join(sorted(allowed))}"))


def _tags(out: list[FieldViolation], path: str, tags: Iterable[str]) -> None:
    tags = list(tags)
    if len(tags) > TAGS_MAX:
        out.append(FieldViolation(path, f"at most {TAGS_MAX} tags, got {len(tags)}"))
    for i, tag in enumerate(tags):
        _check(out, f"{path}[{i}]", "must not be empty" if not tag.strip() else _text_problem(tag, _TEXT_MAX["tag"]))
    if len(set(tags)) != len(tags):
        out.append(FieldViolation(path, "must not repeat a tag"))


def feature_violations(f: Feature, prefix: str = "feature") -> list[FieldViolation]:
    """Every problem with a feature definition (empty when it is valid)."""
    out: list[FieldViolation] = []
    _check(out, f"{prefix}.name", identifier_problem(f.name))
    _check(out, f"{prefix}.entity_type", identifier_problem(f.entity_type, max_len=64))
    if f.value_type == "VALUE_TYPE_UNSPECIFIED":
        out.append(FieldViolation(f"{prefix}.value_type", "is required"))
    else:
        _enum(out, f"{prefix}.value_type", f.value_type, VALUE_TYPES)
    _enum(out, f"{prefix}.source", f.source, SOURCES)
    _enum(out, f"{prefix}.category", f.category, CATEGORIES)
    _enum(out, f"{prefix}.frequency", f.frequency, FREQUENCIES)
    _check(out, f"{prefix}.description", _text_problem(f.description, _TEXT_MAX["description"]))
    _check(out, f"{prefix}.owner", _text_problem(f.owner, _TEXT_MAX["owner"]))
    _tags(out, f"{prefix}.tags", f.tags)
    _source_config(out, f"{prefix}.source_config", f)
    if f.source == "STREAMING":
        problems = core.streaming_problems(f.entity_type, f.source_config, f.transformations)
    else:
        problems = core.batch_stream_problems(f.source_config, f.transformations)
        problems += core.computation_problems(f.source_config.filter, f.transformations)
    out += [FieldViolation(f"{prefix}.{path}", problem) for path, problem in problems]
    if f.max_age is not None and f.max_age.total_seconds() <= 0:
        out.append(FieldViolation(f"{prefix}.max_age", "must be positive"))
    size = _text_bytes(f)
    if size > DEFINITION_MAX_BYTES:
        out.append(FieldViolation(prefix, f"must be at most {DEFINITION_MAX_BYTES} bytes of text, got {size}"))
    return out


def _text_bytes(f: Feature) -> int:
    sc = f.source_config
    texts = [f.name, f.entity_type, f.description, f.owner, *f.tags, sc.table, sc.filter]
    texts += [sc.entity_column, sc.timestamp_column, sc.stream, sc.format, *(field.name for field in sc.fields)]
    for t in f.transformations:
        texts += [t.type, t.function, t.column, t.expression]
    return sum(len(text.encode()) for text in texts)


def _source_config(out: list[FieldViolation], path: str, f: Feature) -> None:
    sc = f.source_config
    _check(out, f"{path}.table", sc.table and core.table_problem(sc.table))
    for column in ("entity_column", "timestamp_column"):
        value = getattr(sc, column)
        _check(out, f"{path}.{column}", value and _text_problem(value, _TEXT_MAX["column"]))


def group_violations(g: FeatureGroup, prefix: str = "feature_group") -> list[FieldViolation]:
    """Every problem with a group definition that can be seen without the database."""
    out: list[FieldViolation] = []
    _check(out, f"{prefix}.name", identifier_problem(g.name))
    _check(out, f"{prefix}.entity_type", identifier_problem(g.entity_type, max_len=64))
    _check(out, f"{prefix}.description", _text_problem(g.description, _TEXT_MAX["description"]))
    _check(out, f"{prefix}.owner", _text_problem(g.owner, _TEXT_MAX["owner"]))
    _tags(out, f"{prefix}.tags", g.tags)
    names = g.feature_names
    if not names:
        out.append(FieldViolation(f"{prefix}.feature_names", "must name at least one feature"))
    if len(names) > GROUP_FEATURES_MAX:
        out.append(FieldViolation(f"{prefix}.feature_names", f"at most {GROUP_FEATURES_MAX} features"))
    for i, name in enumerate(names[:GROUP_FEATURES_MAX]):
        _check(out, f"{prefix}.feature_names[{i}]", identifier_problem(name))
    if len(set(names)) != len(names):
        out.append(FieldViolation(f"{prefix}.feature_names", "must not repeat a feature"))
    return out

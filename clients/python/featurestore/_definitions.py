"""Definitions as code: features and groups in files, planned and applied against the registry.

A definitions file holds one document per feature or group with the fields of the REST
body (the seed's JSON: `"value_type": "FLOAT"`, `"max_age": "172800s"`, ...). YAML files
(`.yaml`, `.yml`, several `---` documents each) need PyYAML (`featurestore-client[cli]`);
JSON files (`.json`: one object or a list) need nothing. A document may say `kind: Feature`
or `kind: FeatureGroup`; without it, a document with `feature_names` is a group.

`plan_definitions` compares the files with the registry field by field; `apply_plan` makes
the changes with the etags the plan read, so a definition changed by someone else since
the plan fails the apply (EtagMismatch) instead of being overwritten. Deletions happen
only with `prune=True`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from google.protobuf import json_format
from google.protobuf.message import Message

from featurestore.registry.v1 import feature_pb2 as pb

if TYPE_CHECKING:
    from featurestore._aio import AsyncClient
    from featurestore._sync import Client

_OUTPUT_ONLY = ("create_time", "update_time", "revision", "etag")
_IMMUTABLE = {"feature": ("entity_type", "value_type"), "group": ("entity_type",)}
_SUFFIXES = (".yaml", ".yml", ".json")


class DefinitionError(ValueError):
    """A definitions file is invalid, or a planned change is impossible (the message says where)."""


@dataclass
class Definitions:
    """Features and groups read from files; `origin[(kind, name)]` is the file and document index."""

    features: list[pb.Feature] = field(default_factory=list)
    groups: list[pb.FeatureGroup] = field(default_factory=list)
    origin: dict[tuple[str, str], str] = field(default_factory=dict)


def _documents(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        loaded = json.loads(text)
        return loaded if isinstance(loaded, list) else [loaded]
    try:
        import yaml
    except ImportError:
        raise DefinitionError(
            f"{path}: reading YAML needs PyYAML: pip install 'featurestore-client[cli]' (or use .json files)"
        ) from None
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise DefinitionError(f"{path}: not valid YAML: {err}") from None


def _files(paths: Iterable[str | Path]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix in _SUFFIXES and f.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise DefinitionError(f"{p}: no such file or directory")
    return out


def load_definitions(*paths: str | Path) -> Definitions:
    """Read every definitions file in the paths (directories are searched recursively, in name order)."""
    defs = Definitions()
    for path in _files(paths):
        for i, doc in enumerate(_documents(path)):
            where = f"{path} (document {i + 1})"
            if not isinstance(doc, dict):
                raise DefinitionError(f"{where}: expected a mapping of fields, got {type(doc).__name__}")
            doc = dict(doc)
            kind = doc.pop("kind", "FeatureGroup" if "feature_names" in doc or "featureNames" in doc else "Feature")
            if kind not in ("Feature", "FeatureGroup"):
                raise DefinitionError(f"{where}: kind must be Feature or FeatureGroup, got {kind!r}")
            for name in _OUTPUT_ONLY:
                if name in doc:
                    raise DefinitionError(f"{where}: {name} is set by the server, not by definitions")
            message: pb.Feature | pb.FeatureGroup = pb.Feature() if kind == "Feature" else pb.FeatureGroup()
            try:
                json_format.ParseDict(doc, message)
            except json_format.ParseError as err:
                raise DefinitionError(f"{where}: {err}") from None
            if not message.name:
                raise DefinitionError(f"{where}: name is required")
            key = ("feature" if kind == "Feature" else "group", message.name)
            if key in defs.origin:
                raise DefinitionError(f"{where}: {key[0]} {message.name!r} is also defined in {defs.origin[key]}")
            defs.origin[key] = where
            if isinstance(message, pb.Feature):
                defs.features.append(message)
            else:
                defs.groups.append(message)
    return defs


@dataclass(frozen=True)
class FieldChange:
    """One field's current and desired values (JSON forms; None when unset)."""

    field: str
    current: Any
    desired: Any


@dataclass(frozen=True)
class Change:
    """One planned change of a feature or group."""

    action: Literal["create", "update", "delete"]
    kind: Literal["feature", "group"]
    name: str
    fields: tuple[FieldChange, ...] = ()
    etag: str = ""
    desired: pb.Feature | pb.FeatureGroup | None = None


@dataclass
class Plan:
    """The changes that make the registry match the definitions, in the order they apply."""

    changes: list[Change] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many creates, updates and deletes."""
        return {a: sum(1 for c in self.changes if c.action == a) for a in ("create", "update", "delete")}

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data."""
        return {
            "changes": [
                {
                    "action": c.action,
                    "kind": c.kind,
                    "name": c.name,
                    "fields": [{"field": f.field, "current": f.current, "desired": f.desired} for f in c.fields],
                }
                for c in self.changes
            ],
            **self.counts(),
        }

    def render(self) -> str:
        """The plan for people: `+` create, `~` update (with each field), `-` delete."""
        if not self.changes:
            return "No changes: the registry matches the definitions."
        lines = []
        for c in self.changes:
            sign = {"create": "+", "update": "~", "delete": "-"}[c.action]
            lines.append(f"{sign} {c.kind} {c.name}" + ("" if c.action == "update" else f" ({c.action})"))
            for f in c.fields:
                lines.append(f"    {f.field}: {json.dumps(f.current)} -> {json.dumps(f.desired)}")
        n = self.counts()
        lines.append(f"Plan: {n['create']} to create, {n['update']} to change, {n['delete']} to delete.")
        return "\n".join(lines)


def _fields(message: Message) -> dict[str, Any]:
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    for name in _OUTPUT_ONLY:
        data.pop(name, None)
    return data


def diff(current: Message, desired: Message) -> list[FieldChange]:
    """The fields that differ (nested messages field by field, lists as a whole), in name order."""
    now, want = _fields(current), _fields(desired)
    out = []
    for name in sorted(set(now) | set(want)):
        a, b = now.get(name), want.get(name)
        if a == b:
            continue
        if isinstance(a, dict) or isinstance(b, dict):
            a, b = a or {}, b or {}
            out += [
                FieldChange(f"{name}.{sub}", a.get(sub), b.get(sub))
                for sub in sorted(set(a) | set(b))
                if a.get(sub) != b.get(sub)
            ]
        else:
            out.append(FieldChange(name, a, b))
    return out


def plan_definitions(
    client: Client | None,
    definitions: Definitions,
    *,
    prune: bool = False,
    updates: bool = True,
    current: tuple[Sequence[pb.Feature], Sequence[pb.FeatureGroup]] | None = None,
) -> Plan:
    """Compare the definitions with the registry (read through a sync `Client`).

    `updates=False` plans only creations (what exists is left alone). `current` passes the
    registry's features and groups instead of reading them (for an `AsyncClient`).
    Raises DefinitionError for a change the registry refuses (entity or value type).
    """
    if current is not None:
        features, groups = current
    elif client is not None:
        features, groups = list(client.list_features()), list(client.list_feature_groups())
    else:
        raise ValueError("pass a client or the current definitions")
    now_features = {f.name: f for f in features}
    now_groups = {g.name: g for g in groups}
    creates: list[Change] = []
    changes: list[Change] = []
    problems = []
    kinds: list[tuple[Literal["feature", "group"], Sequence[Any], dict[str, Any]]] = [
        ("feature", definitions.features, now_features),
        ("group", definitions.groups, now_groups),
    ]
    for kind, wanted, existing in kinds:
        for message in wanted:
            now = existing.get(message.name)
            if now is None:
                creates.append(Change("create", kind, message.name, desired=message))
                continue
            if not updates:
                continue
            fields = diff(now, message)
            for f in fields:
                if f.field in _IMMUTABLE[kind]:
                    where = definitions.origin.get((kind, message.name), "")
                    problems.append(
                        f"{where}: {kind} {message.name!r}: {f.field} cannot change ({f.current} -> {f.desired}); "
                        "delete it and create it under a new name"
                    )
            if fields:
                changes.append(Change("update", kind, message.name, tuple(fields), now.etag, message))
    if problems:
        raise DefinitionError("\n".join(problems))
    ordered = [c for c in creates if c.kind == "feature"] + [c for c in changes if c.kind == "feature"]
    ordered += [c for c in creates if c.kind == "group"] + [c for c in changes if c.kind == "group"]
    if prune:
        defined_groups = {g.name for g in definitions.groups}
        defined_features = {f.name for f in definitions.features}
        ordered += [Change("delete", "group", n, etag=g.etag) for n, g in now_groups.items() if n not in defined_groups]
        ordered += [
            Change("delete", "feature", n, etag=f.etag) for n, f in now_features.items() if n not in defined_features
        ]
    return Plan(ordered)


def apply_plan(client: Client, plan: Plan) -> list[Change]:
    """Make the planned changes through a sync `Client`, in order; returns those made.

    Updates replace every updatable field (`update_mask=["*"]`) and, like deletes, carry the
    etag the plan read: a definition changed since the plan raises EtagMismatch. A failure
    stops the apply; the changes before it stay made (apply again after fixing the cause).
    """
    done = []
    for change in plan.changes:
        _apply_one(client, change)
        done.append(change)
    return done


def _apply_one(client: Any, change: Change) -> Any:
    """The call making the change (a coroutine for an AsyncClient)."""
    feature = change.kind == "feature"
    if change.action == "create":
        create = client.create_feature if feature else client.create_feature_group
        return create(change.desired)
    if change.action == "update":
        update = client.update_feature if feature else client.update_feature_group
        return update(change.desired, update_mask=["*"], etag=change.etag)
    delete = client.delete_feature if feature else client.delete_feature_group
    return delete(change.name, etag=change.etag)


async def async_apply_plan(client: AsyncClient, plan: Plan) -> list[Change]:
    """`apply_plan` through an `AsyncClient`."""
    done = []
    for change in plan.changes:
        await _apply_one(client, change)
        done.append(change)
    return done

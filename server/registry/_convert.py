"""Conversion between the registry's protobuf messages and domain records."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from featurestore.registry.v1 import feature_pb2 as pb
from server.core.errors import FieldViolation, invalid_argument
from server.registry._model import EventField, Feature, FeatureGroup, Meta, SourceConfig, Transformation


def _name(enum: Any, value: int) -> str:
    """The enum value's name; an unknown number stays visible as its digits for validation to reject."""
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


# The range of a google.protobuf.Duration (+-10,000 years). A message may carry more (the
# wire does not check), which ToTimedelta turns into an OverflowError: refused instead.
_DURATION_MAX_SECONDS = 315_576_000_000


def _duration(msg: Any, name: str, path: str, bad: list[FieldViolation]) -> timedelta | None:
    if not msg.HasField(name):
        return None
    value = getattr(msg, name)
    if abs(value.seconds) > _DURATION_MAX_SECONDS:
        bad.append(FieldViolation(f"feature.{path}", "is out of range (a duration is at most 10,000 years)"))
        return None
    result: timedelta = value.ToTimedelta()
    return result


def _source_from_proto(sc: pb.SourceConfig, bad: list[FieldViolation]) -> SourceConfig:
    return SourceConfig(
        table=sc.table,
        filter=sc.filter,
        entity_column=sc.entity_column,
        timestamp_column=sc.timestamp_column,
        stream=sc.stream,
        format=sc.format,
        fields=tuple(EventField(f.name, _name(pb.ValueType, f.type)) for f in sc.fields),
        watermark=_duration(sc, "watermark", "source_config.watermark", bad),
    )


def _source_to_proto(sc: SourceConfig) -> pb.SourceConfig:
    msg = pb.SourceConfig(
        table=sc.table,
        filter=sc.filter,
        entity_column=sc.entity_column,
        timestamp_column=sc.timestamp_column,
        stream=sc.stream,
        format=sc.format,
        fields=[pb.EventField(name=f.name, type=pb.ValueType.Value(f.type)) for f in sc.fields],
    )
    if sc.watermark is not None:
        msg.watermark.FromTimedelta(sc.watermark)
    return msg


def _step_to_proto(t: Transformation) -> pb.Transformation:
    msg = pb.Transformation(type=t.type, function=t.function, column=t.column, expression=t.expression)
    if t.window is not None:
        msg.window.FromTimedelta(t.window)
    return msg


def feature_from_proto(msg: pb.Feature) -> Feature:
    """The definition a client sent; server fields (times, revision, etag) are ignored.

    INVALID_ARGUMENT (naming the fields) for a duration no timedelta holds."""
    bad: list[FieldViolation] = []
    feature = Feature(
        name=msg.name,
        entity_type=msg.entity_type,
        value_type=_name(pb.ValueType, msg.value_type),
        description=msg.description,
        source=_name(pb.FeatureSource, msg.source),
        category=_name(pb.FeatureCategory, msg.category),
        frequency=_name(pb.FeatureFrequency, msg.frequency),
        owner=msg.owner,
        tags=tuple(msg.tags),
        source_config=_source_from_proto(msg.source_config, bad),
        transformations=tuple(
            Transformation(
                t.type, t.function, t.column, t.expression, _duration(t, "window", f"transformations[{i}].window", bad)
            )
            for i, t in enumerate(msg.transformations)
        ),
        max_age=_duration(msg, "max_age", "max_age", bad),
    )
    if bad:
        raise invalid_argument(bad)
    return feature


def _set_meta(msg: pb.Feature | pb.FeatureGroup, name: str, meta: Meta | None) -> None:
    if meta is None:
        return
    msg.revision = meta.revision
    msg.revised_by = meta.revised_by
    msg.etag = meta.etag(name)
    msg.create_time.FromDatetime(meta.create_time)
    msg.update_time.FromDatetime(meta.update_time)


def feature_to_proto(f: Feature) -> pb.Feature:
    """The full message, with server fields when the feature is stored."""
    msg = pb.Feature(
        name=f.name,
        description=f.description,
        entity_type=f.entity_type,
        value_type=pb.ValueType.Value(f.value_type),
        source=pb.FeatureSource.Value(f.source),
        category=pb.FeatureCategory.Value(f.category),
        frequency=pb.FeatureFrequency.Value(f.frequency),
        owner=f.owner,
        tags=f.tags,
        transformations=[_step_to_proto(t) for t in f.transformations],
    )
    if f.source_config != SourceConfig():
        msg.source_config.CopyFrom(_source_to_proto(f.source_config))
    if f.max_age is not None:
        msg.max_age.FromTimedelta(f.max_age)
    _set_meta(msg, f.name, f.meta)
    return msg


def group_from_proto(msg: pb.FeatureGroup) -> FeatureGroup:
    """The definition a client sent; server fields are ignored."""
    return FeatureGroup(
        name=msg.name,
        entity_type=msg.entity_type,
        feature_names=tuple(msg.feature_names),
        description=msg.description,
        owner=msg.owner,
        tags=tuple(msg.tags),
    )


def group_to_proto(g: FeatureGroup) -> pb.FeatureGroup:
    """The full message, with server fields when the group is stored."""
    msg = pb.FeatureGroup(
        name=g.name,
        description=g.description,
        feature_names=g.feature_names,
        entity_type=g.entity_type,
        owner=g.owner,
        tags=g.tags,
    )
    _set_meta(msg, g.name, g.meta)
    return msg

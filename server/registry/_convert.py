"""Conversion between the registry's protobuf messages and domain records."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from featurestore.registry.v1 import feature_pb2 as pb
from server.registry._model import EventField, Feature, FeatureGroup, Meta, SourceConfig, Transformation


def _name(enum: Any, value: int) -> str:
    """The enum value's name; an unknown number stays visible as its digits for validation to reject."""
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


def _duration(msg: Any, name: str) -> timedelta | None:
    return getattr(msg, name).ToTimedelta() if msg.HasField(name) else None


def _source_from_proto(sc: pb.SourceConfig) -> SourceConfig:
    return SourceConfig(
        table=sc.table,
        filter=sc.filter,
        entity_column=sc.entity_column,
        timestamp_column=sc.timestamp_column,
        stream=sc.stream,
        format=sc.format,
        fields=tuple(EventField(f.name, _name(pb.ValueType, f.type)) for f in sc.fields),
        watermark=_duration(sc, "watermark"),
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
    """The definition a client sent; server fields (times, revision, etag) are ignored."""
    return Feature(
        name=msg.name,
        entity_type=msg.entity_type,
        value_type=_name(pb.ValueType, msg.value_type),
        description=msg.description,
        source=_name(pb.FeatureSource, msg.source),
        category=_name(pb.FeatureCategory, msg.category),
        frequency=_name(pb.FeatureFrequency, msg.frequency),
        owner=msg.owner,
        tags=tuple(msg.tags),
        source_config=_source_from_proto(msg.source_config),
        transformations=tuple(
            Transformation(t.type, t.function, t.column, t.expression, _duration(t, "window"))
            for t in msg.transformations
        ),
        max_age=msg.max_age.ToTimedelta() if msg.HasField("max_age") else None,
    )


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

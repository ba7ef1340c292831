-- Offline store: every written feature value, partitioned by event time (one
-- partition per month, created on demand by the writer). The primary key makes
-- writes idempotent: the same (entity, feature, event time) is one row, and a
-- later ingestion of it replaces the value. It also serves point lookups "the
-- latest value of this feature at or before t" and per-entity range scans.
CREATE TABLE feature_history (
    entity_type    text NOT NULL,
    entity_id      text NOT NULL,
    feature_name   text NOT NULL,
    event_time     timestamptz NOT NULL,
    value          bytea NOT NULL,          -- a serialized featurestore.serving.v1.Value
    -- The same value as a ready-to-send FeatureValue frame (field 3 of the read
    -- responses, see server/_codec.py), so reads concatenate instead of encode.
    frame          bytea NOT NULL,
    ingestion_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity_type, entity_id, feature_name, event_time)
) PARTITION BY RANGE (event_time);

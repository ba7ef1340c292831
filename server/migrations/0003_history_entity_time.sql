-- Point-in-time joins read "the latest values of this entity at or before t"
-- as one backward scan per training row: the values written together (a
-- pipeline run writes all of an entity's features with one event time) sit
-- side by side in this order. The entity is keyed by a 64-bit hash of its type
-- and id (queries recheck both): integer comparisons in every descent, and equal
-- keys share one index entry (B-tree deduplication), so the index stays a
-- fifth of the primary key's size. Per-feature lookups, which do not name the
-- hash, keep using the primary key.
--
-- On a large existing history this build holds off writes while it runs; to
-- avoid that, create the index ON ONLY feature_history, then CONCURRENTLY on
-- each partition and ALTER INDEX ... ATTACH PARTITION each, before upgrading.
CREATE INDEX IF NOT EXISTS feature_history_entity_time
    ON feature_history ((hashtextextended(entity_type || ':' || entity_id, 0)), event_time);

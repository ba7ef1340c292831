-- Point-in-time joins read "the latest values of this entity at or before t"
-- as one backward scan per training row: the values written together (a
-- pipeline run writes all of an entity's features with one event time) sit
-- side by side in this order. Equal keys share one index entry (B-tree
-- deduplication), so the index stays a fraction of the primary key's size.
CREATE INDEX IF NOT EXISTS feature_history_entity_time
    ON feature_history (entity_type, entity_id, event_time);

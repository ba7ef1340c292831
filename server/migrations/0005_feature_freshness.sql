-- Freshness summary: per feature, the newest event time written (by the write path or a
-- pipeline) and when it was last written. One row per feature, upserted with GREATEST by
-- every writer, so the server can expose freshness gauges without scanning the history.
CREATE TABLE IF NOT EXISTS feature_freshness (
    feature_name      text PRIMARY KEY,
    entity_type       text NOT NULL,
    newest_event_time timestamptz NOT NULL,
    written_at        timestamptz NOT NULL,
    writer            text NOT NULL  -- what wrote last: write_path, batch_pipeline, ...
);

-- Feature Registry: current definitions, group membership and the history of
-- every definition change. The spec fields live in `definition` (jsonb); the
-- columns used for filtering are generated from it.

CREATE TABLE registry_features (
    name        text PRIMARY KEY,
    definition  jsonb NOT NULL,
    entity_type text GENERATED ALWAYS AS (definition ->> 'entity_type') STORED,
    owner       text GENERATED ALWAYS AS (definition ->> 'owner') STORED,
    category    text GENERATED ALWAYS AS (definition ->> 'category') STORED,
    revision    bigint NOT NULL,
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL
);
CREATE INDEX registry_features_entity_type ON registry_features (entity_type, name);
CREATE INDEX registry_features_owner ON registry_features (owner, name);
CREATE INDEX registry_features_tags ON registry_features USING gin ((definition -> 'tags'));

CREATE TABLE registry_feature_groups (
    name        text PRIMARY KEY,
    definition  jsonb NOT NULL,
    entity_type text GENERATED ALWAYS AS (definition ->> 'entity_type') STORED,
    owner       text GENERATED ALWAYS AS (definition ->> 'owner') STORED,
    revision    bigint NOT NULL,
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL
);
CREATE INDEX registry_feature_groups_entity_type ON registry_feature_groups (entity_type, name);
CREATE INDEX registry_feature_groups_tags ON registry_feature_groups USING gin ((definition -> 'tags'));

-- A feature cannot be deleted while a group uses it (RESTRICT).
CREATE TABLE registry_group_members (
    group_name   text NOT NULL REFERENCES registry_feature_groups (name) ON DELETE CASCADE,
    position     integer NOT NULL,
    feature_name text NOT NULL REFERENCES registry_features (name) ON DELETE RESTRICT,
    PRIMARY KEY (group_name, position)
);
CREATE INDEX registry_group_members_feature ON registry_group_members (feature_name);

-- Every create, update and delete of a feature or group, in commit order. The
-- largest id is the registry's version: readers poll it to refresh caches.
CREATE TABLE registry_revisions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('feature', 'feature_group')),
    name        text NOT NULL,
    revision    bigint NOT NULL,
    change      text NOT NULL CHECK (change IN ('CREATE', 'UPDATE', 'DELETE')),
    definition  jsonb NOT NULL,
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX registry_revisions_by_name ON registry_revisions (kind, name, id DESC);

-- Who made each definition change: the authenticated subject of the call (a
-- JWT's `sub`, an API key's principal); empty for changes made without
-- authentication (auth_mode off), and for every change recorded before this.
-- A constant default adds the columns without rewriting the tables.
ALTER TABLE registry_features ADD COLUMN revised_by text NOT NULL DEFAULT '';
ALTER TABLE registry_feature_groups ADD COLUMN revised_by text NOT NULL DEFAULT '';
ALTER TABLE registry_revisions ADD COLUMN revised_by text NOT NULL DEFAULT '';

-- popgw registry schema, version 1. Applied by `popgw registry import --to postgres://…`
-- (and checked by every process that opens the store). Documented in ARCHITECTURE.md.

-- The feed's head (newest version), floor (oldest version a follower may resume from)
-- and the number of citizens.
CREATE TABLE popgw_registry_meta (
    key   text PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO popgw_registry_meta (key, value) VALUES ('head', 0), ('floor', 0), ('count', 0);

-- One row per citizen. The ids are stored as numbers (12 and 9 digits fit a bigint;
-- leading zeros are restored on the way out). `record` is the whole record, the
-- protobuf encoding of popgw.registry.v1.CitizenRecord (proto/popgw/registry/v1/registry.proto),
-- carrying the same version as the `version` column.
CREATE TABLE citizens (
    personal_id  bigint NOT NULL,
    old_id       bigint,
    household_id text,
    version      bigint NOT NULL,
    record       bytea  NOT NULL,
    CONSTRAINT citizens_pkey PRIMARY KEY (personal_id)
);
CREATE UNIQUE INDEX citizens_old_id ON citizens (old_id);
CREATE INDEX citizens_household ON citizens (household_id);

-- The change feed: every change, as the record it left, by version. `WatchChanges`
-- replays it; rows at or below the floor are compacted away.
CREATE TABLE citizen_changes (
    version     bigint PRIMARY KEY,
    personal_id bigint NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    record      bytea NOT NULL
);

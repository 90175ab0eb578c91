-- Entity types, their shards, the issued entity numbers (with their audit) and the decks of
-- nearly full shards. Apps never read these tables: they see the views idmint.entity_types
-- and idmint.entity_capacity (sql/50) and call functions. The engine is described in sql/50.

-- The secret partition key of a type: six random 64-bit seeds, one per round of the
-- Feistel permutation that splits its 1 000 000 numbers into 200 shards (see sql/50).
-- (62 random bits each: the last 16 hex digits of a strong random version-4 UUID.)
CREATE FUNCTION idmint._new_partition_key() RETURNS bigint[]
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT array_agg(('x' || right(translate(gen_random_uuid()::text, '-', ''), 16))::bit(64)::bigint)
    FROM generate_series(1, 6)
$$;
COMMENT ON FUNCTION idmint._new_partition_key() IS
    'A new secret shard partition key for an entity type (six random seeds of a Feistel permutation)';

-- One row per type.
CREATE TABLE idmint.entity_ranges (
    prefix     integer     PRIMARY KEY CHECK (prefix BETWEEN 1 AND 9),
    name       text        NOT NULL UNIQUE
        CHECK (name <> '' AND name !~ '^\s|\s$' AND name !~ '^[0-9]$' AND length(name) <= 100),
    capacity   integer     NOT NULL DEFAULT 1000000 CHECK (capacity = 1000000),
    -- The secret partition of the type's numbers into shards (never shown to apps).
    shard_key  bigint[]    NOT NULL DEFAULT idmint._new_partition_key()
        CHECK (array_length(shard_key, 1) = 6 AND array_lower(shard_key, 1) = 1
               AND array_ndims(shard_key) = 1 AND array_position(shard_key, NULL) IS NULL),
    -- The highest capacity threshold notified (0: none); see idmint._entity_alert.
    alerted    numeric     NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE idmint.entity_ranges IS
    'Entity types (prefix 1..9, name), their secret shard partition and the last capacity threshold notified';

-- 200 shards per type, each owning 5 000 numbers of the secret partition. A transaction
-- that issues from a shard holds the shard's row lock to its end; other issuers skip it
-- (FOR NO KEY UPDATE SKIP LOCKED). `issued` counts the shard's committed numbers: it is raised
-- once per transaction, at commit (trigger entity_shards_flush), from the rows the
-- transaction inserted into entity_numbers, never per call and never from a value an app
-- could set.
CREATE TABLE idmint.entity_shards (
    prefix  integer  NOT NULL,
    shard   smallint NOT NULL CHECK (shard BETWEEN 0 AND 199),
    issued  integer  NOT NULL DEFAULT 0 CHECK (issued BETWEEN 0 AND 5000),
    -- The shard's free numbers are listed in idmint.entity_free (from 75 % full on).
    deck    boolean  NOT NULL DEFAULT false,
    -- The transaction that took the shard (with its row lock) and whose commit-time count
    -- is queued; NULL once counted. Generators insert only into shards they are holder of.
    holder  xid8,
    PRIMARY KEY (prefix, shard)
) WITH (fillfactor = 50);
COMMENT ON TABLE idmint.entity_shards IS
    'Entity type shards: committed count, deck flag, the transaction holding the shard (row lock) until its commit-time count';
-- No index on holder: it changes on every take and count, and an index on it would make
-- each of those a non-HOT update (new entries in every index of the table). Holders are
-- looked up by prefix (200 rows) or by shard.

INSERT INTO idmint.entity_ranges (prefix, name) VALUES
    (1, 'part'), (2, 'material'), (3, 'batch'), (4, 'order'), (5, 'quote');
INSERT INTO idmint.entity_shards (prefix, shard)
SELECT r.prefix, s FROM idmint.entity_ranges r, generate_series(0, 199) s;

-- Every entity number ever issued (the whole 7-digit number; its first digit is the
-- type), with its audit: when, how, by whom and by which transaction. The primary key is
-- the one source of truth for "already issued" (ID004).
-- No CHECK constraints: only idmint's functions write here, and an INSERT statement
-- re-reads each CHECK expression (measured: a tenth of the per-row cost of a DEFAULT).
CREATE TABLE idmint.entity_numbers (
    number      integer     PRIMARY KEY,  -- 1000000..9999999
    -- Set when a row of an app table carries the number (trigger assign_entity_number),
    -- and that table (its partition root): only a DELETE from it unbinds the number.
    bound_at    timestamptz,
    bound_to    oid,
    issued_at   timestamptz NOT NULL,
    how         text        NOT NULL,  -- gen, claim, bind (by the trigger), backfill
    issued_by   text        NOT NULL,
    -- The issuing transaction: its commit-time count reads its rows by this column, and
    -- _unissue_entity_numbers touches only numbers of the calling transaction.
    issued_xid  xid8        NOT NULL
);
CREATE INDEX entity_numbers_issued_xid ON idmint.entity_numbers (issued_xid);
COMMENT ON TABLE idmint.entity_numbers IS
    'Every entity number issued: when, how (gen, claim, bind = by the trigger, backfill), by whom, and when an app row bound it';

-- The free numbers of a shard that is 75 % full or more (its deck). A deal takes a
-- uniformly random subset of the cards, drawn afresh for every call (see sql/50), so the
-- deck needs no stored order and a rolled-back deal leaves nothing behind to replay.
CREATE TABLE idmint.entity_free (
    prefix integer  NOT NULL,
    shard  smallint NOT NULL,
    number integer  NOT NULL,
    PRIMARY KEY (prefix, shard, number)
);
COMMENT ON TABLE idmint.entity_free IS
    'Free numbers of nearly full entity shards (their decks), dealt as uniformly random subsets';

-- Numbers a transaction took from the deck of a shard that another open transaction held
-- ("card sharing", see sql/50): such a transaction is not the shard's holder, so the
-- holder's commit-time count does not see them; they are counted here instead, one row
-- per (shard, stealing transaction), written at steal time (rolled back with it). A
-- shard's committed count is entity_shards.issued plus the n of its committed rows here;
-- whoever takes the shard next moves them into `issued` (same statement). Empty in the
-- normal case: only near exhaustion, when the shards nobody holds cannot supply a call.
CREATE TABLE idmint.entity_steals (
    prefix integer  NOT NULL,
    shard  smallint NOT NULL,
    xid    xid8     NOT NULL DEFAULT pg_current_xact_id(),
    n      integer  NOT NULL,
    PRIMARY KEY (prefix, shard, xid)
);
COMMENT ON TABLE idmint.entity_steals IS
    'Numbers a transaction took from the deck of a shard another open transaction held: counted here until the next taker of the shard folds them into entity_shards.issued';

-- Set to a new mark at every hand-out of a column DEFAULT's spares (see
-- idmint._entity_spares_remove): its session-local currval survives a rolled-back
-- savepoint, which is how a hand-out the savepoint undid is recognised. Only setval is
-- used (nextval would become the session's lastval()); unlogged, so it writes no WAL.
CREATE UNLOGGED SEQUENCE idmint.entity_handouts;

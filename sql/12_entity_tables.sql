-- Entity types, the issued entity numbers, the free pool of nearly full types, and the
-- audit of who issued them. Apps never read these tables: they see the views
-- idmint.entity_types and idmint.entity_capacity (sql/50) and call functions.

-- One row per type. The row is the type's lock: every call that issues numbers of the
-- type reads and advances `issued` in one UPDATE, so issuers of one type queue on it.
CREATE TABLE idmint.entity_ranges (
    prefix     integer     PRIMARY KEY CHECK (prefix BETWEEN 1 AND 9),
    name       text        NOT NULL UNIQUE
        CHECK (name <> '' AND name !~ '^\s|\s$' AND name !~ '^[0-9]$' AND length(name) <= 100),
    capacity   integer     NOT NULL DEFAULT 1000000 CHECK (capacity = 1000000),
    -- Numbers of this type in idmint.entity_numbers (issued by any means, bound or not).
    issued     integer     NOT NULL DEFAULT 0,
    -- NULL while the type samples random candidates. Once it is half full: the
    -- position in its shuffled deck of free numbers (idmint.entity_free) to deal next.
    deck_next  bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (issued BETWEEN 0 AND capacity)
);
COMMENT ON TABLE idmint.entity_ranges IS
    'Entity types (prefix 1..9, name) with their issued counter; the row lock serialises issuers of a type';

INSERT INTO idmint.entity_ranges (prefix, name) VALUES
    (1, 'part'), (2, 'material'), (3, 'batch'), (4, 'order'), (5, 'quote');

-- One row per call that issued numbers: who, when, how, how many.
CREATE TABLE idmint.entity_events (
    event_id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    prefix           integer     NOT NULL,
    how              text        NOT NULL CHECK (how IN ('gen', 'claim', 'bind', 'backfill')),
    count            integer     NOT NULL CHECK (count > 0),
    actor            text        NOT NULL DEFAULT session_user,
    application_name text        DEFAULT current_setting('application_name')
);
COMMENT ON TABLE idmint.entity_events IS
    'Audit: one row per call that issued entity numbers (gen, claim, bind = by the trigger, backfill)';

-- Every entity number ever issued (the whole 7-digit number; its first digit is the
-- type). The primary key is the one source of truth for "already issued" (ID004).
-- No foreign key to entity_events: it would cost a lookup per issued number.
CREATE TABLE idmint.entity_numbers (
    number   integer     PRIMARY KEY CHECK (number BETWEEN 1000000 AND 9999999),
    event_id bigint      NOT NULL,
    -- Set when a row of an app table carries the number (trigger assign_entity_number).
    bound_at timestamptz
);
COMMENT ON TABLE idmint.entity_numbers IS
    'Every entity number issued, the event that issued it and when an app row bound it';

-- The deck of a type that is half full or more: its free numbers, shuffled once with
-- strong random sort keys (pos). Calls deal from deck_next on; the cards from deck_next on
-- are exactly the type's free numbers (claims delete theirs); dealt cards stay below it.
CREATE TABLE idmint.entity_free (
    prefix integer NOT NULL,
    pos    bigint  NOT NULL,
    number integer NOT NULL UNIQUE,
    PRIMARY KEY (prefix, pos) INCLUDE (number)
);
COMMENT ON TABLE idmint.entity_free IS
    'Shuffled deck of the free numbers of half-full entity types (secret order, dealt from deck_next on)';

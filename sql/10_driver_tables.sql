-- Fleets and the driver-number ledger.

-- Only idmint's functions write these two tables (contract §0), and every allocation
-- writes both. PostgreSQL 15 re-reads and re-plans each CHECK constraint of a table on
-- every INSERT or UPDATE (stringToNode + expression_planner per statement): the nine
-- column and row checks these tables had were a third of next_driver_id's CPU (profile in
-- docs/BENCHMARKS.md). So the values are validated where they enter (add_fleet, _issue,
-- reset_driver_sequence, the holder rule), tests/test_driver_ids.py checks the row
-- invariants after every kind of change, and the one CHECK kept is the cap itself: no
-- counter beyond max_drivers (so no number above it), whatever a bug might do.
CREATE TABLE idmint.fleets (
    fleet_id    uuid        PRIMARY KEY,
    code        text        NOT NULL UNIQUE,  -- ^[A-HJ-NP-Z2-9]{3}$, checked by add_fleet
    name        text        NOT NULL,         -- 1..200 characters, checked by add_fleet
    max_drivers integer     NOT NULL,         -- 1..999, checked by add_fleet
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- The counter: the highest number handed out as new (or set by a reset).
    last_number integer     NOT NULL DEFAULT 0,
    -- Kept in step with driver_numbers under this row's lock, so capacity is cheap
    -- and the common allocation (nothing reserved or freed) is a single UPDATE.
    assigned    integer     NOT NULL DEFAULT 0,
    unassigned  integer     NOT NULL DEFAULT 0,
    CHECK (last_number BETWEEN 0 AND max_drivers)
)
-- Room on each page for the row's next versions: the counter UPDATE stays HOT (no new
-- entries in the two indexes, inside the fleet lock) and writes about half the WAL.
WITH (fillfactor = 50);
COMMENT ON TABLE idmint.fleets IS 'Fleets, each with its gapless driver-number counter';

-- One row per number a fleet has handed out. A 'free' row is a number that was
-- reserved and then released or purged: it is handed out again before the counter moves.
CREATE TABLE idmint.driver_numbers (
    -- No foreign key: only idmint's functions write here, always with a fleet id they
    -- hold locked, and fleets are never deleted. The RI check cost ~40 us inside the
    -- fleet lock on every allocation (bench/profile.json).
    fleet_id         uuid        NOT NULL,
    number           integer     NOT NULL,  -- 1..max_drivers: from the counter
    -- reserved (expires_at set), assigned (assigned_at set; bound only then) or free.
    state            text        NOT NULL,
    request_key      text,
    reserved_by      text,
    -- The reservation named its holder (reserved_by given): only that holder may confirm
    -- or release it, and only that holder gets it back from a repeated confirm.
    holder_named     boolean     NOT NULL DEFAULT false,
    reserved_at      timestamptz,
    expires_at       timestamptz,
    assigned_at      timestamptz,
    issued_by        text,        -- session_user of the call that issued it
    application_name text,
    how              text,        -- next, bulk, reserve, confirm
    bound            boolean     NOT NULL DEFAULT false,  -- an app row carries it (trigger)
    -- That row's table (partition root), set when the binding is settled at commit: only a
    -- DELETE from it unbinds the id.
    bound_to         oid,
    PRIMARY KEY (fleet_id, number)
);
COMMENT ON TABLE idmint.driver_numbers IS 'Every driver number issued, reserved or freed, per fleet';

CREATE UNIQUE INDEX driver_numbers_request_key ON idmint.driver_numbers (fleet_id, request_key)
    WHERE request_key IS NOT NULL;
-- Reservations and freed numbers: few, and where reissue looks first.
CREATE INDEX driver_numbers_unassigned ON idmint.driver_numbers (fleet_id, number)
    WHERE state <> 'assigned';

-- Audit of the reservation life cycle and of resets (assignments are audited in
-- driver_numbers itself: issued_by, application_name, assigned_at, how).
CREATE TABLE idmint.driver_id_events (
    event_id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    fleet_id         uuid        NOT NULL,
    number           integer,
    event            text        NOT NULL
        CHECK (event IN ('reserved', 'confirmed', 'released', 'expired', 'reset')),
    reserved_by      text,
    actor            text        NOT NULL DEFAULT session_user,
    application_name text        DEFAULT current_setting('application_name'),
    detail           text
);
COMMENT ON TABLE idmint.driver_id_events IS 'Who reserved, confirmed, released or expired which driver number, and when';
CREATE INDEX driver_id_events_fleet ON idmint.driver_id_events (fleet_id, number);

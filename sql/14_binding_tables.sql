-- Provisional bindings of the triggers (assign_driver_id, assign_entity_number).
--
-- A BEFORE ROW trigger fires before INSERT ... ON CONFLICT decides whether the proposed row
-- is stored, so what the trigger binds may belong to a row that never exists. Each binding
-- made or undone by a trigger is recorded here for its transaction; at commit a deferred
-- constraint trigger (sql/57) looks for the rows and undoes what was never stored. Rows
-- live only inside their transaction: settled and deleted at its commit, gone with its
-- rollback (the rare leftovers of a settler fired early are deleted by the purge).
CREATE TABLE idmint.pending_bindings (
    pending_id bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    kind       text        NOT NULL CHECK (kind IN ('driver', 'entity')),
    fleet_id   uuid        CHECK ((kind = 'driver') = (fleet_id IS NOT NULL)),
    number     integer     NOT NULL,
    tbl        oid         NOT NULL,   -- the app table (partition root) whose rows carry it
    col        text        NOT NULL,
    value      text        NOT NULL,   -- as written into the row
    -- The number's state before this transaction touched it, i.e. what to undo to:
    -- new (issued for the row), claimed (entity number registered for the row),
    -- reserved (a reservation confirmed for the row; prior keeps it), unbound (issued,
    -- carried by no row), bound (carried by a row that is being deleted).
    origin     text        NOT NULL CHECK (origin IN ('new', 'claimed', 'reserved', 'unbound', 'bound')),
    stored     boolean     NOT NULL,   -- a DELETE trigger saw a stored row carry it
    -- Issued by the backfill for a row its UPDATE is about to write: the column's own
    -- trigger may bind it once (the backfill writes each number into one row).
    awaiting_row boolean   NOT NULL DEFAULT false,
    prior      jsonb
);
CREATE UNIQUE INDEX pending_bindings_key ON idmint.pending_bindings (xid, kind, number, fleet_id) NULLS NOT DISTINCT;
COMMENT ON TABLE idmint.pending_bindings IS
    'Bindings made by the triggers in open transactions, checked against the stored rows at commit';

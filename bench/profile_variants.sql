-- Comparison variants for `python -m bench --profile` (loaded into the throwaway bench
-- database only; sql/ is not touched). They show what the driver hot path would cost with
-- the choices it no longer makes.

-- The fleets and ledger tables as they were in 0.1/0.2 before issue 14: nine CHECK
-- constraints (PostgreSQL re-reads and re-plans each of them on every INSERT/UPDATE) and
-- fillfactor 100 on the fleets (so the counter UPDATE is rarely HOT).
CREATE TABLE bench.fleets_checked (
    fleet_id    uuid        PRIMARY KEY,
    code        text        NOT NULL UNIQUE CHECK (code ~ '^[A-HJ-NP-Z2-9]{3}$'),
    name        text        NOT NULL CHECK (name <> ''),
    max_drivers integer     NOT NULL CHECK (max_drivers BETWEEN 1 AND 999),
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_number integer     NOT NULL DEFAULT 0,
    assigned    integer     NOT NULL DEFAULT 0 CHECK (assigned >= 0),
    unassigned  integer     NOT NULL DEFAULT 0 CHECK (unassigned >= 0),
    CHECK (last_number BETWEEN 0 AND max_drivers)
);
CREATE TABLE bench.driver_numbers_checked (
    fleet_id         uuid        NOT NULL,
    number           integer     NOT NULL CHECK (number BETWEEN 1 AND 999),
    state            text        NOT NULL CHECK (state IN ('reserved', 'assigned', 'free')),
    request_key      text,
    reserved_by      text,
    holder_named     boolean     NOT NULL DEFAULT false,
    reserved_at      timestamptz,
    expires_at       timestamptz,
    assigned_at      timestamptz,
    issued_by        text,
    application_name text,
    how              text,
    bound            boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (fleet_id, number),
    CHECK ((state = 'reserved') = (expires_at IS NOT NULL)),
    CHECK ((state = 'assigned') = (assigned_at IS NOT NULL)),
    CHECK (NOT bound OR state = 'assigned')
);
CREATE UNIQUE INDEX ON bench.driver_numbers_checked (fleet_id, request_key) WHERE request_key IS NOT NULL;
CREATE INDEX ON bench.driver_numbers_checked (fleet_id, number) WHERE state <> 'assigned';

-- next_driver_id(uuid)'s fast path, statement for statement, on those tables (and with the
-- _thresholds call it used to make on every id).
CREATE FUNCTION bench.next_checked(fleet uuid) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    issued text; max_drivers integer; assigned integer; code text;
BEGIN
    WITH counter AS (
        UPDATE bench.fleets_checked f
        SET last_number = f.last_number + 1, assigned = f.assigned + 1
        WHERE f.fleet_id = next_checked.fleet AND f.unassigned = 0 AND f.last_number < f.max_drivers
        RETURNING f.fleet_id, f.last_number, f.code, f.max_drivers, f.assigned
    ), ledger AS (
        INSERT INTO bench.driver_numbers_checked (fleet_id, number, state, assigned_at, issued_by,
                                                  application_name, how)
        SELECT c.fleet_id, c.last_number, 'assigned', now(), session_user,
               current_setting('application_name'), 'next'
        FROM counter c
    )
    SELECT 'DRV-' || lpad(c.last_number::text, 3, '0') || c.code, c.max_drivers, c.assigned, c.code
    INTO issued, max_drivers, assigned, code
    FROM counter c;
    IF issued IS NULL THEN
        RAISE EXCEPTION 'bench fleet % is full', fleet;
    END IF;
    IF current_setting('synchronous_commit') IN ('off', 'local', 'remote_write') THEN
        PERFORM set_config('synchronous_commit', 'on', true);
    END IF;
    IF assigned >= max_drivers * (idmint._thresholds('fleet'))[1] THEN
        PERFORM idmint._capacity_alert('fleet', to_jsonb(code), max_drivers, assigned - 1, assigned,
                                       idmint._thresholds('fleet'));
    END IF;
    RETURN issued;
END
$$;

-- The text form as it was: a pinned SQL wrapper resolving the fleet with a pinned helper,
-- then the pinned uuid form (three GUC switches per id instead of one).
CREATE FUNCTION bench.next_text_nested(fleet text) RETURNS text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT idmint.next_driver_id(idmint._fleet_id(fleet)) $$;

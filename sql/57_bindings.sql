-- Settling the triggers' provisional bindings at commit (see sql/14_binding_tables.sql).
--
-- A deferred constraint trigger on idmint.pending_bindings fires when the transaction
-- commits. Its function runs with the committing role's rights (SECURITY INVOKER): it
-- looks in the app's tables for the rows that carry each pending number (the app's own
-- operators, domains and policies run as the app), then hands the answer, as plain
-- numbers, to settle_bindings, which keeps what was stored and undoes the rest:
--   stored                 -> bound
--   deleted in this tx     -> unbound (the number stays issued for ever)
--   never stored           -> back to its origin: an issued number is given back, a
--                             confirmed reservation is a reservation again, a bind undone.
-- When the rows cannot be looked at (no SELECT right, row-level security, table dropped)
-- the bindings are kept as if stored: a number may then stay used, never be reissued.

-- The calling transaction's pending bindings (read-only, for the invoker-rights settler).
CREATE FUNCTION idmint._pending_bindings()
RETURNS TABLE (pending_id bigint, tbl oid, col text, value text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p.pending_id, p.tbl, p.col, p.value FROM idmint.pending_bindings p
    WHERE p.xid = pg_current_xact_id_if_assigned()
$$;
COMMENT ON FUNCTION idmint._pending_bindings() IS
    'The pending trigger bindings of the calling transaction';

-- Which of these values a row of tbl.col carries, looked up with the caller's rights.
CREATE FUNCTION idmint._rows_exist(tbl oid, col text, ids bigint[], vals text[]) RETURNS bigint[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    schema_name name;
    table_name name;
    hidden boolean;
    hits bigint[];
BEGIN
    SELECT n.nspname, c.relname, c.relrowsecurity INTO schema_name, table_name, hidden
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = tbl;
    IF NOT FOUND OR hidden THEN
        RETURN ids;
    END IF;
    -- The value is cast to the column's own type through the row type, so the column's
    -- index (and its own equality) is used.
    EXECUTE format($q$
        SELECT coalesce(array_agg(p.id), '{}')
        FROM unnest($1, $2) AS p(id, v)
        WHERE EXISTS (SELECT FROM %1$I.%2$I t
                      WHERE t.%3$I = (jsonb_populate_record(NULL::%1$I.%2$I, jsonb_build_object($3, p.v))).%3$I)
        $q$, schema_name, table_name, col)
        INTO hits USING ids, vals, col;
    RETURN hits;
EXCEPTION WHEN insufficient_privilege OR undefined_table OR undefined_column OR data_exception THEN
    RETURN ids;
END
$$;
COMMENT ON FUNCTION idmint._rows_exist(oid, text, bigint[], text[]) IS
    'The ids whose value a row of tbl.col carries (all of them when the rows cannot be read)';

CREATE FUNCTION idmint.settle_bindings(checked bigint[], stored bigint[]) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p idmint.pending_bindings;
    settled integer := 0;
BEGIN
    IF pg_trigger_depth() < 1 THEN
        PERFORM idmint._error('invalid_argument',
            'settle_bindings() is called by idmint''s commit-time trigger only');
    END IF;
    -- Fleets in a fixed order (they are already locked by this transaction's bindings).
    FOR p IN
        DELETE FROM idmint.pending_bindings x
        WHERE x.xid = pg_current_xact_id_if_assigned() AND x.pending_id = ANY (checked)
        RETURNING x.*
    LOOP
        settled := settled + 1;
        IF p.pending_id = ANY (stored) THEN
            IF p.kind = 'driver' THEN
                UPDATE idmint.driver_numbers d SET bound = true
                WHERE d.fleet_id = p.fleet_id AND d.number = p.number AND d.state = 'assigned' AND NOT d.bound;
            ELSE
                UPDATE idmint.entity_numbers e SET bound_at = clock_timestamp()
                WHERE e.number = p.number AND e.bound_at IS NULL;
            END IF;
        ELSIF p.stored OR p.origin IN ('unbound', 'bound') THEN
            IF p.kind = 'driver' THEN
                UPDATE idmint.driver_numbers d SET bound = false
                WHERE d.fleet_id = p.fleet_id AND d.number = p.number AND d.bound;
            ELSE
                UPDATE idmint.entity_numbers e SET bound_at = NULL WHERE e.number = p.number;
            END IF;
        ELSIF p.kind = 'entity' THEN
            PERFORM idmint._unissue_entity_numbers(ARRAY[p.number]);
        ELSIF p.origin = 'new' THEN
            -- Given back: reissued lowest first, as if the row had never been proposed.
            UPDATE idmint.driver_numbers d
            SET state = 'free', assigned_at = NULL, request_key = NULL, reserved_by = NULL,
                holder_named = false, bound = false
            WHERE d.fleet_id = p.fleet_id AND d.number = p.number;
            UPDATE idmint.fleets f SET assigned = f.assigned - 1, unassigned = f.unassigned + 1
            WHERE f.fleet_id = p.fleet_id;
        ELSE  -- reserved: the reservation is back as it was
            UPDATE idmint.driver_numbers d
            SET state = 'reserved', assigned_at = NULL, bound = false,
                reserved_at = (p.prior ->> 'reserved_at')::timestamptz,
                expires_at = (p.prior ->> 'expires_at')::timestamptz,
                how = p.prior ->> 'how', issued_by = p.prior ->> 'issued_by',
                application_name = p.prior ->> 'application_name'
            WHERE d.fleet_id = p.fleet_id AND d.number = p.number;
            UPDATE idmint.fleets f SET assigned = f.assigned - 1, unassigned = f.unassigned + 1
            WHERE f.fleet_id = p.fleet_id;
            INSERT INTO idmint.driver_id_events (fleet_id, number, event, detail)
            VALUES (p.fleet_id, p.number, 'reserved', 'confirmation undone: the row was not stored');
        END IF;
    END LOOP;
    RETURN settled;
END
$$;
COMMENT ON FUNCTION idmint.settle_bindings(bigint[], bigint[]) IS
    'Called at commit by idmint''s own deferred trigger: of this transaction''s pending bindings `checked`, keep those whose rows are `stored` and undo the others';

-- The deferred constraint trigger's function. Fired at commit with the committing role's
-- rights; the first firing settles the whole transaction, the others find nothing left.
CREATE FUNCTION idmint._settle_bindings() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    g record;
    checked bigint[] := '{}';
    stored bigint[] := '{}';
BEGIN
    -- Fired inside a statement (SET CONSTRAINTS ... IMMEDIATE) rather than at commit or
    -- at a top-level SET CONSTRAINTS: the row may not be stored yet, so keep the binding.
    -- Settled already by an earlier firing of this transaction: nothing to look up (one
    -- firing per pending row; without this each would rescan the transaction's rows).
    IF pg_trigger_depth() > 1
       OR NEW.pending_id <= coalesce(nullif(current_setting('idmint.settled_upto', true), ''), '0')::bigint THEN
        RETURN NULL;
    END IF;
    FOR g IN
        SELECT p.tbl, p.col, array_agg(p.pending_id) AS ids, array_agg(p.value) AS vals
        FROM idmint._pending_bindings() p
        GROUP BY p.tbl, p.col
    LOOP
        checked := checked || g.ids;
        stored := stored || idmint._rows_exist(g.tbl, g.col, g.ids, g.vals);
    END LOOP;
    IF cardinality(checked) > 0 THEN
        PERFORM idmint.settle_bindings(checked, stored);
        PERFORM set_config('idmint.settled_upto', (SELECT max(x) FROM unnest(checked) AS x)::text, true);
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION idmint._settle_bindings() IS
    'Deferred trigger: at commit, settle this transaction''s pending bindings against the stored rows';

CREATE CONSTRAINT TRIGGER settle_at_commit
AFTER INSERT ON idmint.pending_bindings
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION idmint._settle_bindings();

-- Settling the triggers' provisional bindings at commit (see sql/14_binding_tables.sql).
--
-- A deferred constraint trigger on idmint.pending_bindings fires when the transaction
-- commits (idmint keeps it deferred: see _prepare_binding). Its function runs with the
-- committing role's rights (SECURITY INVOKER) and looks in the app's tables for the rows
-- that carry each pending number, so whatever of the app's that runs (operators, domains,
-- index expressions, policies) runs as the app. It then hands the answer, as plain
-- numbers, to settle_bindings, which keeps what was stored and undoes the rest:
--   stored                 -> bound
--   deleted in this tx     -> unbound (the number stays issued for ever)
--   never stored           -> back to its origin: an issued number is given back, a
--                             confirmed reservation is a reservation again, a bind undone.
-- Whenever the look-up cannot be trusted or fails (row-level security, no SELECT right,
-- a lock it cannot get within a second, anything else) the bindings are kept as if
-- stored: a number may then stay used by a row never stored, but the commit goes through
-- and no number is handed out twice.
--
-- settle_bindings trusts the answer of the transaction it settles: an app that lies
-- about its own rows (it could as well write its table with its triggers disabled) can
-- only undo bindings of its own transaction.

-- This transaction's pending bindings, or none once `first` is settled (read-only).
CREATE FUNCTION idmint._pending_bindings(first bigint)
RETURNS TABLE (pending_id bigint, tbl oid, col text, value text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p.pending_id, p.tbl, p.col, p.value FROM idmint.pending_bindings p
    WHERE EXISTS (SELECT FROM idmint.pending_bindings f WHERE f.pending_id = first)
      AND p.xid = pg_current_xact_id_if_assigned()
$$;
COMMENT ON FUNCTION idmint._pending_bindings(bigint) IS
    'The pending trigger bindings of the calling transaction; none once `first` is settled';

-- Which of these values a row of tbl.col carries, looked up with the caller's rights.
CREATE FUNCTION idmint._rows_exist(tbl oid, col text, ids bigint[], vals text[]) RETURNS bigint[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    schema_name name;
    table_name name;
    hidden boolean;
    type_schema name;
    type_name name;
    json_typed boolean;
    hits bigint[];
BEGIN
    SELECT n.nspname, c.relname, c.relrowsecurity, tn.nspname, ty.typname,
           'json'::regtype IN (ty.oid, ty.typbasetype) OR 'jsonb'::regtype IN (ty.oid, ty.typbasetype)
    INTO schema_name, table_name, hidden, type_schema, type_name, json_typed
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped
    JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid
    JOIN pg_catalog.pg_namespace tn ON tn.oid = ty.typnamespace
    WHERE c.oid = tbl;
    IF NOT FOUND OR hidden THEN
        RETURN ids;  -- gone, or row-level security may hide stored rows from this role
    END IF;
    -- The value is cast to the column's own type (its typmod does not matter for the
    -- comparison), so the column's index and its own equality are used. Not through
    -- the row type: building a whole row checks every domain column, and a NOT NULL domain
    -- on another column made the look-up fail (and keep every binding).
    -- A json or jsonb column holds the number as a JSON string (the value the trigger
    -- wrote through jsonb_populate_record), which a cast of the text would not give.
    EXECUTE format(CASE WHEN json_typed
                        THEN $q$SELECT coalesce(array_agg(p.id), '{}') FROM unnest($1, $2) AS p(id, v)
                                WHERE EXISTS (SELECT FROM %1$I.%2$I t WHERE t.%3$I::jsonb = to_jsonb(p.v))$q$
                        ELSE $q$SELECT coalesce(array_agg(p.id), '{}') FROM unnest($1, $2) AS p(id, v)
                                WHERE EXISTS (SELECT FROM %1$I.%2$I t WHERE t.%3$I = CAST(p.v AS %4$I.%5$I))$q$ END,
                   schema_name, table_name, col, type_schema, type_name)
        INTO hits USING ids, vals;
    RETURN hits;
EXCEPTION WHEN OTHERS THEN
    -- At commit, keeping is always safe and failing the commit is not: whatever went
    -- wrong (privileges, a changed column, a lock timeout, the app's own code raising),
    -- every binding is kept as if its row was stored.
    RETURN ids;
END
$$;
COMMENT ON FUNCTION idmint._rows_exist(oid, text, bigint[], text[]) IS
    'The ids whose value a row of tbl.col carries, with the caller''s rights (all of them when that cannot be known)';

CREATE FUNCTION idmint.settle_bindings(checked bigint[], stored bigint[]) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p idmint.pending_bindings;
    -- `stored` as a set: `pending_id = ANY (stored)` for each row made a commit quadratic
    -- in its bindings (20 000: 0.6 s of the commit); a jsonb key look-up is a binary search.
    kept constant jsonb := (SELECT jsonb_object_agg(u.id, true) FROM unnest(stored) AS u(id)
                            WHERE u.id IS NOT NULL);  -- (a NULL key raises 22023)
    settled integer := 0;
    types integer[] := '{}';  -- entity types whose bindings were settled
    -- Entity numbers to give back, in one call after the loop: one call per number
    -- updated the same shard row again and again, and each update had to pass the row's
    -- earlier versions (40 000 rows an upsert did not store: minutes at commit).
    give_back integer[] := '{}';
BEGIN
    IF pg_trigger_depth() < 1 THEN
        PERFORM idmint._error('invalid_argument',
            'settle_bindings() is called by idmint''s commit-time trigger only');
    END IF;
    FOR p IN
        DELETE FROM idmint.pending_bindings x
        WHERE x.xid = pg_current_xact_id_if_assigned() AND x.pending_id = ANY (checked)
        RETURNING x.*
    LOOP
        settled := settled + 1;
        IF p.kind = 'entity' AND NOT p.number / 1000000 = ANY (types) THEN
            types := types || p.number / 1000000;
        END IF;
        IF coalesce(kept ? p.pending_id::text, false) THEN
            IF p.kind = 'driver' THEN
                UPDATE idmint.driver_numbers d SET bound = true, bound_to = p.tbl
                WHERE d.fleet_id = p.fleet_id AND d.number = p.number AND d.state = 'assigned'
                  AND (NOT d.bound OR d.bound_to IS DISTINCT FROM p.tbl);
            ELSE
                UPDATE idmint.entity_numbers e
                SET bound_at = coalesce(e.bound_at, clock_timestamp()), bound_to = p.tbl
                WHERE e.number = p.number AND (e.bound_at IS NULL OR e.bound_to IS DISTINCT FROM p.tbl);
            END IF;
        ELSIF p.stored OR p.origin IN ('unbound', 'bound') THEN
            IF p.kind = 'driver' THEN
                UPDATE idmint.driver_numbers d SET bound = false, bound_to = NULL
                WHERE d.fleet_id = p.fleet_id AND d.number = p.number AND d.bound;
            ELSE
                UPDATE idmint.entity_numbers e SET bound_at = NULL, bound_to = NULL WHERE e.number = p.number;
            END IF;
        ELSIF p.kind = 'entity' THEN
            give_back := give_back || p.number;
        ELSIF p.origin = 'new' THEN
            -- Given back: reissued lowest first, as if the row had never been proposed.
            UPDATE idmint.driver_numbers d
            SET state = 'free', assigned_at = NULL, request_key = NULL, reserved_by = NULL,
                holder_named = false, bound = false, bound_to = NULL
            WHERE d.fleet_id = p.fleet_id AND d.number = p.number;
            UPDATE idmint.fleets f SET assigned = f.assigned - 1, unassigned = f.unassigned + 1
            WHERE f.fleet_id = p.fleet_id;
        ELSE  -- reserved: the reservation is back as it was
            UPDATE idmint.driver_numbers d
            SET state = 'reserved', assigned_at = NULL, bound = false, bound_to = NULL,
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
    PERFORM idmint._unissue_entity_numbers(give_back);
    -- The capacity thresholds the commit-time count left to the settling (_entity_flush),
    -- per type, now that no binding of it is pending. Also for a type with a number
    -- un-issued: a count it triggers checks again, but the un-issue of a number taken
    -- from another transaction's deck takes no shard, so no count follows it.
    PERFORM idmint._entity_alert(t) FROM unnest(types) AS t
    WHERE NOT EXISTS (SELECT FROM idmint.pending_bindings b
                      WHERE b.xid = pg_current_xact_id_if_assigned() AND b.kind = 'entity'
                        AND b.number BETWEEN t * 1000000 AND t * 1000000 + 999999)
    ORDER BY t;
    RETURN settled;
END
$$;
COMMENT ON FUNCTION idmint.settle_bindings(bigint[], bigint[]) IS
    'Called at commit by idmint''s own deferred trigger: of this transaction''s pending bindings `checked`, keep those whose rows are `stored` and undo the others';

-- The deferred constraint trigger's function. Fired at commit with the committing role's
-- rights; the first firing settles the whole transaction, the others find it done.
CREATE FUNCTION idmint._settle_bindings() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    g record;
    checked bigint[] := '{}';
    stored bigint[] := '{}';
BEGIN
    -- Fired inside a statement (an app's SET CONSTRAINTS ... IMMEDIATE inside a trigger or
    -- function) rather than at commit: the row may not be stored yet, so keep the binding.
    IF pg_trigger_depth() > 1 THEN
        RETURN NULL;
    END IF;
    FOR g IN
        SELECT p.tbl, p.col, array_agg(p.pending_id) AS ids, array_agg(p.value) AS vals
        FROM idmint._pending_bindings(NEW.pending_id) p
        GROUP BY p.tbl, p.col
    LOOP
        checked := checked || g.ids;
        stored := stored || idmint._rows_exist(g.tbl, g.col, g.ids, g.vals);
    END LOOP;
    IF cardinality(checked) > 0 THEN
        PERFORM idmint.settle_bindings(checked, stored);
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

-- Settling the triggers' provisional bindings at commit (see sql/14_binding_tables.sql).
--
-- A deferred constraint trigger on idmint.pending_bindings fires when the transaction
-- commits (idmint keeps it deferred: see _prepare_binding). It looks in the app's tables
-- for the rows that carry each pending number and keeps what was stored:
--   stored                 -> bound
--   deleted in this tx     -> unbound (the number stays issued for ever)
--   never stored           -> back to its origin: an issued number is given back, a
--                             confirmed reservation is a reservation again, a bind undone.
-- The look-up runs as idmint's owner but runs none of the app's code: only tables
-- (no views, no foreign partitions), columns of built-in types (or domains over them)
-- compared with pg_catalog's own operators, and never under row-level security that
-- applies to the owner. When it cannot look (those cases, or the owner lacks SELECT on
-- the column) the bindings are kept as if stored: a number may then stay used by a row
-- never stored, but it is never handed out twice. Nothing here is executable by apps, so
-- no app can settle bindings for idmint.

-- Which of these values a row of tbl.col carries (all ids when idmint cannot look safely).
CREATE FUNCTION idmint._rows_exist(tbl oid, col text, ids bigint[], vals text[]) RETURNS bigint[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    schema_name name;
    table_name name;
    base_type name;
    cmp text;
    hits bigint[];
BEGIN
    SELECT n.nspname, c.relname, bt.typname INTO schema_name, table_name, base_type
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped
    JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
    JOIN pg_catalog.pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
    WHERE c.oid = tbl AND c.relkind IN ('r', 'p')
      AND NOT (c.relrowsecurity AND NOT (SELECT r.rolsuper OR r.rolbypassrls FROM pg_catalog.pg_roles r
                                         WHERE r.rolname = current_user))
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class k ON k.oid = i.inhrelid
                      WHERE k.relkind = 'f' AND i.inhrelid IN (SELECT x.relid FROM pg_catalog.pg_partition_tree(tbl) x))
      AND has_column_privilege(tbl, col, 'SELECT');
    -- The column as its built-in base type, compared by pg_catalog's operator.
    cmp := CASE base_type
        WHEN 'text' THEN 't.%3$I::pg_catalog.text OPERATOR(pg_catalog.=) p.v'
        WHEN 'varchar' THEN 't.%3$I::pg_catalog.text OPERATOR(pg_catalog.=) p.v'
        WHEN 'bpchar' THEN 't.%3$I::pg_catalog.bpchar OPERATOR(pg_catalog.=) p.v::pg_catalog.bpchar'
        WHEN 'int4' THEN 't.%3$I::pg_catalog.int4 OPERATOR(pg_catalog.=) p.v::pg_catalog.int4'
        WHEN 'int8' THEN 't.%3$I::pg_catalog.int8 OPERATOR(pg_catalog.=) p.v::pg_catalog.int8'
        WHEN 'numeric' THEN 't.%3$I::pg_catalog.numeric OPERATOR(pg_catalog.=) p.v::pg_catalog.numeric'
    END;
    IF cmp IS NULL THEN
        RETURN ids;
    END IF;
    EXECUTE format('SELECT coalesce(array_agg(p.id), ''{}'') FROM unnest($1, $2) AS p(id, v)'
                   ' WHERE EXISTS (SELECT FROM %1$I.%2$I t WHERE ' || cmp || ')', schema_name, table_name, col)
        INTO hits USING ids, vals;
    RETURN hits;
END
$$;
COMMENT ON FUNCTION idmint._rows_exist(oid, text, bigint[], text[]) IS
    'The ids whose value a row of tbl.col carries, looked up without running app code (all of them when that is not possible)';

-- Keep the bindings of `checked` whose rows are `stored`, undo the others.
CREATE FUNCTION idmint._settle(checked bigint[], stored bigint[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p idmint.pending_bindings;
BEGIN
    FOR p IN
        DELETE FROM idmint.pending_bindings x
        WHERE x.xid = pg_current_xact_id_if_assigned() AND x.pending_id = ANY (checked)
        RETURNING x.*
    LOOP
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
END
$$;
COMMENT ON FUNCTION idmint._settle(bigint[], bigint[]) IS
    'Of this transaction''s pending bindings `checked`, keep those whose rows are `stored` and undo the others';

-- The deferred constraint trigger's function: the first firing at commit settles the
-- whole transaction, the others find it done.
CREATE FUNCTION idmint._settle_bindings() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER  -- writes idmint's tables; runs no app code (see above)
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    g record;
    checked bigint[] := '{}';
    stored bigint[] := '{}';
BEGIN
    -- Fired inside a statement (an app's own SET CONSTRAINTS inside a function) rather
    -- than at commit or at a top-level SET CONSTRAINTS: the row may not be stored yet, so
    -- keep the binding.
    IF pg_trigger_depth() > 1
       OR NEW.pending_id <= coalesce(nullif(current_setting('idmint.settled_upto', true), ''), '0')::bigint THEN
        RETURN NULL;
    END IF;
    FOR g IN
        SELECT p.tbl, p.col, array_agg(p.pending_id) AS ids, array_agg(p.value) AS vals
        FROM idmint.pending_bindings p
        WHERE p.xid = pg_current_xact_id_if_assigned()
        GROUP BY p.tbl, p.col
    LOOP
        checked := checked || g.ids;
        stored := stored || idmint._rows_exist(g.tbl, g.col, g.ids, g.vals);
    END LOOP;
    IF cardinality(checked) > 0 THEN
        PERFORM idmint._settle(checked, stored);
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

-- Trigger function for an application's own drivers table:
--   CREATE TRIGGER ... BEFORE INSERT OR UPDATE OR DELETE ON app.drivers FOR EACH ROW
--   EXECUTE FUNCTION idmint.assign_driver_id('fleet_column', 'driver_id_column');
--
-- Security: the trigger function runs with the caller's rights (SECURITY INVOKER). It reads
-- and writes the row through jsonb, so the app's casts and domains run as the app's role,
-- and it hands only plain values (text, regclass) to the privileged functions
-- bind_driver_id and unbind_driver_id.
--
-- Binding follows the rows really stored: a BEFORE trigger fires before ON CONFLICT is
-- decided, so every binding made here is provisional until commit, when
-- idmint._settle_bindings (sql/57) looks for the rows and undoes what was never stored.

-- Shared by both trigger functions: check how the trigger was declared and its two
-- column arguments against the row (plain values; raises as the owner, reads nothing).
CREATE FUNCTION idmint._trigger_columns(fn text, level text, timing text, row_json jsonb, args text[], nargs integer)
RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col text;
BEGIN
    IF level IS DISTINCT FROM 'ROW' OR timing IS DISTINCT FROM 'BEFORE' THEN
        PERFORM idmint._error('invalid_argument', format('%s() must be a BEFORE INSERT OR UPDATE OR DELETE row trigger', fn));
    ELSIF nargs <> 2 THEN
        PERFORM idmint._error('invalid_argument', format('%s() takes 2 trigger arguments, got %s', fn, nargs));
    END IF;
    FOREACH col IN ARRAY args LOOP
        IF col IS NULL OR NOT row_json ? col THEN
            PERFORM idmint._error('invalid_argument', format('%s(): the table has no column %L', fn, col));
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION idmint._trigger_columns(text, text, text, jsonb, text[], integer) IS
    'Validate a row trigger''s declaration and its two column-name arguments against the row';

-- An UPDATE may not change a row's driver id, nor move it to another fleet.
CREATE FUNCTION idmint._driver_id_unchanged(old_id text, new_id text, old_fleet text, new_fleet text)
RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF new_id IS DISTINCT FROM old_id
       OR (old_fleet IS DISTINCT FROM new_fleet
           AND idmint._fleet_id(old_fleet) IS DISTINCT FROM idmint._fleet_id(new_fleet)) THEN
        PERFORM idmint._error('immutable_id', format('driver id %s cannot be changed', old_id),
                              'a driver id stays with its row and fleet for ever');
    END IF;
END
$$;
COMMENT ON FUNCTION idmint._driver_id_unchanged(text, text, text, text) IS
    'ID007 unless an updated row keeps its driver id and fleet';

-- Whether this session may write rows of tbl (`what`: DELETE or UPDATE) as the role it
-- acts as (SET ROLE, else its login role): the unbinding helpers run as idmint's owner
-- and are public, so a role that could not delete a row must not free its number. (An
-- app's own SECURITY DEFINER function deleting for a role that may not: the number stays
-- bound.)
CREATE FUNCTION idmint._may_change(tbl regclass, what text) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT has_table_privilege(CASE current_setting('role') WHEN 'none' THEN session_user
                                    ELSE current_setting('role') END, tbl, what)
$$;
COMMENT ON FUNCTION idmint._may_change(regclass, text) IS
    'Whether the session''s role may DELETE or UPDATE rows of tbl (for the unbinding helpers)';

-- Whether a column is char(n) (or a domain over it), whose values come blank-padded.
CREATE FUNCTION idmint._char_column(rel oid, col text) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
                   LEFT JOIN pg_catalog.pg_type b ON b.oid = t.typbasetype
                   WHERE a.attrelid = rel AND a.attname = col AND 'bpchar' IN (t.typname, b.typname))
$$;
COMMENT ON FUNCTION idmint._char_column(oid, text) IS
    'Whether a table column is char(n) or a domain over it (its values come blank-padded)';

-- The table a binding is checked against at commit: the root of a partition tree, so a
-- row that moves between partitions is still found.
CREATE FUNCTION idmint._binding_table(rel oid) RETURNS regclass
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(pg_partition_root(rel), rel::regclass) $$;
COMMENT ON FUNCTION idmint._binding_table(oid) IS
    'The table whose rows a trigger binding is checked against: the partition root, else the table itself';

-- Before recording pending bindings: keep their settling at commit. A session may have
-- said SET CONSTRAINTS ALL IMMEDIATE; the settler would then fire at the end of the
-- INSERT below, inside idmint's SECURITY DEFINER function (as the owner, before the app's
-- row is stored). Also checks that tbl is a table (ID003). Run by every bind and unbind.
CREATE FUNCTION idmint._prepare_binding(tbl regclass, col text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF tbl IS NULL OR col IS NULL OR col = ''
       OR NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = tbl AND c.relkind IN ('r', 'p')) THEN
        PERFORM idmint._error('invalid_argument',
            format('%s.%s is not a table column idmint can bind to', coalesce(tbl::text, 'NULL'), coalesce(col, 'NULL')));
    END IF;
    SET CONSTRAINTS idmint.settle_at_commit DEFERRED;
END
$$;
COMMENT ON FUNCTION idmint._prepare_binding(regclass, text) IS
    'Check a binding''s table and keep the settling of pending bindings deferred to commit';

-- Record a provisional binding of the calling transaction (settled at its commit).
CREATE FUNCTION idmint._pend_binding(kind text, fleet_id uuid, number integer, tbl regclass, col text,
                                     value text, origin text, prior jsonb DEFAULT NULL)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    -- A key touched again in the same transaction keeps its first origin (what to undo
    -- to) and follows the row to its latest table.
    INSERT INTO idmint.pending_bindings AS p (kind, fleet_id, number, tbl, col, value, origin, stored, prior)
    VALUES (kind, fleet_id, number, tbl, col, value, origin, origin = 'bound', prior)
    ON CONFLICT (xid, kind, number, fleet_id) DO UPDATE
    SET tbl = excluded.tbl, col = excluded.col, value = excluded.value,
        stored = p.stored OR excluded.stored
$$;
COMMENT ON FUNCTION idmint._pend_binding(text, uuid, integer, regclass, text, text, text, jsonb) IS
    'Record that this transaction bound (or, origin bound, unbound) a number to a row of tbl.col';

CREATE FUNCTION idmint.bind_driver_id(tbl regclass, col text, fleet text, driver_id text) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    fleet_id uuid;
    target record;
    d idmint.driver_numbers;
    issued record;
    normalized text;
BEGIN
    PERFORM idmint._prepare_binding(tbl, col);
    IF fleet IS NULL THEN
        PERFORM idmint._error('invalid_argument', format('assign_driver_id(): column %I is NULL', col),
                              'every driver row needs its fleet');
    END IF;
    fleet_id := idmint._fleet_id(fleet);

    IF driver_id IS NULL THEN
        SELECT * INTO issued FROM idmint._issue(fleet_id, 1, NULL, 'next', bind => true);
        PERFORM idmint._pend_binding('driver', fleet_id, issued.number, tbl, col, issued.driver_id, 'new');
        RETURN issued.driver_id;
    END IF;

    target := idmint._lock_fleet_of(driver_id);
    normalized := idmint._format_driver_id(target.number, target.code);
    IF target.fleet_id IS DISTINCT FROM fleet_id THEN
        PERFORM idmint._error('reservation_not_active',
            format('driver id %s does not belong to fleet %s', normalized, fleet),
            'use an id reserved or issued for this row''s fleet, or leave it NULL');
    END IF;
    SELECT * INTO d FROM idmint.driver_numbers x WHERE x.fleet_id = target.fleet_id AND x.number = target.number;
    IF d.state = 'reserved' AND d.expires_at > clock_timestamp() THEN
        -- Confirm it now (so no one else can take it); undone at commit if the row was not stored.
        UPDATE idmint.driver_numbers x
        SET state = 'assigned', assigned_at = clock_timestamp(), expires_at = NULL, how = 'confirm',
            issued_by = session_user, application_name = current_setting('application_name'), bound = true
        WHERE x.fleet_id = d.fleet_id AND x.number = d.number;
        UPDATE idmint.fleets f SET assigned = f.assigned + 1, unassigned = f.unassigned - 1
        WHERE f.fleet_id = d.fleet_id;
        INSERT INTO idmint.driver_id_events (fleet_id, number, event, reserved_by)
        VALUES (d.fleet_id, d.number, 'confirmed', d.reserved_by);
        PERFORM idmint._pend_binding('driver', d.fleet_id, d.number, tbl, col, normalized, 'reserved',
                                     jsonb_build_object('reserved_at', d.reserved_at, 'expires_at', d.expires_at,
                                                        'how', d.how, 'issued_by', d.issued_by,
                                                        'application_name', d.application_name));
    ELSIF d.state = 'assigned' AND d.bound THEN
        PERFORM idmint._error('already_taken', format('driver id %s is already used by another row', normalized),
                              'leave the id NULL to get the next one');
    ELSIF d.state = 'assigned' THEN
        UPDATE idmint.driver_numbers x SET bound = true WHERE x.fleet_id = d.fleet_id AND x.number = d.number;
        PERFORM idmint._pend_binding('driver', d.fleet_id, d.number, tbl, col, normalized, 'unbound');
    ELSE
        PERFORM idmint._error('reservation_not_active',
            format('driver id %s was not issued or reserved for this fleet, or its reservation is gone', normalized),
            'leave the id NULL to get the next one');
    END IF;
    PERFORM idmint._durable();
    RETURN normalized;
END
$$;
COMMENT ON FUNCTION idmint.bind_driver_id(regclass, text, text, text) IS
    'For idmint.assign_driver_id(): give a row of tbl its driver id (NULL: the fleet''s next; reserved: confirmed; issued and unbound: bound) until commit shows whether the row was stored. ID002/ID003/ID004/ID006';

CREATE FUNCTION idmint.unbind_driver_id(tbl regclass, col text, driver_id text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target record;
BEGIN
    PERFORM idmint._prepare_binding(tbl, col);
    driver_id := rtrim(driver_id, ' ');  -- (a char(n) column pads it)
    IF NOT idmint.is_valid_driver_id(driver_id) OR NOT idmint._may_change(tbl, 'DELETE') THEN
        RETURN;  -- a row whose value idmint never issued carries nothing to unbind
    END IF;
    target := idmint._lock_fleet_of(driver_id);
    -- Only a binding to this table (settled, or made in this transaction): a row of another
    -- table may carry the id (an app that names another table must not free it).
    UPDATE idmint.driver_numbers x SET bound = false, bound_to = NULL
    WHERE x.fleet_id = target.fleet_id AND x.number = target.number AND x.bound
      AND (x.bound_to = unbind_driver_id.tbl
           OR NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = x.bound_to)
           OR (x.bound_to IS NULL
               AND EXISTS (SELECT FROM idmint.pending_bindings b
                           WHERE b.xid = pg_current_xact_id_if_assigned() AND b.kind = 'driver'
                             AND b.fleet_id = x.fleet_id AND b.number = x.number
                             AND b.tbl = unbind_driver_id.tbl)));
    IF FOUND THEN
        PERFORM idmint._pend_binding('driver', target.fleet_id, target.number, tbl, col,
                                     idmint._format_driver_id(target.number, target.code), 'bound');
    END IF;
END
$$;
COMMENT ON FUNCTION idmint.unbind_driver_id(regclass, text, text) IS
    'For idmint.assign_driver_id(): a row of tbl carrying this id is being deleted; the id stays assigned and a later row may carry it';

CREATE FUNCTION idmint.assign_driver_id() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    fleet_col constant text := TG_ARGV[0];
    id_col constant text := TG_ARGV[1];
    tbl constant regclass := idmint._binding_table(TG_RELID);
    new_row jsonb;
    old_row jsonb;
    old_id text;
    new_id text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        old_row := to_jsonb(OLD);
        PERFORM idmint._trigger_columns('assign_driver_id', TG_LEVEL, TG_WHEN, old_row, TG_ARGV, TG_NARGS);
        IF old_row ->> id_col IS NOT NULL THEN
            PERFORM idmint.unbind_driver_id(tbl, id_col, old_row ->> id_col);
        END IF;
        RETURN OLD;
    END IF;

    new_row := to_jsonb(NEW);
    PERFORM idmint._trigger_columns('assign_driver_id', TG_LEVEL, TG_WHEN, new_row, TG_ARGV, TG_NARGS);
    new_id := new_row ->> id_col;
    IF right(new_id, 1) = ' ' AND idmint._char_column(TG_RELID, id_col) THEN
        new_id := rtrim(new_id, ' ');  -- a char(n) column pads it (unbind_driver_id trims too)
        new_row := jsonb_set(new_row, ARRAY[id_col], to_jsonb(new_id));
    END IF;

    IF TG_OP = 'UPDATE' THEN
        old_row := to_jsonb(OLD);
        old_id := old_row ->> id_col;
        IF right(old_id, 1) = ' ' AND idmint._char_column(TG_RELID, id_col) THEN
            old_id := rtrim(old_id, ' ');
        END IF;
        IF old_id IS NOT NULL THEN
            PERFORM idmint._driver_id_unchanged(old_id, new_id, old_row ->> fleet_col, new_row ->> fleet_col);
            RETURN NEW;
        ELSIF new_id IS NULL THEN
            RETURN NEW;  -- an unrelated update of a row that never had an id
        END IF;
    END IF;

    new_id := idmint.bind_driver_id(tbl, id_col, new_row ->> fleet_col, new_id);
    IF new_id IS DISTINCT FROM new_row ->> id_col THEN
        NEW := jsonb_populate_record(NEW, jsonb_build_object(id_col, new_id));
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION idmint.assign_driver_id() IS
    'BEFORE INSERT OR UPDATE OR DELETE row trigger (fleet column, id column), with the caller''s rights: assigns, confirms or binds the row''s driver id; DELETE unbinds it. ID004 used, ID006 foreign/inactive, ID007 changed';

-- Trigger function for an application's own drivers table:
--   CREATE TRIGGER ... BEFORE INSERT OR UPDATE ON app.drivers FOR EACH ROW
--   EXECUTE FUNCTION idmint.assign_driver_id('fleet_column', 'driver_id_column');
-- The row is read and written through jsonb, so no dynamic SQL touches the app table.

-- Shared by both trigger functions: check the trigger's arguments and columns.
CREATE FUNCTION idmint._trigger_columns(fn text, row_json jsonb, args text[], nargs integer) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col text;
BEGIN
    IF nargs <> 2 THEN
        PERFORM idmint._error('invalid_argument', format('%s() takes 2 trigger arguments, got %s', fn, nargs));
    END IF;
    FOREACH col IN ARRAY args LOOP
        IF col IS NULL OR NOT row_json ? col THEN
            PERFORM idmint._error('invalid_argument', format('%s(): the table has no column %L', fn, col));
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION idmint._trigger_columns(text, jsonb, text[], integer) IS
    'Validate a row trigger''s two column-name arguments against the row';

CREATE FUNCTION idmint.assign_driver_id() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    fleet_col constant text := TG_ARGV[0];
    id_col constant text := TG_ARGV[1];
    new_row jsonb;
    old_id text;
    new_id text;
    fleet uuid;
    target record;
    d idmint.driver_numbers;
BEGIN
    IF TG_LEVEL <> 'ROW' OR TG_WHEN <> 'BEFORE' OR TG_OP NOT IN ('INSERT', 'UPDATE') THEN
        PERFORM idmint._error('invalid_argument', 'assign_driver_id() must be a BEFORE INSERT OR UPDATE row trigger');
    END IF;
    new_row := to_jsonb(NEW);
    PERFORM idmint._trigger_columns('assign_driver_id', new_row, TG_ARGV, TG_NARGS);
    new_id := new_row ->> id_col;

    IF TG_OP = 'UPDATE' THEN
        old_id := to_jsonb(OLD) ->> id_col;
        IF old_id IS NOT NULL THEN
            IF new_id IS DISTINCT FROM old_id
               OR idmint._fleet_id(to_jsonb(OLD) ->> fleet_col) IS DISTINCT FROM
                  idmint._fleet_id(new_row ->> fleet_col) THEN
                PERFORM idmint._error('immutable_id', format('driver id %s cannot be changed', old_id),
                                      'a driver id stays with its row and fleet for ever');
            END IF;
            RETURN NEW;
        ELSIF new_id IS NULL THEN
            RETURN NEW;  -- an unrelated update of a row that never had an id
        END IF;
    END IF;

    IF new_row ->> fleet_col IS NULL THEN
        PERFORM idmint._error('invalid_argument', format('assign_driver_id(): column %I is NULL', fleet_col),
                              'every driver row needs its fleet');
    END IF;
    fleet := idmint._fleet_id(new_row ->> fleet_col);

    IF new_id IS NULL THEN
        new_id := idmint.next_driver_id(fleet);
        target := idmint._lock_fleet_of(new_id);
        UPDATE idmint.driver_numbers x SET bound = true WHERE x.fleet_id = fleet AND x.number = target.number;
    ELSE
        target := idmint._lock_fleet_of(new_id);
        new_id := idmint._format_driver_id(target.number, target.code);
        IF target.fleet_id IS DISTINCT FROM fleet THEN
            PERFORM idmint._error('reservation_not_active',
                format('driver id %s does not belong to fleet %s', new_id, new_row ->> fleet_col),
                'use an id reserved or issued for this row''s fleet, or leave it NULL');
        END IF;
        SELECT * INTO d FROM idmint.driver_numbers x WHERE x.fleet_id = fleet AND x.number = target.number;
        IF d.state = 'reserved' AND d.expires_at > now() THEN
            PERFORM idmint.confirm_driver_id(new_id);
        ELSIF d.state = 'assigned' AND d.bound THEN
            PERFORM idmint._error('already_taken', format('driver id %s is already used by another row', new_id));
        ELSIF d.state IS DISTINCT FROM 'assigned' THEN
            PERFORM idmint._error('reservation_not_active',
                format('driver id %s was not issued or reserved for this fleet, or its reservation is gone', new_id),
                'leave the id NULL to get the next one');
        END IF;
        UPDATE idmint.driver_numbers x SET bound = true WHERE x.fleet_id = fleet AND x.number = target.number;
    END IF;
    RETURN jsonb_populate_record(NEW, jsonb_build_object(id_col, new_id));
END
$$;
COMMENT ON FUNCTION idmint.assign_driver_id() IS
    'BEFORE INSERT OR UPDATE trigger (fleet column, id column): assigns, confirms or binds the row''s driver id. ID004 used, ID006 foreign/inactive, ID007 changed';

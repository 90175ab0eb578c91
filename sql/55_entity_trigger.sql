-- Entity numbers in an application's own tables: the trigger function and the backfill.
--   CREATE TRIGGER ... BEFORE INSERT OR UPDATE ON app.parts FOR EACH ROW
--   EXECUTE FUNCTION idmint.assign_entity_number('part_number', 'part');
-- The trigger reads and writes the row through jsonb (no dynamic SQL on the app table).
-- A number is "bound" once an app row carries it (entity_numbers.bound_at).

-- Bind a given number to the row being written: an issued, unbound number is bound; a
-- number idmint never issued is claimed and bound; a bound one is ID004.
CREATE FUNCTION idmint._bind_entity_number(number text, wanted integer) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF number ~ '^[1-9][0-9]{6}$' AND substr(number, 1, 1)::integer = wanted THEN
        UPDATE idmint.entity_numbers e SET bound_at = now()
        WHERE e.number = _bind_entity_number.number::integer AND e.bound_at IS NULL;
        IF FOUND THEN
            RETURN number;
        ELSIF EXISTS (SELECT FROM idmint.entity_numbers e WHERE e.number = _bind_entity_number.number::integer) THEN
            PERFORM idmint._error('already_taken', format('entity number %s is already used by another row', number),
                                  'leave the column NULL (or DEFAULT) to get a new number');
        END IF;
    END IF;
    -- Never issued (or malformed / of another type: the claim raises ID003/ID008).
    RETURN idmint._claim_entity_number(number, wanted, 'bind', true);
END
$$;
COMMENT ON FUNCTION idmint._bind_entity_number(text, integer) IS
    'Bind an issued unbound number, or claim and bind a never-issued one; ID004 if already bound';

CREATE FUNCTION idmint.assign_entity_number() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col text;
    wanted integer;
    new_row jsonb;
    new_number text;
BEGIN
    IF TG_LEVEL <> 'ROW' OR TG_WHEN <> 'BEFORE' OR TG_OP NOT IN ('INSERT', 'UPDATE') THEN
        PERFORM idmint._error('invalid_argument',
            'assign_entity_number() must be a BEFORE INSERT OR UPDATE row trigger');
    END IF;
    new_row := to_jsonb(NEW);
    PERFORM idmint._trigger_columns('assign_entity_number', new_row, TG_ARGV[0:0], TG_NARGS);
    col := TG_ARGV[0];
    wanted := idmint._entity_prefix(TG_ARGV[1]);
    new_number := new_row ->> col;

    IF TG_OP = 'UPDATE' AND new_number IS NOT DISTINCT FROM to_jsonb(OLD) ->> col THEN
        RETURN NEW;  -- the number did not change (or the row has none and gets none)
    END IF;
    IF new_number IS NULL THEN
        SELECT x INTO new_number FROM idmint._issue_entity_numbers(wanted, 1, 'bind', true) AS x;
    ELSE
        new_number := idmint._bind_entity_number(new_number, wanted);
    END IF;
    RETURN jsonb_populate_record(NEW, jsonb_build_object(col, new_number));
END
$$;
COMMENT ON FUNCTION idmint.assign_entity_number() IS
    'BEFORE INSERT OR UPDATE row trigger (column, entity): NULL gets a new number; a never-issued value is claimed; an issued unbound one is bound. ID004 bound already, ID003 malformed/other type';

-- What the backfill may touch: the table's schema and name (to be quoted with %I) and
-- whether the column is numeric. ID003 when the table or column is not usable.
CREATE FUNCTION idmint._backfill_target(tbl regclass, col text, prefix integer,
                                        OUT schema_name text, OUT table_name text, OUT numeric_column boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kind "char";
    type_name name;
    typmod integer;
BEGIN
    PERFORM idmint._entity_prefix(prefix);
    IF tbl IS NULL OR col IS NULL THEN
        PERFORM idmint._error('invalid_argument', 'backfill_entity_numbers(): tbl and col must not be NULL');
    END IF;
    SELECT n.nspname, c.relname, c.relkind INTO schema_name, table_name, kind
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = tbl;
    IF NOT FOUND OR kind NOT IN ('r', 'p') THEN
        PERFORM idmint._error('invalid_argument', format('backfill_entity_numbers(): %s is not a table', tbl));
    END IF;
    SELECT t.typname, a.atttypmod INTO type_name, typmod
    FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
    WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '';
    IF NOT FOUND THEN
        PERFORM idmint._error('invalid_argument',
            format('backfill_entity_numbers(): table %s has no column %s', tbl, quote_literal(left(col, 100))),
            'pass the column name exactly as it is spelled (case-sensitive, unquoted)');
    ELSIF type_name IN ('text', 'varchar', 'bpchar') AND (typmod < 0 OR typmod - 4 >= 7) THEN
        numeric_column := false;
    ELSIF type_name IN ('int4', 'int8', 'numeric') THEN
        numeric_column := true;
    ELSE
        PERFORM idmint._error('invalid_argument',
            format('backfill_entity_numbers(): column %I of %s (%s) cannot hold a 7-digit number',
                   col, tbl, format_type((SELECT a.atttypid FROM pg_catalog.pg_attribute a
                                          WHERE a.attrelid = tbl AND a.attname = col), typmod)),
            'use a text, varchar(7+), char(7), integer, bigint or numeric column');
    END IF;
END
$$;
COMMENT ON FUNCTION idmint._backfill_target(regclass, text, integer) IS
    'Validate backfill arguments; the quoted-later schema and table name and whether the column is numeric';

-- n numbers for the backfill (no 100000 cap: one call fills the whole table).
CREATE FUNCTION idmint._backfill_numbers(prefix integer, n bigint) RETURNS SETOF text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF n > 1000000 THEN
        PERFORM idmint._error('entity_range_exhausted',
            format('%s numbers requested, more than a type holds', n), 'a type holds 1 000 000 numbers');
    END IF;
    RETURN QUERY SELECT x FROM idmint._issue_entity_numbers(idmint._entity_prefix(prefix), n::integer, 'backfill') AS x;
END
$$;
COMMENT ON FUNCTION idmint._backfill_numbers(integer, bigint) IS
    'Issue n numbers for backfill_entity_numbers (0 gives none); ID005 if fewer are free';

-- SECURITY INVOKER: the UPDATE runs with the caller's rights on the app table, so a
-- role cannot fill a table it may not update. Numbers come from the definer helpers.
CREATE FUNCTION idmint.backfill_entity_numbers(tbl regclass, col text, entity integer) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target record;
    filled bigint;
BEGIN
    target := idmint._backfill_target(tbl, col, entity);
    IF target.numeric_column THEN
        EXECUTE format($q$
            WITH targets AS (
                SELECT t.tableoid AS rel, t.ctid AS tid, row_number() OVER () AS rn
                FROM %1$I.%2$I t WHERE t.%3$I IS NULL
            ), numbers AS (
                SELECT x.number, row_number() OVER () AS rn
                FROM idmint._backfill_numbers($1, (SELECT count(*) FROM targets)) AS x(number)
            )
            UPDATE %1$I.%2$I t SET %3$I = numbers.number::bigint
            FROM targets JOIN numbers USING (rn)
            WHERE t.tableoid = targets.rel AND t.ctid = targets.tid AND t.%3$I IS NULL
            $q$, target.schema_name, target.table_name, col) USING entity;
    ELSE
        EXECUTE format($q$
            WITH targets AS (
                SELECT t.tableoid AS rel, t.ctid AS tid, row_number() OVER () AS rn
                FROM %1$I.%2$I t WHERE t.%3$I IS NULL
            ), numbers AS (
                SELECT x.number, row_number() OVER () AS rn
                FROM idmint._backfill_numbers($1, (SELECT count(*) FROM targets)) AS x(number)
            )
            UPDATE %1$I.%2$I t SET %3$I = numbers.number
            FROM targets JOIN numbers USING (rn)
            WHERE t.tableoid = targets.rel AND t.ctid = targets.tid AND t.%3$I IS NULL
            $q$, target.schema_name, target.table_name, col) USING entity;
    END IF;
    GET DIAGNOSTICS filled = ROW_COUNT;
    RETURN filled;
END
$$;
COMMENT ON FUNCTION idmint.backfill_entity_numbers(regclass, text, integer) IS
    'Fill every NULL in tbl.col with new numbers of the type in one UPDATE (with the caller''s rights); returns how many. ID003 bad table/column, ID005 too few free';

CREATE FUNCTION idmint.backfill_entity_numbers(tbl regclass, col text, entity text) RETURNS bigint
LANGUAGE sql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT idmint.backfill_entity_numbers(tbl, col, idmint._entity_prefix(entity)) $$;
COMMENT ON FUNCTION idmint.backfill_entity_numbers(regclass, text, text) IS
    'backfill_entity_numbers for a type given by name or one-digit text';

-- The invoker-rights backfill calls these helpers as the application's role.
GRANT EXECUTE ON FUNCTION idmint._entity_prefix(text), idmint._entity_prefix(integer),
    idmint._backfill_target(regclass, text, integer), idmint._backfill_numbers(integer, bigint)
    TO idmint_user;

-- Entity numbers in an application's own tables: the trigger function and the backfill.
--   CREATE TRIGGER ... BEFORE INSERT OR UPDATE OR DELETE ON app.parts FOR EACH ROW
--   EXECUTE FUNCTION idmint.assign_entity_number('part_number', 'part');
-- As for driver ids (sql/45): the trigger function and the backfill run with the caller's
-- rights and hand plain values to bind_entity_numbers / unbind_entity_number; a number is
-- "bound" once an app row carries it (entity_numbers.bound_at), settled at commit (sql/57).

-- For bind_entity_numbers: the values given (not NULL), bound to rows of tbl.
CREATE FUNCTION idmint._bind_entity_values(tbl regclass, col text, p integer, numbers text[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- Its look-ups are all by key, but their plans are made while entity_numbers looks small
-- (a new type) and pending_bindings always does (every commit empties it). A plan that read
-- a whole table made a row cost more the more rows its transaction had bound: 2 ms a row
-- from 25 000 rows on. (Not on bind_entity_numbers: the NULL path got 60-90 % slower.)
SET enable_seqscan = off
AS $$
DECLARE
    wanted integer[];
    bound integer[];
    bad text;
    spared integer[];
BEGIN
    -- Given values: of this type (else the claim below raises ID003/ID008), issued and
    -- unbound -> bound; never issued -> claimed and bound; bound already -> ID004.
    SELECT array_agg(DISTINCT x::integer) INTO wanted FROM unnest(numbers) AS x
    WHERE CASE WHEN x ~ '^[1-9][0-9]{6}$' THEN substr(x, 1, 1)::integer = p END;
    IF wanted IS NOT NULL THEN
        SELECT x INTO bad FROM unnest(numbers) AS x WHERE x IS NOT NULL GROUP BY x HAVING count(*) > 1 LIMIT 1;
        IF bad IS NOT NULL THEN
            PERFORM idmint._error('already_taken', format('entity number %s is used by two rows', bad),
                                  'leave the column NULL (or DEFAULT) to get a new number');
        END IF;
        -- Spares of this transaction given as values (see idmint._entity_spares_remove): no
        -- call handed them out, so the binding claims them (un-issued if the row is not stored).
        spared := idmint._entity_spares_remove(p, wanted);
        -- The backfill's own numbers, written into their one row (bound already).
        WITH handed AS (
            -- (One look-up on the whole key per number: as `number = ANY (wanted)` or a
            -- join, the plan read all of this transaction's pending rows per trigger row.)
            UPDATE idmint.pending_bindings x SET awaiting_row = false
            WHERE x.pending_id = ANY (ARRAY(
                      SELECT (SELECT y.pending_id FROM idmint.pending_bindings y
                              WHERE y.xid = pg_current_xact_id() AND y.kind = 'entity' AND y.number = w.number
                                AND y.fleet_id IS NULL)
                      FROM unnest(wanted) AS w(number)))
              AND x.awaiting_row AND x.tbl = _bind_entity_values.tbl AND x.col = _bind_entity_values.col
            RETURNING x.number
        ), newly AS (
            UPDATE idmint.entity_numbers e
            SET bound_at = clock_timestamp(), bound_to = _bind_entity_values.tbl,
                how = CASE WHEN e.number = ANY (spared) THEN 'bind' ELSE e.how END,
                issued_at = CASE WHEN e.number = ANY (spared) THEN statement_timestamp() ELSE e.issued_at END
            WHERE e.number = ANY (wanted) AND e.bound_at IS NULL
            RETURNING e.number
        ), b AS (
            SELECT n.number FROM newly n UNION ALL SELECT h.number FROM handed h
        ), pend AS (
            INSERT INTO idmint.pending_bindings (kind, number, tbl, col, value, origin, stored)
            SELECT 'entity', n.number, tbl, col, n.number::text,
                   CASE WHEN n.number = ANY (spared) THEN 'claimed' ELSE 'unbound' END, false
            FROM newly n
            ON CONFLICT (xid, kind, number, fleet_id) DO UPDATE
            SET tbl = excluded.tbl, col = excluded.col, value = excluded.value
        )
        SELECT array_agg(b.number) INTO bound FROM b;
        -- (No LIMIT 1: with it the plan read the whole table while the table looked small.)
        SELECT (array_agg(e.number))[1]::text INTO bad FROM idmint.entity_numbers e
        WHERE e.number = ANY (wanted) AND e.number <> ALL (coalesce(bound, '{}'));
        IF bad IS NOT NULL THEN
            PERFORM idmint._error('already_taken', format('entity number %s is already used by another row', bad),
                                  'leave the column NULL (or DEFAULT) to get a new number');
        END IF;
    END IF;
    FOR bad IN
        SELECT x FROM unnest(numbers) AS x
        WHERE x IS NOT NULL
          AND NOT coalesce(CASE WHEN x ~ '^[1-9][0-9]{6}$' THEN x::integer = ANY (bound) END, false)
    LOOP
        -- Never issued (or malformed / of another type: the claim raises ID003/ID008).
        PERFORM idmint._claim_entity_number(bad, p, 'bind', true, tbl);
        INSERT INTO idmint.pending_bindings (kind, number, tbl, col, value, origin, stored)
        VALUES ('entity', bad::integer, tbl, col, bad, 'claimed', false);
    END LOOP;
END
$$;
COMMENT ON FUNCTION idmint._bind_entity_values(regclass, text, integer, text[]) IS
    'For bind_entity_numbers: bind the given values to rows of tbl (issued and unbound: bound; never issued: claimed). ID003/ID004/ID008';

CREATE FUNCTION idmint.bind_entity_numbers(tbl regclass, col text, entity text, numbers text[],
                                           how text DEFAULT 'bind')
RETURNS text[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p integer;
    given text[];  -- the values that are not NULL
    new_count integer;
    fresh text[];
    i integer;
    result text[] := numbers;
BEGIN
    PERFORM idmint._prepare_binding(tbl, col);
    IF numbers IS NULL THEN
        PERFORM idmint._error('invalid_argument', 'bind_entity_numbers(): numbers must not be NULL');
    ELSIF how IS NULL OR how NOT IN ('bind', 'backfill') THEN
        PERFORM idmint._error('invalid_argument', format('bind_entity_numbers(): how %L is not bind or backfill', how));
    ELSIF array_ndims(numbers) > 1 THEN
        PERFORM idmint._error('invalid_argument', 'bind_entity_numbers(): numbers must be a one-dimensional array');
    ELSIF array_lower(numbers, 1) <> 1 THEN
        -- The result keeps the caller's order; its positions are counted from 1 below.
        numbers := ARRAY(SELECT u.x FROM unnest(numbers) WITH ORDINALITY AS u(x, o) ORDER BY u.o);
        result := numbers;
    END IF;
    IF numbers = ARRAY[NULL::text] THEN
        -- A row trigger's usual case: one new number; _issue_entity_number resolves the
        -- type itself (ID003 / ID008 as below), one nested call fewer per row.
        result[1] := idmint._issue_entity_number(entity, how, tbl);
        INSERT INTO idmint.pending_bindings (kind, number, tbl, col, value, origin, stored, awaiting_row)
        VALUES ('entity', result[1]::integer, tbl, col, result[1], 'new', false, how = 'backfill');
        RETURN result;
    END IF;
    p := idmint._entity_prefix(entity);
    given := array_remove(numbers, NULL);
    new_count := cardinality(numbers) - cardinality(given);

    -- NULLs get new numbers (at most 100 000 a call, like gen_entity_numbers), issued bound.
    IF new_count > 0 THEN
        IF new_count = 1 THEN
            fresh := ARRAY[idmint._issue_entity_number(p::text, how, tbl)];  -- a row trigger's case
        ELSE
            fresh := ARRAY(SELECT x FROM idmint._issue_entity_numbers(p, new_count, how, true, tbl => tbl) AS x);
        END IF;
        i := 0;
        FOR k IN 1 .. cardinality(numbers) LOOP
            IF numbers[k] IS NULL THEN
                i := i + 1;
                result[k] := fresh[i];
            END IF;
        END LOOP;
        INSERT INTO idmint.pending_bindings (kind, number, tbl, col, value, origin, stored, awaiting_row)
        SELECT 'entity', x::integer, tbl, col, x, 'new', false, how = 'backfill' FROM unnest(fresh) AS x;
    END IF;

    IF cardinality(given) > 0 THEN
        PERFORM idmint._bind_entity_values(tbl, col, p, given);
    END IF;
    RETURN result;
END
$$;
COMMENT ON FUNCTION idmint.bind_entity_numbers(regclass, text, text, text[], text) IS
    'For idmint.assign_entity_number() and the backfill: bind numbers to rows of tbl (NULL: a new one; never issued: claimed) until commit shows whether the rows were stored. ID003/ID004/ID005/ID008';

CREATE FUNCTION idmint.unbind_entity_number(tbl regclass, col text, number text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM idmint._prepare_binding(tbl, col);
    IF number IS NULL OR number !~ '^[1-9][0-9]{6}$' THEN
        RETURN;  -- a value idmint never issued carries nothing to unbind
    END IF;
    -- Only a binding to this table, and only for a session that may delete its rows: a
    -- row of another table may carry the number (an app that names another table, or
    -- whose cast misstates OLD, must not free it). A table gone since (dropped, or
    -- rebuilt under its name) unbinds from the table named.
    IF NOT idmint._may_change(tbl, 'DELETE') THEN
        RETURN;
    END IF;
    UPDATE idmint.entity_numbers e SET bound_at = NULL, bound_to = NULL
    WHERE e.number = unbind_entity_number.number::integer AND e.bound_at IS NOT NULL
      AND (e.bound_to = unbind_entity_number.tbl
           OR NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = e.bound_to));
    IF FOUND THEN
        PERFORM idmint._pend_binding('entity', NULL, number::integer, tbl, col, number, 'bound');
    END IF;
END
$$;
COMMENT ON FUNCTION idmint.unbind_entity_number(regclass, text, text) IS
    'For idmint.assign_entity_number(): a row of tbl carrying this number is being deleted; it stays issued and a later row may carry it';

-- For assign_entity_number(): an UPDATE replaces the number that a stored row of tbl
-- carried. That row was stored with it, so a binding this transaction made for it stands
-- (not undone at commit): the old number stays issued, and bound, for ever.
CREATE FUNCTION idmint.keep_entity_number(tbl regclass, col text, number text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM idmint._prepare_binding(tbl, col);
    IF number IS NULL OR number !~ '^[1-9][0-9]{6}$' OR NOT idmint._may_change(tbl, 'UPDATE') THEN
        RETURN;  -- a value idmint never issued carries no binding (or not this session's row)
    END IF;
    DELETE FROM idmint.pending_bindings b
    WHERE b.xid = pg_current_xact_id_if_assigned() AND b.kind = 'entity' AND b.number = keep_entity_number.number::integer;
END
$$;
COMMENT ON FUNCTION idmint.keep_entity_number(regclass, text, text) IS
    'For idmint.assign_entity_number(): an UPDATE replaced the number a stored row of tbl carried; it stays issued and bound';

CREATE FUNCTION idmint.assign_entity_number() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col constant text := TG_ARGV[0];
    -- As idmint._binding_table, written out: each call of a pinned function costs a GUC
    -- nest level per row (about a fifth of a trigger row with the check below).
    tbl constant regclass := coalesce(pg_partition_root(TG_RELID), TG_RELID::regclass);
    new_row jsonb;
    old_value jsonb;
    new_value jsonb;
    padded boolean;
    old_number text;
    new_number text;
    given text;
BEGIN
    -- A number as the column holds it: numeric(p, s) has a fraction of zeros, char(n)
    -- pads it with blanks (only char(n): in any other column a blank is part of the value,
    -- which is then malformed); bind, unbind and keep expect its 7 digits.
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_value := to_jsonb(OLD) -> col;
        old_number := CASE WHEN jsonb_typeof(old_value) = 'number' AND old_value::numeric = trunc(old_value::numeric)
                           THEN trunc(old_value::numeric)::text ELSE old_value #>> '{}' END;
        IF right(old_number, 1) = ' ' THEN
            padded := idmint._char_column(TG_RELID, col);
            IF padded THEN
                old_number := rtrim(old_number, ' ');
            END IF;
        END IF;
    END IF;
    IF TG_OP = 'DELETE' THEN
        PERFORM idmint._trigger_columns('assign_entity_number', TG_LEVEL, TG_WHEN, to_jsonb(OLD), TG_ARGV[0:0], TG_NARGS);
        PERFORM idmint.unbind_entity_number(tbl, col, old_number);
        RETURN OLD;
    END IF;

    new_row := to_jsonb(NEW);
    -- The checks of _trigger_columns, which is called only to raise.
    IF TG_LEVEL IS DISTINCT FROM 'ROW' OR TG_WHEN IS DISTINCT FROM 'BEFORE' OR TG_NARGS <> 2
       OR col IS NULL OR NOT new_row ? col THEN
        PERFORM idmint._trigger_columns('assign_entity_number', TG_LEVEL, TG_WHEN, new_row, TG_ARGV[0:0], TG_NARGS);
    END IF;
    new_value := new_row -> col;
    new_number := CASE WHEN jsonb_typeof(new_value) = 'number' AND new_value::numeric = trunc(new_value::numeric)
                       THEN trunc(new_value::numeric)::text ELSE new_value #>> '{}' END;
    IF right(new_number, 1) = ' ' THEN
        padded := coalesce(padded, idmint._char_column(TG_RELID, col));
        IF padded THEN
            new_number := rtrim(new_number, ' ');
        END IF;
    END IF;
    IF TG_OP = 'UPDATE' AND new_number IS NOT DISTINCT FROM old_number THEN
        RETURN NEW;  -- the number did not change (or the row has none and gets none)
    END IF;
    -- On UPDATE the old number stays issued, and bound, for ever (OLD is a stored row,
    -- also when this transaction inserted it).
    IF TG_OP = 'UPDATE' AND old_number IS NOT NULL THEN
        PERFORM idmint.keep_entity_number(tbl, col, old_number);
    END IF;
    given := new_number;
    new_number := (idmint.bind_entity_numbers(tbl, col, TG_ARGV[1], ARRAY[given]))[1];
    IF new_number IS DISTINCT FROM given THEN
        NEW := jsonb_populate_record(NEW, jsonb_build_object(col, new_number));
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION idmint.assign_entity_number() IS
    'BEFORE INSERT OR UPDATE OR DELETE row trigger (column, entity), with the caller''s rights: NULL gets a new number; a never-issued value is claimed; an issued unbound one is bound; DELETE unbinds. ID004 bound already, ID003 malformed/other type';

-- What the backfill may touch: the table's schema and name (to be quoted with %I).
-- ID003 when the table or column is not usable; reads the catalog only.
CREATE FUNCTION idmint._backfill_target(tbl regclass, col text, OUT schema_name text, OUT table_name text)
LANGUAGE plpgsql STABLE SECURITY DEFINER  -- reads the catalog only; raises as the owner
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kind "char";
    base_type name;
    typmod integer;
BEGIN
    IF tbl IS NULL OR col IS NULL THEN
        PERFORM idmint._error('invalid_argument', 'backfill_entity_numbers(): tbl and col must not be NULL');
    END IF;
    SELECT n.nspname, c.relname, c.relkind INTO schema_name, table_name, kind
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = tbl;
    IF NOT FOUND OR kind NOT IN ('r', 'p') THEN
        PERFORM idmint._error('invalid_argument', format('backfill_entity_numbers(): %s is not a table', tbl));
    END IF;
    -- A domain counts as its base type (its own checks run as the caller in the UPDATE).
    SELECT bt.typname, CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END
    INTO base_type, typmod
    FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
    JOIN pg_catalog.pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
    WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '';
    IF NOT FOUND THEN
        PERFORM idmint._error('invalid_argument',
            format('backfill_entity_numbers(): table %s has no column %s', tbl, quote_literal(left(col, 100))),
            'pass the column name exactly as it is spelled (case-sensitive, unquoted)');
    END IF;
    -- text, varchar(n >= 7), char(7), integer, bigint, numeric(p >= 7, 0) (typmods as stored:
    -- character types n + 4, numeric ((p << 16) | s) + 4; -1 when unconstrained).
    IF NOT (base_type IN ('text', 'int4', 'int8')
            OR (base_type = 'varchar' AND (typmod < 0 OR typmod - 4 >= 7))
            OR (base_type = 'bpchar' AND typmod - 4 = 7)
            OR (base_type = 'numeric' AND (typmod < 0 OR ((typmod - 4) >> 16 >= 7 AND (typmod - 4) & 65535 = 0)))) THEN
        PERFORM idmint._error('invalid_argument',
            format('backfill_entity_numbers(): column %I of %s (%s) cannot hold a 7-digit number',
                   col, tbl, (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a
                              WHERE a.attrelid = tbl AND a.attname = col)),
            'use a text, varchar(7+), char(7), integer, bigint or numeric(7+, 0) column');
    END IF;
END
$$;
COMMENT ON FUNCTION idmint._backfill_target(regclass, text) IS
    'Validate backfill arguments; the schema and table name to quote';

-- SECURITY INVOKER: the UPDATE runs with the caller's rights on the app table, so a
-- role cannot fill a table it may not update.
CREATE FUNCTION idmint.backfill_entity_numbers(tbl regclass, col text, entity text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target record;
    todo bigint;
    numbers bigint[] := '{}';
    filled bigint;
BEGIN
    PERFORM idmint._entity_prefix(entity);
    target := idmint._backfill_target(tbl, col);
    EXECUTE format('SELECT count(*) FROM %I.%I t WHERE t.%I IS NULL', target.schema_name, target.table_name, col)
        INTO todo;
    -- At most 100 000 numbers a call, issued bound to the rows the UPDATE writes (a trigger
    -- on the column accepts them once; either way they are settled at commit).
    WHILE cardinality(numbers) < todo LOOP
        numbers := numbers || idmint.bind_entity_numbers(
            idmint._binding_table(tbl), col, entity, array_fill(NULL::text, ARRAY[least(todo - cardinality(numbers), 100000)::integer]),
            'backfill')::bigint[];
    END LOOP;
    -- A bigint is assigned to any of the accepted column types (to text by I/O conversion).
    EXECUTE format($q$
        WITH targets AS (
            SELECT t.tableoid AS rel, t.ctid AS tid, row_number() OVER () AS rn
            FROM %1$I.%2$I t WHERE t.%3$I IS NULL
        ), updated AS (
            UPDATE %1$I.%2$I t SET %3$I = n.number
            FROM targets JOIN unnest($1) WITH ORDINALITY AS n(number, rn) USING (rn)
            WHERE t.tableoid = targets.rel AND t.ctid = targets.tid AND t.%3$I IS NULL
            RETURNING 1
        )
        SELECT count(*) FROM updated
        $q$, target.schema_name, target.table_name, col)
        INTO filled USING numbers;
    RETURN filled;
END
$$;
COMMENT ON FUNCTION idmint.backfill_entity_numbers(regclass, text, text) IS
    'Fill every NULL in tbl.col with new numbers of the type, bound to their rows, in one UPDATE (with the caller''s rights); returns how many. ID003 bad table/column/type, ID005 too few free';

CREATE FUNCTION idmint.backfill_entity_numbers(tbl regclass, col text, entity integer) RETURNS bigint
LANGUAGE sql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT idmint.backfill_entity_numbers(tbl, col, idmint._entity_prefix(entity)::text) $$;
COMMENT ON FUNCTION idmint.backfill_entity_numbers(regclass, text, integer) IS
    'backfill_entity_numbers for a type given by its prefix';

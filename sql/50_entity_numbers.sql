-- Entity numbers: 7 digits, the first is the type prefix 1..9, the other six random.
--
-- Concurrency: every call that issues numbers of a type first reads and advances the
-- type's `issued` counter in one UPDATE of its idmint.entity_ranges row. That row lock
-- serialises the issuers of one type until they commit or roll back (other types are not
-- affected), which makes the ID005 check and the capacity thresholds exact and means no
-- call ever waits on, or collides with, another call's individual numbers. Under
-- REPEATABLE READ or SERIALIZABLE a concurrent issuer of the same type makes the UPDATE
-- fail with 40001: retry the transaction.
--
-- Sampling, uniform over the free numbers of the type, O(n) at any fill:
--  * while more than 500 000 numbers stay free (fill < 50 %): rounds of random 6-digit
--    candidates; the distinct ones not issued yet are inserted, the shortfall is drawn
--    again. Large rounds draw exactly the shortfall and probe/insert in sorted order;
--    the last (small) round draws enough for the fill and keeps the first free ones in
--    draw order. A candidate is free with probability 1 - fill > 0.5, so a call costs
--    about n / (1 - fill) < 2n index probes and n inserts.
--  * from the call that leaves 500 000 or fewer free on: the type's free numbers are shuffled
--    once into a deck (idmint.entity_free, positions from strong random sort keys); a
--    call deals the next n cards (one index-only range scan from deck_next; dealt cards
--    are left behind and never read again). A securely shuffled stored
--    order: the next cards are a uniform sample of the free numbers to anyone who cannot
--    read idmint's tables. Claims remove their number from the deck.
-- Randomness: gen_random_uuid() (the server's strong random source; setseed() and
-- random() play no part). Each uuid yields six independent uniform 20-bit values; values
-- outside the wanted range are rejected, so every draw is exactly uniform.

-- About m uniform random integers in [0, 2^20), from the strong random source: each
-- gen_random_uuid() gives 122 random bits, of which six disjoint 20-bit groups are used
-- (the version nibble of byte 6 and the variant bits of byte 8 are skipped).
CREATE FUNCTION idmint._random_draws(m integer) RETURNS SETOF integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- PL/pgSQL rather than SQL: its plan is cached (a SQL function is planned per call).
    RETURN QUERY
    SELECT unnest(ARRAY[
        (get_byte(u.b, 0) << 12) | (get_byte(u.b, 1) << 4) | (get_byte(u.b, 2) >> 4),
        ((get_byte(u.b, 2) & 15) << 16) | (get_byte(u.b, 3) << 8) | get_byte(u.b, 4),
        (get_byte(u.b, 9) << 12) | (get_byte(u.b, 10) << 4) | (get_byte(u.b, 11) >> 4),
        ((get_byte(u.b, 11) & 15) << 16) | (get_byte(u.b, 12) << 8) | get_byte(u.b, 13),
        (get_byte(u.b, 5) << 12) | (get_byte(u.b, 7) << 4) | (get_byte(u.b, 6) & 15),
        ((get_byte(u.b, 8) & 63) << 14) | (get_byte(u.b, 14) << 6) | (get_byte(u.b, 15) >> 2)])
    FROM (SELECT uuid_send(gen_random_uuid()) AS b FROM generate_series(1, (m + 5) / 6)) AS u;
END
$$;
COMMENT ON FUNCTION idmint._random_draws(integer) IS
    'About m (a multiple of 6 >= m) independent uniform integers in [0, 2^20) from gen_random_uuid()';

-- The prefix of a registered type given as a one-digit text or a name; NULL otherwise.
CREATE FUNCTION idmint._find_entity(entity text) RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.prefix FROM idmint.entity_ranges r
    WHERE CASE WHEN entity ~ '^[0-9]$' THEN r.prefix = entity::integer ELSE r.name = entity END
$$;
COMMENT ON FUNCTION idmint._find_entity(text) IS
    'Prefix of the registered type named by a one-digit text or a type name; NULL if none (never raises)';

CREATE FUNCTION idmint._entity_prefix(entity integer) RETURNS integer
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF entity IS NULL THEN
        PERFORM idmint._error('invalid_argument', 'entity must not be NULL',
                              'pass a type prefix 1..9 or a type name such as ''part''');
    ELSIF entity NOT BETWEEN 1 AND 9 THEN
        PERFORM idmint._error('invalid_argument', format('entity prefix %s is out of range', entity),
                              'entity type prefixes are 1..9');
    ELSIF NOT EXISTS (SELECT FROM idmint.entity_ranges r WHERE r.prefix = entity) THEN
        PERFORM idmint._error('unknown_entity_type', format('entity prefix %s is not a registered type', entity),
                              'see idmint.entity_types, or register it with idmint.add_entity_type');
    END IF;
    RETURN entity;
END
$$;
COMMENT ON FUNCTION idmint._entity_prefix(integer) IS
    'The prefix itself if it is a registered type; ID003 NULL or outside 1..9, ID008 unregistered';

CREATE FUNCTION idmint._entity_prefix(entity text) RETURNS integer
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found integer;
BEGIN
    IF entity IS NULL OR entity = '' THEN
        PERFORM idmint._error('invalid_argument', 'entity must not be NULL or empty',
                              'pass a type prefix 1..9 or a type name such as ''part''');
    ELSIF entity ~ '^[0-9]$' THEN
        RETURN idmint._entity_prefix(entity::integer);
    END IF;
    found := idmint._find_entity(entity);
    IF found IS NULL THEN
        PERFORM idmint._error('unknown_entity_type',
            format('unknown entity type %L', left(entity, 100)),
            'type names are case-sensitive; see idmint.entity_types, or register it with idmint.add_entity_type');
    END IF;
    RETURN found;
END
$$;
COMMENT ON FUNCTION idmint._entity_prefix(text) IS
    'Resolve an entity given as a one-digit text or a type name to its prefix; ID003 NULL/empty/0, ID008 unknown';

-- The one allocator. Issues n numbers of type `prefix` (checked here: ID003 outside 1..9,
-- ID008 unregistered; n first, so a huge n fails at once) in the caller's transaction and
-- returns them (in no particular order). `how` goes to the audit; `bind` marks the numbers as
-- carried by an app row already (the trigger's own numbers).
CREATE FUNCTION idmint._issue_entity_numbers(prefix integer, n integer, how text, bind boolean DEFAULT false)
RETURNS SETOF text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET work_mem = '32MB'
SET jit = off
AS $$
DECLARE
    -- At this many free numbers (after the call) or fewer, a type switches to its deck.
    -- Measured: below 50 % fill random candidates cost about 2x a plain insert of known
    -- free numbers (two probes per number at 50 %), dealing from the deck about 1-1.4x;
    -- the deck (at most 500 000 + n rows) costs one shuffle when it is built.
    deck_threshold constant integer := 500000;
    p constant integer := _issue_entity_numbers.prefix;
    base integer;
    bound timestamptz := CASE WHEN bind THEN now() END;
    before integer;
    cap integer;
    next_pos bigint;
    type_name text;
    free_left integer;
    ev bigint;
    need integer := n;
    got integer;
    numbers integer[];
    last_pos bigint;
BEGIN
    -- n is checked first, so that a huge n fails at once.
    IF n IS NULL OR n NOT BETWEEN 1 AND 100000 THEN
        PERFORM idmint._error('invalid_argument', format('n %s is out of range', coalesce(n::text, 'NULL')),
                              'n must be between 1 and 100000');
    ELSIF p IS NULL OR p NOT BETWEEN 1 AND 9 THEN
        PERFORM idmint._entity_prefix(p);  -- ID003
    END IF;
    base := p * 1000000;
    -- The type lock, and the read-and-increment of its counter, in one statement.
    UPDATE idmint.entity_ranges r SET issued = r.issued + n
    WHERE r.prefix = p AND r.issued <= r.capacity - n
    RETURNING r.issued - n, r.capacity, r.deck_next INTO before, cap, next_pos;
    IF NOT FOUND THEN
        SELECT r.capacity - r.issued, r.name INTO free_left, type_name FROM idmint.entity_ranges r WHERE r.prefix = p;
        IF NOT FOUND THEN
            PERFORM idmint._entity_prefix(p);  -- ID008
        END IF;
        PERFORM idmint._error('entity_range_exhausted',
            format('entity type %s (%s) has %s free number(s), %s requested', p, type_name, free_left, n),
            CASE WHEN free_left > 0 THEN format('ask for at most %s', free_left)
                 ELSE 'the type''s 1 000 000 numbers are all issued; register another type with idmint.add_entity_type' END);
    END IF;
    INSERT INTO idmint.entity_events (prefix, how, count) VALUES (p, how, n) RETURNING event_id INTO ev;

    IF next_pos IS NULL AND cap - before - n > deck_threshold THEN
        -- Rounds of random candidates; the distinct ones not issued yet are inserted
        -- (plain INSERT: the type lock keeps other issuers out) and the shortfall is
        -- drawn again. Each round's result is a uniform sample of the free numbers
        -- given its size, so the union is too.
        LOOP
            free_left := cap - before - (n - need);
            IF need >= 1000 THEN
                -- Large round: exactly `need` candidates (so none is surplus), probed and
                -- inserted in sorted order (index locality: about twice as fast).
                RETURN QUERY
                WITH ins AS (
                    INSERT INTO idmint.entity_numbers AS e (number, event_id, bound_at)
                    SELECT c.number, ev, bound
                    FROM (SELECT DISTINCT base + d.v AS number
                          FROM (SELECT x.v FROM idmint._random_draws(need + need / 16 + 12) AS x(v)
                                WHERE x.v < 1000000 LIMIT need) d
                          ORDER BY 1) c
                    -- Nothing to probe while the type has no number issued at all.
                    WHERE before + n - need = 0
                       OR NOT EXISTS (SELECT FROM idmint.entity_numbers y WHERE y.number = c.number)
                    ORDER BY c.number
                    RETURNING e.number::text)
                SELECT ins.number FROM ins;
            ELSE
                -- Small round: candidates sized by the fill, and the first `need` free ones
                -- in draw order are kept (chosen by position only, so still uniform).
                RETURN QUERY
                WITH ins AS (
                    INSERT INTO idmint.entity_numbers AS e (number, event_id, bound_at)
                    SELECT DISTINCT c.number, ev, bound
                    FROM (SELECT base + d.v AS number
                          FROM idmint._random_draws(ceil((need * 1.1 + 12) * cap / free_left)::integer)
                               WITH ORDINALITY AS d(v, i)
                          WHERE d.v < 1000000
                            AND NOT EXISTS (SELECT FROM idmint.entity_numbers y WHERE y.number = base + d.v)
                          ORDER BY d.i
                          LIMIT need) c
                    RETURNING e.number::text)
                SELECT ins.number FROM ins;
            END IF;
            GET DIAGNOSTICS got = ROW_COUNT;
            need := need - got;
            EXIT WHEN need = 0;
        END LOOP;
    ELSE
        IF next_pos IS NULL THEN
            -- Crossing into deck mode: shuffle the free numbers (the complement of the
            -- issued ones) once, with strong random sort keys.
            INSERT INTO idmint.entity_free (prefix, pos, number)
            SELECT p, row_number() OVER (ORDER BY gen_random_uuid()), g
            FROM generate_series(base, base + cap - 1) AS g
            WHERE NOT EXISTS (SELECT FROM idmint.entity_numbers y
                              WHERE y.number = g AND y.number BETWEEN base AND base + cap - 1);
            next_pos := 1;
        END IF;
        -- Deal the next n cards: one index-only range scan. Dealt cards stay in the
        -- table (below deck_next, never read again): no DELETE cost per number.
        SELECT array_agg(z.number ORDER BY z.pos), max(z.pos) INTO numbers, last_pos
        FROM (SELECT z.pos, z.number FROM idmint.entity_free z
              WHERE z.prefix = p AND z.pos >= next_pos ORDER BY z.pos LIMIT n) z;
        IF cardinality(numbers) IS DISTINCT FROM n THEN
            -- Cannot happen while the cards from deck_next on are exactly the free numbers.
            PERFORM idmint._error('entity_range_exhausted',
                format('entity type %s: the free-number deck is inconsistent', p));
        END IF;
        UPDATE idmint.entity_ranges r SET deck_next = last_pos + 1 WHERE r.prefix = p;
        INSERT INTO idmint.entity_numbers (number, event_id, bound_at)
        SELECT x, ev, bound FROM unnest(numbers) AS x ORDER BY x;
        RETURN QUERY SELECT x::text FROM unnest(numbers) AS x;
    END IF;

    PERFORM idmint._durable();
    IF (before + n) * 5 >= cap * 3 THEN  -- the lowest threshold is 0.6
        PERFORM idmint._capacity_alert('entity', to_jsonb(p), cap, before, before + n, '{0.6,0.8,0.95}');
    END IF;
END
$$;
COMMENT ON FUNCTION idmint._issue_entity_numbers(integer, integer, text, boolean) IS
    'Issue n numbers of a type under its lock, uniform over its free numbers; ID005 (nothing issued) if fewer are free';

-- The public generators are one-line wrappers of the allocator. Measured: calling it in
-- FROM costs about a third of calling it in the select list (ProjectSet), per call.
CREATE FUNCTION idmint.gen_entity_numbers(entity integer, n integer) RETURNS SETOF text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT x FROM idmint._issue_entity_numbers(entity, n, 'gen') AS x $$;
COMMENT ON FUNCTION idmint.gen_entity_numbers(integer, integer) IS
    'n (1..100000) new random numbers of the type with this prefix, registered in the caller''s transaction. ID003 bad n/prefix, ID005 fewer free, ID008 unregistered';

CREATE FUNCTION idmint.gen_entity_numbers(entity text, n integer) RETURNS SETOF text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT x FROM idmint._issue_entity_numbers(idmint._entity_prefix(entity), n, 'gen') AS x $$;
COMMENT ON FUNCTION idmint.gen_entity_numbers(text, integer) IS
    'gen_entity_numbers for a type given as a one-digit text or a type name (ID008 unknown)';

CREATE FUNCTION idmint.gen_entity_number(entity integer) RETURNS text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT x FROM idmint._issue_entity_numbers(entity, 1, 'gen') AS x $$;
COMMENT ON FUNCTION idmint.gen_entity_number(integer) IS
    'One new random number of the type with this prefix; usable as a column DEFAULT. ID003/ID005/ID008 as gen_entity_numbers';

CREATE FUNCTION idmint.gen_entity_number(entity text) RETURNS text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT x FROM idmint._issue_entity_numbers(idmint._entity_prefix(entity), 1, 'gen') AS x $$;
COMMENT ON FUNCTION idmint.gen_entity_number(text) IS
    'One new random number of a type given by name or one-digit text, e.g. DEFAULT idmint.gen_entity_number(''part'')';

-- Give back numbers this transaction issued (a trigger''s row that was never stored):
-- afterwards the type is as if they had never been issued.
CREATE FUNCTION idmint._unissue_entity_numbers(numbers integer[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p integer;
    k integer;
BEGIN
    FOR p, k IN
        WITH gone AS (
            DELETE FROM idmint.entity_numbers e WHERE e.number = ANY (numbers) RETURNING e.number
        )
        SELECT g.number / 1000000, count(*) FROM gone g GROUP BY 1 ORDER BY 1
    LOOP
        UPDATE idmint.entity_ranges r SET issued = r.issued - k WHERE r.prefix = p;
        -- A type dealing from its deck gets the numbers back at its end.
        INSERT INTO idmint.entity_free (prefix, pos, number)
        SELECT p, (SELECT coalesce(max(z.pos), 0) FROM idmint.entity_free z WHERE z.prefix = p) + row_number() OVER (ORDER BY gen_random_uuid()), x
        FROM unnest(numbers) AS x
        WHERE x / 1000000 = p AND (SELECT r.deck_next FROM idmint.entity_ranges r WHERE r.prefix = p) IS NOT NULL;
    END LOOP;
END
$$;
COMMENT ON FUNCTION idmint._unissue_entity_numbers(integer[]) IS
    'Un-issue numbers of this transaction whose rows were never stored: free again, counters as before';

-- Register one given number (claim_entity_number, and the trigger for a value idmint
-- never issued). `wanted` NULL: any registered type.
CREATE FUNCTION idmint._claim_entity_number(number text, wanted integer, how text, bind boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p integer;
    v integer;
    before integer;
    cap integer;
    in_deck boolean;
    ev bigint;
BEGIN
    IF number IS NULL OR number !~ '^[1-9][0-9]{6}$' THEN
        PERFORM idmint._error('invalid_argument',
            format('malformed entity number %s', coalesce(quote_literal(left(number, 100)), 'NULL')),
            'an entity number is 7 digits, the first being its type prefix 1..9');
    END IF;
    p := substr(number, 1, 1)::integer;
    v := number::integer;
    IF wanted IS NOT NULL AND p <> wanted THEN
        PERFORM idmint._error('invalid_argument',
            format('entity number %s is not of type %s', number, wanted),
            format('numbers of this type start with %s', wanted));
    ELSIF NOT EXISTS (SELECT FROM idmint.entity_ranges r WHERE r.prefix = p) THEN
        PERFORM idmint._error('unknown_entity_type',
            format('entity number %s has prefix %s, which is not a registered type', number, p),
            'see idmint.entity_types, or register the type with idmint.add_entity_type');
    ELSIF EXISTS (SELECT FROM idmint.entity_numbers e WHERE e.number = v) THEN
        PERFORM idmint._error('already_taken', format('entity number %s is already issued', number),
                              'generate a new one with idmint.gen_entity_number');
    END IF;
    -- The type lock and counter; a free number means the type is not full.
    UPDATE idmint.entity_ranges r SET issued = r.issued + 1
    WHERE r.prefix = p AND r.issued < r.capacity
    RETURNING r.issued - 1, r.capacity, r.deck_next IS NOT NULL INTO before, cap, in_deck;
    IF FOUND THEN
        INSERT INTO idmint.entity_events (prefix, how, count) VALUES (p, how, 1) RETURNING event_id INTO ev;
        INSERT INTO idmint.entity_numbers (number, event_id, bound_at)
        VALUES (v, ev, CASE WHEN bind THEN now() END)
        ON CONFLICT DO NOTHING;
    END IF;
    IF NOT FOUND THEN
        -- Issued meanwhile by a transaction that committed while we waited for the lock.
        PERFORM idmint._error('already_taken', format('entity number %s is already issued', number),
                              'generate a new one with idmint.gen_entity_number');
    END IF;
    IF in_deck THEN
        DELETE FROM idmint.entity_free e WHERE e.number = v;
    END IF;
    PERFORM idmint._durable();
    PERFORM idmint._capacity_alert('entity', to_jsonb(p), cap, before, before + 1, '{0.6,0.8,0.95}');
    RETURN number;
END
$$;
COMMENT ON FUNCTION idmint._claim_entity_number(text, integer, text, boolean) IS
    'Register a given entity number under its type lock. ID003 malformed/other type, ID004 issued, ID008 unregistered';

CREATE FUNCTION idmint.claim_entity_number(number text, entity text DEFAULT NULL) RETURNS text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT idmint._claim_entity_number(number, CASE WHEN entity IS NOT NULL THEN idmint._entity_prefix(entity) END,
                                       'claim')
$$;
COMMENT ON FUNCTION idmint.claim_entity_number(number text, entity text) IS
    'Register a manually entered number (of the given type, if any) and return it. ID003 not 7 digits or other type, ID004 already issued, ID008 unregistered prefix';

CREATE FUNCTION idmint.claim_entity_number(number text, entity integer) RETURNS text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT idmint._claim_entity_number(number, CASE WHEN entity IS NOT NULL THEN idmint._entity_prefix(entity) END,
                                       'claim')
$$;
COMMENT ON FUNCTION idmint.claim_entity_number(number text, entity integer) IS
    'claim_entity_number for a type given by its prefix';

-- Format check; `wanted` NULL with any_type false means "a type was asked for that does not exist".
CREATE FUNCTION idmint._valid_entity_number(number text, wanted integer, any_type boolean) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN number ~ '^[1-9][0-9]{6}$'
                THEN EXISTS (SELECT FROM idmint.entity_ranges r WHERE r.prefix = substr(number, 1, 1)::integer)
                     AND coalesce(any_type OR substr(number, 1, 1)::integer = wanted, false)
                ELSE false END
$$;
COMMENT ON FUNCTION idmint._valid_entity_number(text, integer, boolean) IS
    'True for 7 digits whose prefix is a registered type (and = wanted unless any_type); never raises';

CREATE FUNCTION idmint.is_valid_entity_number(number text, entity text DEFAULT NULL) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT idmint._valid_entity_number(number, idmint._find_entity(entity), entity IS NULL) $$;
COMMENT ON FUNCTION idmint.is_valid_entity_number(number text, entity text) IS
    'True when the text is 7 digits whose prefix is a registered type (and the given type, if any); issued or not does not matter. Never raises';

CREATE FUNCTION idmint.is_valid_entity_number(number text, entity integer) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT idmint._valid_entity_number(number, CASE WHEN entity BETWEEN 1 AND 9 THEN entity END, entity IS NULL)
$$;
COMMENT ON FUNCTION idmint.is_valid_entity_number(number text, entity integer) IS
    'is_valid_entity_number for a type given by its prefix; never raises';

CREATE VIEW idmint.entity_types AS
SELECT r.prefix, r.name FROM idmint.entity_ranges r;
COMMENT ON VIEW idmint.entity_types IS 'Registered entity types: prefix 1..9 (first digit of their numbers) and name';

CREATE VIEW idmint.entity_capacity AS
SELECT r.prefix,
       r.name,
       r.issued,
       r.capacity,
       r.capacity - r.issued AS free,
       round(r.issued::numeric / r.capacity, 6) AS utilization
FROM idmint.entity_ranges r;
COMMENT ON VIEW idmint.entity_capacity IS
    'Per entity type: numbers issued, capacity (1 000 000), free and utilization (0..1); read from counters';

CREATE FUNCTION idmint.add_entity_type(prefix integer, name text) RETURNS idmint.entity_types
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    added idmint.entity_types;
BEGIN
    IF prefix IS NULL OR prefix NOT BETWEEN 1 AND 9 THEN
        PERFORM idmint._error('invalid_argument',
            format('entity prefix %s is out of range', coalesce(prefix::text, 'NULL')),
            'entity type prefixes are 1..9');
    ELSIF name IS NULL OR name = '' OR name ~ '^\s|\s$' OR name ~ '^[0-9]$' OR length(name) > 100 THEN
        PERFORM idmint._error('invalid_argument',
            format('invalid entity type name %s', coalesce(quote_literal(left(name, 100)), 'NULL')),
            'a type name is 1..100 characters without surrounding whitespace, and not a single digit');
    END IF;
    INSERT INTO idmint.entity_ranges AS r (prefix, name) VALUES (add_entity_type.prefix, add_entity_type.name)
    ON CONFLICT DO NOTHING
    RETURNING r.prefix, r.name INTO added;
    IF NOT FOUND THEN
        PERFORM idmint._error('already_taken',
            format('entity type %s %L exists already', prefix, name),
            'see idmint.entity_types',
            (SELECT string_agg(format('registered: %s %L', r.prefix, r.name), '; ')
             FROM idmint.entity_ranges r WHERE r.prefix = add_entity_type.prefix OR r.name = add_entity_type.name));
    END IF;
    RETURN added;
END
$$;
COMMENT ON FUNCTION idmint.add_entity_type(integer, text) IS
    'Register an entity type: prefix 1..9 and a unique name. ID003 bad prefix or name, ID004 prefix or name taken';

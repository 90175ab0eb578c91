-- Fleets and their 3-character codes (alphabet without 0, O, I and 1: 32^3 codes).

CREATE FUNCTION idmint._random_fleet_code() RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    -- 256 is a multiple of 32, so byte % 32 is uniform; gen_random_uuid is a strong source.
    SELECT string_agg(substr('ABCDEFGHJKLMNPQRSTUVWXYZ23456789', get_byte(b, i) % 32 + 1, 1), '' ORDER BY i)
    FROM (SELECT uuid_send(gen_random_uuid()) AS b) r, generate_series(0, 2) AS i
$$;
COMMENT ON FUNCTION idmint._random_fleet_code() IS 'A uniformly random fleet code, used or not';

CREATE FUNCTION idmint.gen_fleet_code() RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    candidate text;
BEGIN
    FOR attempt IN 1..16 LOOP
        candidate := idmint._random_fleet_code();
        IF NOT EXISTS (SELECT FROM idmint.fleets f WHERE f.code = candidate) THEN
            RETURN candidate;
        END IF;
    END LOOP;
    -- Crowded: pick uniformly among the codes still free.
    SELECT a.c || b.c || c.c INTO candidate
    FROM regexp_split_to_table('ABCDEFGHJKLMNPQRSTUVWXYZ23456789', '') a(c),
         regexp_split_to_table('ABCDEFGHJKLMNPQRSTUVWXYZ23456789', '') b(c),
         regexp_split_to_table('ABCDEFGHJKLMNPQRSTUVWXYZ23456789', '') c(c)
    WHERE NOT EXISTS (SELECT FROM idmint.fleets f WHERE f.code = a.c || b.c || c.c)
    ORDER BY gen_random_uuid()
    LIMIT 1;
    IF candidate IS NULL THEN
        PERFORM idmint._error('entity_range_exhausted', 'no fleet code left: all 32768 codes are in use');
    END IF;
    RETURN candidate;
END
$$;
COMMENT ON FUNCTION idmint.gen_fleet_code() IS
    'A random fleet code not yet used (not reserved: add_fleet may still find it taken); ID005 when none is left';

-- What add_fleet returns (contract §6): the fleet as apps see it, not its internal counters.
CREATE TYPE idmint.new_fleet AS (fleet_id uuid, code text, name text, max_drivers integer,
                                 created_at timestamptz);
COMMENT ON TYPE idmint.new_fleet IS 'The row idmint.add_fleet returns';

CREATE FUNCTION idmint.add_fleet(name text, code text DEFAULT NULL, max_drivers integer DEFAULT 999,
                                 fleet_id uuid DEFAULT NULL)
RETURNS idmint.new_fleet
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    created idmint.new_fleet;
    new_code text;
BEGIN
    IF name IS NULL OR name !~ '[^[:space:]]' THEN
        PERFORM idmint._error('invalid_argument', 'fleet name must not be NULL, empty or blank');
    ELSIF length(name) > 200 THEN
        PERFORM idmint._error('invalid_argument',
            format('fleet name is %s characters long; at most 200 are allowed', length(name)));
    ELSIF max_drivers IS NULL OR max_drivers NOT BETWEEN 1 AND 999 THEN
        PERFORM idmint._error('invalid_argument',
            format('max_drivers %s is out of range', coalesce(max_drivers::text, 'NULL')),
            'max_drivers must be between 1 and 999');
    ELSIF code IS NOT NULL AND code !~* '^[A-HJ-NP-Z2-9]{3}$' THEN
        PERFORM idmint._error('invalid_argument', format('malformed fleet code %L', code),
            'a fleet code is 3 characters from ABCDEFGHJKLMNPQRSTUVWXYZ23456789 (no 0, O, I or 1)');
    END IF;

    -- A generated code can be taken by a concurrent add_fleet: draw again.
    FOR attempt IN 1..8 LOOP
        new_code := coalesce(upper(code), idmint.gen_fleet_code());
        INSERT INTO idmint.fleets AS f (fleet_id, code, name, max_drivers)
        VALUES (coalesce(add_fleet.fleet_id, gen_random_uuid()), new_code, add_fleet.name, add_fleet.max_drivers)
        ON CONFLICT DO NOTHING
        RETURNING f.fleet_id, f.code, f.name, f.max_drivers, f.created_at INTO created;
        IF created.fleet_id IS NOT NULL THEN
            RETURN created;
        END IF;
        IF add_fleet.fleet_id IS NOT NULL
           AND EXISTS (SELECT FROM idmint.fleets f WHERE f.fleet_id = add_fleet.fleet_id) THEN
            PERFORM idmint._error('already_taken', format('fleet id %s already exists', add_fleet.fleet_id));
        ELSIF code IS NOT NULL THEN
            PERFORM idmint._error('already_taken', format('fleet code %L is already taken', upper(code)),
                                  'choose another code, or pass NULL to get a free one');
        END IF;
    END LOOP;
    PERFORM idmint._error('entity_range_exhausted', 'could not find a free fleet code',
                          'fleet codes are nearly exhausted');
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION idmint.add_fleet(text, text, integer, uuid) IS
    'Create a fleet; NULL code picks a random free one, NULL fleet_id a new uuid. ID003 bad input, ID004 code or id taken, ID005 no code left';

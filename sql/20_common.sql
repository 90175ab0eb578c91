-- Helpers shared by the public functions. Internal (leading underscore): no EXECUTE for apps.

-- The installed schema version: the id of the latest migration (a test keeps it equal to
-- the newest file in migrations/).
CREATE FUNCTION idmint.version() RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT '0001_idmint'::text $$;
COMMENT ON FUNCTION idmint.version() IS 'The installed idmint schema version: the id of the latest migration applied';

-- An acknowledged id must survive a crash even if the session turned synchronous_commit
-- down; set_config(..., true) lasts to the end of the caller's transaction.
CREATE FUNCTION idmint._durable() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF current_setting('synchronous_commit') IN ('off', 'local', 'remote_write') THEN
        PERFORM set_config('synchronous_commit', 'on', true);
    END IF;
END
$$;
COMMENT ON FUNCTION idmint._durable() IS
    'Make the current transaction commit durably (synchronous_commit at least on)';

-- Resolve a fleet given as code (any case) or uuid text.
CREATE FUNCTION idmint._fleet_id(fleet text) RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER  -- read-only; the invoker-rights trigger resolves fleets with it
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found uuid;
BEGIN
    IF fleet IS NULL THEN
        PERFORM idmint._error('invalid_argument', 'fleet must not be NULL',
                              'pass a fleet code such as ''ABC'' or a fleet uuid');
    ELSIF fleet ~* '^[A-HJ-NP-Z2-9]{3}$' THEN
        SELECT f.fleet_id INTO found FROM idmint.fleets f WHERE f.code = upper(fleet);
    ELSIF fleet ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$' THEN
        SELECT f.fleet_id INTO found FROM idmint.fleets f WHERE f.fleet_id = fleet::uuid;
    ELSE
        PERFORM idmint._error('invalid_argument',
            format('malformed fleet %L: expected a 3-character fleet code or a uuid', fleet),
            'fleet codes use the characters ABCDEFGHJKLMNPQRSTUVWXYZ23456789');
    END IF;
    IF found IS NULL THEN
        PERFORM idmint._error('unknown_fleet', format('unknown fleet %L', fleet),
                              'create it with idmint.add_fleet');
    END IF;
    RETURN found;
END
$$;
COMMENT ON FUNCTION idmint._fleet_id(text) IS 'The fleet_id of a fleet code or uuid text; ID003/ID002 otherwise';

CREATE FUNCTION idmint._fleet_id(fleet uuid) RETURNS uuid
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF fleet IS NULL THEN
        PERFORM idmint._error('invalid_argument', 'fleet must not be NULL',
                              'pass a fleet code such as ''ABC'' or a fleet uuid');
    END IF;
    IF NOT EXISTS (SELECT FROM idmint.fleets f WHERE f.fleet_id = fleet) THEN
        PERFORM idmint._error('unknown_fleet', format('unknown fleet %s', fleet),
                              'create it with idmint.add_fleet');
    END IF;
    RETURN fleet;
END
$$;
COMMENT ON FUNCTION idmint._fleet_id(uuid) IS 'The fleet_id itself if that fleet exists; ID003/ID002 otherwise';

CREATE FUNCTION idmint._format_driver_id(number integer, code text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT 'DRV-' || lpad(number::text, 3, '0') || code $$;
COMMENT ON FUNCTION idmint._format_driver_id(integer, text) IS
    'DRV-XXXYYY from a number and a fleet code (next_driver_id''s fast path inlines the same expression)';

-- The utilization thresholds that send NOTIFY idmint_capacity, defined once (contract §5).
CREATE FUNCTION idmint._thresholds(scope text) RETURNS numeric[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT CASE scope WHEN 'fleet' THEN '{0.8,0.9,1.0}'::numeric[] ELSE '{0.6,0.8,0.95}'::numeric[] END $$;
COMMENT ON FUNCTION idmint._thresholds(text) IS
    'Capacity alert thresholds, ascending: fleets 0.8, 0.9, 1.0; entity types 0.6, 0.8, 0.95';

-- NOTIFY idmint_capacity once for each threshold that [before, after) crosses upward.
CREATE FUNCTION idmint._capacity_alert(scope text, key jsonb, capacity bigint,
                                       used_before bigint, used_after bigint, thresholds numeric[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t numeric;
BEGIN
    FOREACH t IN ARRAY thresholds LOOP
        IF used_before < t * capacity AND used_after >= t * capacity THEN
            PERFORM pg_notify('idmint_capacity', jsonb_build_object(
                'scope', scope, 'key', key,
                'utilization', round(used_after::numeric / capacity, 6)::float8,
                'threshold', t::float8)::text);
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION idmint._capacity_alert(text, jsonb, bigint, bigint, bigint, numeric[]) IS
    'Send one idmint_capacity notification per threshold crossed by moving from used_before to used_after';

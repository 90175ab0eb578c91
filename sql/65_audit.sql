-- Audit: who did what to which driver number, and when. Direct assignments (next_driver_id,
-- next_driver_ids) are recorded in driver_numbers itself; the reservation life cycle
-- (reserved, confirmed, released, expired) and counter resets in driver_id_events.
-- A confirmed reservation appears once, as its 'confirmed' event.
CREATE VIEW idmint.driver_id_audit AS
SELECT d.assigned_at AS at,
       d.fleet_id,
       f.code AS fleet_code,
       idmint._format_driver_id(d.number, f.code) AS driver_id,
       d.number,
       'assigned'::text AS event,
       d.how,
       d.issued_by AS actor,
       d.application_name,
       NULL::text AS reserved_by,
       CASE WHEN d.bound THEN 'bound to an application row' END AS detail
FROM idmint.driver_numbers d
JOIN idmint.fleets f USING (fleet_id)
WHERE d.state = 'assigned' AND d.how IS DISTINCT FROM 'confirm'
UNION ALL
SELECT e.at,
       e.fleet_id,
       f.code,
       CASE WHEN e.number IS NOT NULL THEN idmint._format_driver_id(e.number, f.code) END,
       e.number,
       e.event,
       NULL::text,
       e.actor,
       e.application_name,
       e.reserved_by,
       e.detail
FROM idmint.driver_id_events e
JOIN idmint.fleets f USING (fleet_id);
COMMENT ON VIEW idmint.driver_id_audit IS
    'Every driver number event: assigned (how: next|bulk), reserved, confirmed, released, expired, reset; with who (actor = session user, application_name, reserved_by) and when';

-- The view computes driver_id, so filtering on it reads every row; this looks the id up
-- by fleet code and number instead (indexes on fleets.code and both tables' (fleet_id, number)).
CREATE FUNCTION idmint.driver_id_history(driver_id text) RETURNS SETOF idmint.driver_id_audit
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    id record;
BEGIN
    SELECT p.number, p.fleet_code INTO id FROM idmint.parse_driver_id(driver_id) p;
    RETURN QUERY
    SELECT * FROM idmint.driver_id_audit a
    WHERE a.fleet_code = id.fleet_code AND a.number = id.number
    ORDER BY a.at;
END
$$;
COMMENT ON FUNCTION idmint.driver_id_history(text) IS
    'The audit trail of one driver id (any case), oldest first: rows of idmint.driver_id_audit. ID003 if malformed';

-- The same for one entity number, from its row in entity_numbers (when, how and by whom it
-- was issued; when an app row took it). There is no public view over every issued number:
-- a role that could list them could enumerate a type's numbers (contract §4).
CREATE FUNCTION idmint.entity_number_history(number text)
-- (The output column is entity_number: an OUT column cannot share the parameter's name.)
RETURNS TABLE (at timestamptz, entity_number text, prefix integer, entity text, event text, how text,
               actor text, issued_xid bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF entity_number_history.number IS NULL OR entity_number_history.number !~ '^[1-9][0-9]{6}$' THEN
        PERFORM idmint._error('invalid_argument',
            format('malformed entity number %s',
                   coalesce(quote_literal(left(entity_number_history.number, 100)), 'NULL')),
            'an entity number is 7 digits, the first being its type prefix 1..9');
    END IF;
    RETURN QUERY
    SELECT h.at, e.number::text, e.number / 1000000, r.name, h.event, h.how, h.actor, h.xid
    FROM idmint.entity_numbers e
    LEFT JOIN idmint.entity_ranges r ON r.prefix = e.number / 1000000
    CROSS JOIN LATERAL (VALUES
        (e.issued_at, 'issued'::text, e.how, e.issued_by, e.issued_xid::text::bigint),
        (e.bound_at, 'bound', NULL, NULL, NULL)) AS h(at, event, how, actor, xid)
    WHERE e.number = entity_number_history.number::integer AND h.at IS NOT NULL
    -- Issued comes first even when a trigger stamped the binding with the transaction's start.
    ORDER BY h.event = 'bound';
END
$$;
COMMENT ON FUNCTION idmint.entity_number_history(text) IS
    'The audit trail of one entity number, oldest first: issued (how: gen, claim, bind, backfill; actor = session user; issued_xid = the issuing transaction) and bound (when an app row took it); none if never issued. ID003 if not 7 digits';

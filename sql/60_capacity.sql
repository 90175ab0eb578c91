-- Capacity: how full each fleet is, a report with projected exhaustion dates for
-- `idmint status`. The audit trail lives in sql/65_audit.sql.
--
-- Cheap by construction: fleets carry `assigned` and `unassigned` counters (kept under the
-- fleet row lock), so a fleet with nothing reserved or freed (unassigned = 0) needs no look
-- at driver_numbers at all; the others look only at their few rows in the partial index
-- driver_numbers_unassigned. The entity side (idmint.entity_capacity) lives in sql/50.

-- Allocation rates for capacity_report: numbers issued in a recent window. A BRIN
-- index follows insertion order (assigned_at grows with it) and costs next to nothing on
-- the allocation path, unlike a btree on every new row.
CREATE INDEX driver_numbers_assigned_at ON idmint.driver_numbers USING brin (assigned_at)
    WITH (pages_per_range = 32);

-- The same for entity numbers: entity_numbers.issued_at grows with insertion order.
CREATE INDEX entity_numbers_issued_at ON idmint.entity_numbers USING brin (issued_at)
    WITH (pages_per_range = 32);

CREATE VIEW idmint.fleet_capacity AS
SELECT f.fleet_id,
       f.code,
       f.name,
       f.max_drivers,
       f.assigned,
       r.reserved,
       -- What calls could still get: the numbers above the counter plus the freed and
       -- expired ones below it (a forward reset skips numbers for ever, so it lowers this).
       f.max_drivers - f.last_number + f.unassigned - r.reserved AS free,
       (f.assigned + r.reserved)::float8 / f.max_drivers AS utilization
FROM idmint.fleets f
CROSS JOIN LATERAL (
    -- `f.unassigned > 0` only depends on the fleet row: a one-time filter that skips the
    -- index scan for every fleet with nothing reserved or freed.
    SELECT count(*)::integer AS reserved
    FROM idmint.driver_numbers d
    -- state <> 'assigned' repeats the partial index's predicate so that it is used.
    WHERE f.unassigned > 0
      AND d.fleet_id = f.fleet_id
      AND d.state <> 'assigned' AND d.state = 'reserved'
      AND d.expires_at > clock_timestamp()
) r;
COMMENT ON VIEW idmint.fleet_capacity IS
    'Per fleet: assigned ids, active reservations, free numbers (what calls could still get; expired reservations count as free) and utilization 0..1';

CREATE FUNCTION idmint.capacity_report("window" interval DEFAULT '7 days')
RETURNS TABLE (scope text, key text, name text, capacity bigint, used bigint, reserved bigint, free bigint,
               utilization float8, per_day float8, exhausted_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- The planner cannot see that most fleets skip their look-up of reservations; compiling
-- the query (JIT) would cost more than running it.
SET jit = off
AS $$
DECLARE
    since timestamptz;
    horizon constant float8 := extract(epoch FROM timestamptz '9999-12-31 00:00:00+00' - now()) / 86400;
BEGIN
    IF "window" IS NULL OR "window" <= interval '0' OR "window" > interval '1000 years' THEN
        PERFORM idmint._error('invalid_argument',
            format('window %s is out of range', coalesce("window"::text, 'NULL')),
            'the window must be a positive interval of at most 1000 years, such as ''7 days''');
    END IF;
    since := now() - "window";

    RETURN QUERY
    WITH usage AS (
        -- Fleets: ids assigned within the window (BRIN index on assigned_at), and since when
        -- the fleet exists (the earlier of its creation and its first id in the window).
        SELECT 'fleet'::text AS scope, c.code AS key, c.name, c.max_drivers::bigint AS capacity,
               c.assigned::bigint AS used, c.reserved::bigint AS reserved, c.free::bigint AS free,
               c.utilization, coalesce(a.allocated, 0) AS allocated, least(f.created_at, a.first) AS born
        FROM idmint.fleet_capacity c
        JOIN idmint.fleets f ON f.fleet_id = c.fleet_id
        LEFT JOIN (SELECT d.fleet_id, count(*) AS allocated, min(d.assigned_at) AS first
                   FROM idmint.driver_numbers d
                   WHERE d.assigned_at > since AND d.state = 'assigned'
                   GROUP BY d.fleet_id) a ON a.fleet_id = c.fleet_id
        UNION ALL
        -- Entity types: numbers issued within the window (BRIN index on issued_at).
        SELECT 'entity', e.prefix::text, e.name, e.capacity::bigint, e.issued::bigint, 0,
               e.free::bigint, e.utilization::float8, coalesce(a.allocated, 0),
               least(r.created_at, a.first)
        FROM idmint.entity_capacity e
        JOIN idmint.entity_ranges r ON r.prefix = e.prefix
        LEFT JOIN (SELECT v.number / 1000000 AS prefix, count(*) AS allocated, min(v.issued_at) AS first
                   FROM idmint.entity_numbers v
                   WHERE v.issued_at > since
                   GROUP BY 1) a ON a.prefix = e.prefix
    ), rated AS (
        -- The rate over the part of the window the scope has existed (contract §5): 7 ids
        -- minted by a fleet created a minute ago are 7 a minute, not 1 a day over 7 days.
        -- At least one second, so that a scope created in this very transaction has a rate.
        SELECT u.*,
               u.allocated::float8
               / (greatest(extract(epoch FROM now() - greatest(since, u.born)), 1)::float8 / 86400) AS per_day
        FROM usage u
    )
    SELECT u.scope, u.key, u.name, u.capacity, u.used, u.reserved, u.free, u.utilization, u.per_day,
           -- Runs out at the current rate: now() + free / per_day days. Already full: now().
           -- No allocations, or not before the year 9999: NULL ("never").
           CASE WHEN u.free <= 0 THEN now()
                WHEN u.per_day <= 0 OR u.free / u.per_day >= horizon THEN NULL
                ELSE now() + make_interval(secs => u.free / u.per_day * 86400) END
    FROM rated u
    ORDER BY u.scope = 'entity', u.key COLLATE "C";
END
$$;
COMMENT ON FUNCTION idmint.capacity_report(interval) IS
    'Every fleet (scope fleet, key = code) and entity type (scope entity, key = prefix): capacity, used, active reservations, free, utilization, allocations per day over the part of the window the scope has existed, and the projected exhaustion (NULL: never; now() when full). ID003 bad window';

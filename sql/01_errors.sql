-- Every SQLSTATE idmint raises on purpose, defined once. Functions raise through
-- idmint._error(name, ...), so an unregistered code cannot be raised.
CREATE TABLE idmint.error_codes (
    sqlstate text PRIMARY KEY CHECK (sqlstate ~ '^ID[0-9]{3}$'),
    name     text NOT NULL UNIQUE,
    meaning  text NOT NULL
);
COMMENT ON TABLE idmint.error_codes IS 'The SQLSTATEs of class ID that idmint raises';

INSERT INTO idmint.error_codes (sqlstate, name, meaning) VALUES
    ('ID001', 'fleet_capacity_exhausted', 'a fleet has no free number left, or fewer than asked for'),
    ('ID002', 'unknown_fleet', 'no fleet with that code or id'),
    ('ID003', 'invalid_argument', 'malformed id, number or code; n out of bounds; bad ttl; NULL where a value is needed'),
    ('ID004', 'already_taken', 'fleet code, entity number, entity type or driver id already exists; reset below a used number'),
    ('ID005', 'entity_range_exhausted', 'fewer free numbers left in an entity range than requested; no fleet code left'),
    ('ID006', 'reservation_not_active', 'confirming a reservation that expired, was released or never existed'),
    ('ID007', 'immutable_id', 'changing or releasing an assigned driver id'),
    ('ID008', 'unknown_entity_type', 'entity prefix or name not registered');

CREATE FUNCTION idmint._error(name text, message text, hint text DEFAULT NULL, detail text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    code text;
BEGIN
    SELECT e.sqlstate INTO STRICT code FROM idmint.error_codes e WHERE e.name = _error.name;
    IF hint IS NULL AND detail IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message;
    ELSIF detail IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message, HINT = hint;
    ELSIF hint IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message, DETAIL = detail;
    ELSE
        RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message, HINT = hint, DETAIL = detail;
    END IF;
END
$$;
COMMENT ON FUNCTION idmint._error(text, text, text, text) IS
    'Raise the registered idmint error `name` (see idmint.error_codes) with a message, hint and detail';

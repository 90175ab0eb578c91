-- Least privilege: PUBLIC gets nothing; idmint_user may call every public function
-- (no leading underscore) and read the public views; only the owner writes tables.
REVOKE ALL ON ALL TABLES IN SCHEMA idmint FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA idmint FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA idmint FROM PUBLIC;

DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'idmint'::regnamespace AND p.proname !~ '^_'
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO idmint_user', fn);
    END LOOP;
END
$$;

GRANT SELECT ON idmint.driver_id_ledger TO idmint_user;

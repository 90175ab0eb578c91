-- Schema and the application role. Apps get idmint_user; only the owner writes tables.
CREATE SCHEMA IF NOT EXISTS idmint;
COMMENT ON SCHEMA idmint IS 'idmint: gapless fleet driver ids and random typed entity numbers';
REVOKE ALL ON SCHEMA idmint FROM PUBLIC;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'idmint_user') THEN
        CREATE ROLE idmint_user NOLOGIN;
    END IF;
EXCEPTION
    -- Roles are cluster-wide: another database may be migrating at the same moment.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
COMMENT ON ROLE idmint_user IS 'Grant to application roles: EXECUTE on idmint functions, SELECT on its views';
GRANT USAGE ON SCHEMA idmint TO idmint_user;

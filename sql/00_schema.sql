-- Schema and the two roles. Apps get idmint_user; idmint_admin (a member of it) also
-- changes the rules; only the owner writes tables.
CREATE SCHEMA IF NOT EXISTS idmint;
COMMENT ON SCHEMA idmint IS 'idmint: gapless fleet driver ids and random typed entity numbers';
REVOKE ALL ON SCHEMA idmint FROM PUBLIC;

-- Roles are cluster-wide: created if missing (another database may be migrating at the
-- same moment), never altered or commented (that needs CREATEROLE). A database owner
-- without CREATEROLE can install once a DBA has created them.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'idmint_user') THEN
        BEGIN
            CREATE ROLE idmint_user NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'idmint_admin') THEN
        BEGIN
            CREATE ROLE idmint_admin NOLOGIN IN ROLE idmint_user;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE EXCEPTION USING ERRCODE = 'ID003', MESSAGE = format(
            'idmint needs the roles idmint_user and idmint_admin, and role %I may not create them',
            current_user),
        HINT = 'a DBA creates them once per cluster: '
               'CREATE ROLE idmint_user NOLOGIN; CREATE ROLE idmint_admin NOLOGIN IN ROLE idmint_user;';
END
$$;
GRANT USAGE ON SCHEMA idmint TO idmint_user;

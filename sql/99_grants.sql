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

-- What changes the rules rather than using them is idmint_admin's (contract §0).
REVOKE EXECUTE ON FUNCTION
    idmint.reset_driver_sequence(uuid, integer), idmint.reset_driver_sequence(text, integer),
    idmint.add_entity_type(integer, text),
    idmint.schedule_cleanup(text), idmint.unschedule_cleanup()
    FROM idmint_user;
GRANT EXECUTE ON FUNCTION
    idmint.reset_driver_sequence(uuid, integer), idmint.reset_driver_sequence(text, integer),
    idmint.add_entity_type(integer, text),
    idmint.schedule_cleanup(text), idmint.unschedule_cleanup()
    TO idmint_admin;

GRANT SELECT ON idmint.driver_id_ledger TO idmint_user;
-- Capacity and audit views (sql/60).
GRANT SELECT ON idmint.fleet_capacity, idmint.driver_id_audit TO idmint_user;
-- Covered by the loop above; named because the audit of entity numbers is readable on purpose.
GRANT EXECUTE ON FUNCTION idmint.driver_id_history(text), idmint.entity_number_history(text) TO idmint_user;
GRANT SELECT ON idmint.entity_types, idmint.entity_capacity TO idmint_user;

-- Read-only internal helpers that code running with the caller's rights needs: the
-- public views format ids with _format_driver_id (EXECUTE on functions in a view is checked
-- against the reader); the invoker-rights triggers, backfill and commit-time settler
-- resolve and check their arguments and read their own transaction's pending bindings
-- with the others. None of them writes; every writing helper stays the owner's.
GRANT EXECUTE ON FUNCTION
    idmint._format_driver_id(integer, text),
    idmint._fleet_id(text),
    idmint._entity_prefix(text), idmint._entity_prefix(integer),
    idmint._trigger_columns(text, text, text, jsonb, text[], integer),
    idmint._driver_id_unchanged(text, text, text, text),
    idmint._binding_table(oid),
    idmint._char_column(oid, text),
    idmint._pending_bindings(bigint),
    idmint._rows_exist(oid, text, bigint[], text[]),
    idmint._backfill_target(regclass, text)
    TO idmint_user;

-- Roll back idmint 0.1.0. The role idmint_user is cluster-wide and may serve other
-- databases, so it is left in place.

-- First remove idmint's pg_cron job (a no-op where pg_cron is not installed): it would
-- otherwise fail every minute once the schema is gone.
DO $$
BEGIN
    IF to_regprocedure('idmint.unschedule_cleanup()') IS NOT NULL THEN
        PERFORM idmint.unschedule_cleanup();
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING USING ERRCODE = 'warning',
        MESSAGE = 'idmint: could not remove the pg_cron job idmint-purge-expired-reservations: ' || SQLERRM,
        HINT = 'remove it with SELECT cron.unschedule(''idmint-purge-expired-reservations'') as its owner';
END
$$;

DROP SCHEMA IF EXISTS idmint CASCADE;

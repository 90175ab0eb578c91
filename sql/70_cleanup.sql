-- Scheduled clean-up with pg_cron (optional). pg_cron is never required: expired
-- reservations count as free whether or not they were purged. Without pg_cron,
-- `idmint cleanup --every SECONDS` runs the same purge from outside.
--
-- Nothing here may fail where pg_cron does not exist, so every reference to the cron
-- schema goes through EXECUTE (resolved when it runs, not when it is created).
--
-- Who runs the job: schedule_cleanup is SECURITY DEFINER, so the job is always created by,
-- and runs as, the role that owns idmint (the migrating role), whoever asks for it. That
-- role may call the internal helpers, and unschedule_cleanup always finds the job again.
-- The job's command is fixed; callers choose only its cadence.

CREATE FUNCTION idmint._cleanup_job_name() RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT 'idmint-purge-expired-reservations'::text $$;
COMMENT ON FUNCTION idmint._cleanup_job_name() IS 'The name of idmint''s pg_cron job';

-- The command the job runs: purge, then trim the job's own run history.
CREATE FUNCTION idmint._cleanup_job_command() RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT 'SELECT idmint.purge_expired_reservations() AS purged, idmint._trim_cleanup_history() AS trimmed'::text $$;
COMMENT ON FUNCTION idmint._cleanup_job_command() IS 'The SQL command of idmint''s pg_cron job';

CREATE FUNCTION idmint._pg_cron_installed() RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT EXISTS (SELECT FROM pg_catalog.pg_extension e WHERE e.extname = 'pg_cron') $$;
COMMENT ON FUNCTION idmint._pg_cron_installed() IS 'True when the pg_cron extension is installed in this database';

-- pg_cron's cron.job_run_details keeps one row per run for ever. For idmint's own job
-- (only), drop the rows older than a day and keep at most the newest 1440 (a day of
-- runs every minute). Other jobs' rows are never touched.
CREATE FUNCTION idmint._trim_cleanup_history() RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    trimmed integer := 0;
BEGIN
    IF NOT idmint._pg_cron_installed() THEN
        RETURN 0;
    END IF;
    EXECUTE $sql$
        WITH ours AS (
            SELECT r.runid, coalesce(r.end_time, r.start_time) AS at,
                   row_number() OVER (ORDER BY r.runid DESC) AS newest
            FROM cron.job_run_details r
            WHERE r.jobid IN (SELECT j.jobid FROM cron.job j
                              WHERE j.jobname = $1 AND j.database = current_database())
        )
        DELETE FROM cron.job_run_details r
        USING ours o
        WHERE r.runid = o.runid AND (o.at < now() - interval '1 day' OR o.newest > 1440)
    $sql$ USING idmint._cleanup_job_name();
    GET DIAGNOSTICS trimmed = ROW_COUNT;
    RETURN trimmed;
END
$$;
COMMENT ON FUNCTION idmint._trim_cleanup_history() IS
    'Delete cron.job_run_details rows of idmint''s job older than a day or beyond its newest 1440; returns how many';

CREATE FUNCTION idmint.schedule_cleanup(schedule text DEFAULT '* * * * *') RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cron_db text;
    job bigint;
BEGIN
    -- pg_settings, not current_setting(): the setting is superuser-only; hidden means unknown.
    SELECT s.setting INTO cron_db FROM pg_catalog.pg_settings s WHERE s.name = 'cron.database_name';
    IF schedule IS NULL OR schedule = '' THEN
        PERFORM idmint._error('invalid_argument', 'schedule must not be NULL or empty',
                              'pass a cron schedule such as ''* * * * *'' (every minute, UTC)');
    END IF;
    IF NOT idmint._pg_cron_installed() THEN
        PERFORM idmint._error('invalid_argument',
            format('pg_cron is not installed in database %I: cannot schedule %s',
                   current_database(), idmint._cleanup_job_name()),
            'install pg_cron (shared_preload_libraries = pg_cron, cron.database_name, CREATE EXTENSION pg_cron) '
            || 'or run `idmint cleanup --every 60`');
    END IF;
    IF cron_db IS NOT NULL AND cron_db <> current_database() THEN
        -- The scheduler reads cron.job only in cron.database_name; a job stored here would never run.
        PERFORM idmint._error('invalid_argument',
            format('pg_cron runs jobs from database %I (cron.database_name), not %I', cron_db, current_database()),
            format('in database %I run: SELECT cron.schedule_in_database(%L, %L, %L, %L)', cron_db,
                   idmint._cleanup_job_name(), schedule, 'SELECT idmint.purge_expired_reservations()',
                   current_database()));
    END IF;
    BEGIN
        -- Same name and owner: pg_cron updates the existing job in place (same jobid).
        EXECUTE 'SELECT cron.schedule($1, $2, $3)'
            INTO job USING idmint._cleanup_job_name(), schedule, idmint._cleanup_job_command();
    EXCEPTION WHEN invalid_parameter_value THEN
        PERFORM idmint._error('invalid_argument', format('invalid cron schedule %L', schedule),
            'pg_cron takes five fields (minute hour day month weekday, UTC), e.g. ''* * * * *'' or ''*/5 * * * *''');
    END;
    RETURN job;
END
$$;
COMMENT ON FUNCTION idmint.schedule_cleanup(text) IS
    'Schedule (or reschedule) the pg_cron job idmint-purge-expired-reservations (default every minute, UTC); returns its jobid. ID003 if pg_cron is not installed here or the schedule is invalid';

CREATE FUNCTION idmint.unschedule_cleanup() RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    jobs bigint[];
    job bigint;
BEGIN
    IF NOT idmint._pg_cron_installed() THEN
        RETURN false;
    END IF;
    -- Look the job up first: cron.unschedule(name) raises XX000 for an unknown name.
    EXECUTE 'SELECT array_agg(j.jobid ORDER BY j.jobid) FROM cron.job j WHERE j.jobname = $1 AND j.database = current_database()'
        INTO jobs USING idmint._cleanup_job_name();
    IF jobs IS NULL THEN
        RETURN false;
    END IF;
    FOREACH job IN ARRAY jobs LOOP
        EXECUTE 'SELECT cron.unschedule($1)' USING job;
    END LOOP;
    -- The run history of a job that no longer exists would stay for ever.
    EXECUTE 'DELETE FROM cron.job_run_details r WHERE r.jobid = ANY ($1)' USING jobs;
    RETURN true;
END
$$;
COMMENT ON FUNCTION idmint.unschedule_cleanup() IS
    'Remove the pg_cron job idmint-purge-expired-reservations and its run history; true if there was one, false if not (or pg_cron is not installed)';

-- Migrating schedules the job every minute when pg_cron is installed in this database.
-- A migrating role without rights on the cron schema gets a warning, not a failed migration.
DO $$
BEGIN
    IF idmint._pg_cron_installed() THEN
        PERFORM idmint.schedule_cleanup();
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING USING ERRCODE = 'warning',
        MESSAGE = 'idmint: could not schedule the pg_cron job idmint-purge-expired-reservations: ' || SQLERRM,
        HINT = 'GRANT USAGE ON SCHEMA cron to the role that owns idmint, then run SELECT idmint.schedule_cleanup()';
END
$$;

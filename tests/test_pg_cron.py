"""Scheduled clean-up with pg_cron, on a second real cluster started with
shared_preload_libraries=pg_cron. The job fires on minute boundaries, so the main test
waits up to ~70 s for it (polling the server, no fixed sleeps)."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
import pytest
from pytest_postgresql import factories
from pytest_postgresql.executors import PostgreSQLExecutor

import idmint
from idmint.migrate import migrate, rollback
from tests.conftest import PG_CTL, conninfo
from tests.util import raises_sqlstate, scalar

CRON_DB = "idmint_cron"
JOB = "idmint-purge-expired-reservations"

postgresql_cron_proc = factories.postgresql_proc(
    executable=PG_CTL,
    port=(23000, 23999),
    dbname=CRON_DB,
    postgres_options=(
        f"-c shared_preload_libraries=pg_cron -c cron.database_name={CRON_DB}"
        " -c cron.use_background_workers=on -c max_worker_processes=20 -c fsync=off"
    ),
)


def wait_for(what: str, check: Callable[[], object], timeout: float) -> object:
    """Poll `check()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.25)


def job_rows(db: psycopg.Connection) -> list[tuple[object, ...]]:
    return db.execute(
        "SELECT jobid, schedule, command, database, active FROM cron.job WHERE jobname = %s", [JOB]
    ).fetchall()


def test_pg_cron_job_purges_trims_and_can_be_rescheduled(
    postgresql_cron_proc: PostgreSQLExecutor,
) -> None:
    proc = postgresql_cron_proc
    with psycopg.connect(
        conninfo(proc.host, proc.port, proc.user, "postgres"), autocommit=True
    ) as admin:
        admin.execute(f"CREATE DATABASE {CRON_DB}")
    dsn = conninfo(proc.host, proc.port, proc.user, CRON_DB)
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("CREATE EXTENSION pg_cron")
        # The job fires at the next minute boundary; start early in a minute so that the
        # reservation below exists before that first run (the whole wait stays under ~70 s).
        wait_for(
            "the early part of a minute",
            lambda: scalar(db, "SELECT extract(second FROM now()) < 50"),
            12,
        )

        # Migrating schedules the job, every minute, in this database.
        assert migrate(dsn)
        [(jobid, schedule, command, database, active)] = job_rows(db)
        assert (schedule, database, active) == ("* * * * *", CRON_DB, True)
        assert "idmint.purge_expired_reservations()" in str(command)

        # History to trim: idmint's job has 3 runs from two days ago and 1500 from the last
        # hour; another job has 3 old runs, which must stay.
        other = scalar(db, "SELECT cron.schedule('someone-elses-job', '0 0 1 1 *', 'SELECT 1')")
        db.execute(
            "INSERT INTO cron.job_run_details (jobid, database, username, command, status,"
            " return_message, start_time, end_time)"
            " SELECT j, %s, current_user, 'SELECT 1', 'succeeded', 'SELECT 1',"
            " now() - age, now() - age"
            " FROM (VALUES (%s::bigint, interval '2 days', 3), (%s, interval '1 hour', 1500),"
            "              (%s, interval '2 days', 3)) v(j, age, n), generate_series(1, v.n)",
            [CRON_DB, jobid, jobid, other],
        )

        db.execute("SELECT idmint.add_fleet('Cron', 'CRN', 10)")
        rid = str(
            scalar(db, "SELECT idmint.reserve_driver_id('CRN', 'cron test', '1 millisecond')")
        )
        expires_at = scalar(
            db, "SELECT expires_at FROM idmint.driver_id_ledger WHERE driver_id = %s", [rid]
        )

        # Wait for a run that started after the reservation expired, and has finished.
        run = wait_for(
            "pg_cron to run idmint's job",
            lambda: db.execute(
                "SELECT status, return_message FROM cron.job_run_details"
                " WHERE jobid = %s AND start_time > %s AND status IN ('succeeded', 'failed')",
                [jobid, expires_at],
            ).fetchone(),
            75,
        )
        assert run == ("succeeded", "SELECT 1")

        # It really purged: the expired reservation left the ledger, logged as purged.
        assert (
            scalar(db, "SELECT count(*) FROM idmint.driver_id_ledger WHERE driver_id = %s", [rid])
            == 0
        )
        assert db.execute(
            "SELECT event, reserved_by, detail LIKE 'purged; %%' FROM idmint.driver_id_audit"
            " WHERE driver_id = %s ORDER BY at",
            [rid],
        ).fetchall() == [("reserved", "cron test", False), ("expired", "cron test", True)]

        # ... and trimmed its own history: nothing older than a day, at most the newest 1440.
        assert db.execute(
            "SELECT count(*), count(*) FILTER (WHERE start_time < now() - interval '1 day')"
            " FROM cron.job_run_details WHERE jobid = %s",
            [jobid],
        ).fetchone() == (1440, 0)
        assert (
            scalar(db, "SELECT count(*) FROM cron.job_run_details WHERE jobid = %s", [other]) == 3
        )

        # A DBA turns it off: the job and its run history go; a second call finds nothing.
        assert scalar(db, "SELECT idmint.unschedule_cleanup()") is True
        assert job_rows(db) == []
        assert (
            scalar(db, "SELECT count(*) FROM cron.job_run_details WHERE jobid = %s", [jobid]) == 0
        )
        assert scalar(db, "SELECT idmint.unschedule_cleanup()") is False

        # ... and on again with another schedule; rescheduling updates the same job.
        new_id = scalar(db, "SELECT idmint.schedule_cleanup('*/5 * * * *')")
        [(job2, schedule, command2, _, _)] = job_rows(db)
        assert (job2, schedule, command2) == (new_id, "*/5 * * * *", command)
        assert scalar(db, "SELECT idmint.schedule_cleanup('0 3 * * *')") == new_id
        assert [r[1] for r in job_rows(db)] == ["0 3 * * *"]
        # The same through the facade.
        mint = idmint.IdMint(dsn)
        assert mint.schedule_cleanup("0 4 * * *") == new_id
        assert [r[1] for r in job_rows(db)] == ["0 4 * * *"]
        with pytest.raises(idmint.InvalidArgumentError):
            mint.schedule_cleanup("every minute")
        assert mint.unschedule_cleanup() is True
        assert mint.unschedule_cleanup() is False
        assert mint.schedule_cleanup("0 3 * * *") > 0
        for bad in ["5 seconds", "every minute", "", None]:
            with raises_sqlstate("ID003"):
                db.execute("SELECT idmint.schedule_cleanup(%s)", [bad])
        assert [r[1] for r in job_rows(db)] == ["0 3 * * *"]

        # Rolling back the migration removes the job with the schema; re-applying restores it.
        assert rollback(dsn)
        assert job_rows(db) == []
        assert scalar(db, "SELECT to_regnamespace('idmint') IS NULL") is True
        assert migrate(dsn)
        assert [r[1] for r in job_rows(db)] == ["* * * * *"]
        assert scalar(db, "SELECT count(*) FROM cron.job WHERE jobname = 'someone-elses-job'") == 1


def test_without_pg_cron_scheduling_explains_the_alternative(db: psycopg.Connection) -> None:
    """The test cluster has no pg_cron: migrating worked, nothing is scheduled."""
    assert scalar(db, "SELECT count(*) FROM pg_extension WHERE extname = 'pg_cron'") == 0
    with raises_sqlstate("ID003") as info:
        db.execute("SELECT idmint.schedule_cleanup()")
    assert "pg_cron is not installed" in str(info.value)
    assert info.value.diag.message_hint is not None
    assert "idmint cleanup --every 60" in info.value.diag.message_hint
    assert scalar(db, "SELECT idmint.unschedule_cleanup()") is False
    with raises_sqlstate("ID003"):
        db.execute("SELECT idmint.schedule_cleanup(NULL)")

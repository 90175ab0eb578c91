"""Audit: every issued, reserved, confirmed, released, expired and bound driver number can
be traced in idmint.driver_id_audit — who (actor, application_name, reserved_by), when, how."""

from __future__ import annotations

from datetime import datetime

import psycopg

from tests.util import Connect, raises_sqlstate, scalar, wait_expired


def trail(db: psycopg.Connection, driver_id: str) -> list[tuple[object, ...]]:
    return db.execute(
        "SELECT event, how, actor, application_name, reserved_by, detail"
        " FROM idmint.driver_id_audit WHERE driver_id = %s ORDER BY at, event",
        [driver_id],
    ).fetchall()


def test_every_life_cycle_step_is_traced(db: psycopg.Connection, connect: Connect) -> None:
    user = scalar(db, "SELECT session_user")
    db.execute("SELECT idmint.add_fleet('Audit', 'AUD', 20)")
    desk = connect(application_name="front-desk")
    batch = connect(application_name="nightly-import")

    assert scalar(desk, "SELECT idmint.next_driver_id('AUD')") == "DRV-001AUD"
    assert [r[0] for r in batch.execute("SELECT idmint.next_driver_ids('AUD', 2)")] == [
        "DRV-002AUD",
        "DRV-003AUD",
    ]
    assert trail(db, "DRV-001AUD") == [("assigned", "next", user, "front-desk", None, None)]
    assert trail(db, "DRV-003AUD") == [("assigned", "bulk", user, "nightly-import", None, None)]

    # Reserved by a named registration, confirmed from another application.
    kept = scalar(desk, "SELECT idmint.reserve_driver_id('AUD', 'signup #17')")
    assert kept == "DRV-004AUD"
    batch.execute("SELECT idmint.confirm_driver_id(%s, 'signup #17')", [kept])
    assert trail(db, kept) == [
        ("reserved", None, user, "front-desk", "signup #17", "expires in 00:05:00"),
        ("confirmed", None, user, "nightly-import", "signup #17", None),
    ]

    # Released, then handed out again: both life cycles stay visible.
    gone = scalar(desk, "SELECT idmint.reserve_driver_id('AUD')")
    assert gone == "DRV-005AUD"
    pid = desk.info.backend_pid
    assert scalar(desk, "SELECT idmint.release_driver_id(%s)", [gone]) is True
    assert scalar(batch, "SELECT idmint.next_driver_id('AUD')") == gone
    assert trail(db, gone) == [
        ("reserved", None, user, "front-desk", f"front-desk pid {pid}", "expires in 00:05:00"),
        ("released", None, user, "front-desk", f"front-desk pid {pid}", None),
        ("assigned", "next", user, "nightly-import", None, None),
    ]

    # Expired and purged.
    short = str(
        scalar(desk, "SELECT idmint.reserve_driver_id('AUD', 'slow form', '1 millisecond')")
    )
    assert short == "DRV-006AUD"
    wait_expired(db, short)
    assert scalar(batch, "SELECT idmint.purge_expired_reservations()") == 1
    rows = trail(db, short)
    assert [r[:5] for r in rows] == [
        ("reserved", None, user, "front-desk", "slow form"),
        ("expired", None, user, "nightly-import", "slow form"),
    ]
    assert str(rows[1][5]).startswith("purged; expired at ")

    # Bound by the trigger to an application row: the binding shows on the assignment.
    db.execute(
        "CREATE TABLE public.drivers (id serial PRIMARY KEY, fleet text NOT NULL, driver_id text)"
    )
    db.execute(
        "CREATE TRIGGER drivers_id BEFORE INSERT OR UPDATE ON public.drivers FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id')"
    )
    # (It reuses the purged number, lowest first.)
    bound = scalar(desk, "INSERT INTO public.drivers (fleet) VALUES ('AUD') RETURNING driver_id")
    assert bound == short
    assert trail(db, short)[-1] == (
        "assigned",
        "next",
        user,
        "front-desk",
        None,
        "bound to an application row",
    )

    # A counter reset is traced per fleet (no driver id).
    batch.execute("SELECT idmint.reset_driver_sequence('AUD', 12)")
    assert db.execute(
        "SELECT event, actor, application_name, detail FROM idmint.driver_id_audit"
        " WHERE fleet_code = 'AUD' AND driver_id IS NULL"
    ).fetchall() == [("reset", user, "nightly-import", "counter 6 -> 12")]

    # Every ledger entry has an audit trail, and timestamps are in order.
    missing = db.execute(
        "SELECT l.driver_id FROM idmint.driver_id_ledger l"
        " WHERE NOT EXISTS (SELECT FROM idmint.driver_id_audit a WHERE a.driver_id = l.driver_id)"
    ).fetchall()
    assert missing == []
    times = [
        r[0]
        for r in db.execute(
            "SELECT at FROM idmint.driver_id_audit WHERE driver_id = %s ORDER BY at", [gone]
        )
    ]
    assert all(isinstance(t, datetime) for t in times) and times == sorted(times)


def test_driver_id_history_is_the_trail_of_one_id(db: psycopg.Connection) -> None:
    db.execute("SELECT idmint.add_fleet('History', 'HST', 10)")
    db.execute("SELECT idmint.add_fleet('Other', 'THR', 10)")
    rid = str(scalar(db, "SELECT idmint.reserve_driver_id('HST', 'form')"))
    db.execute("SELECT idmint.release_driver_id(%s, 'form')", [rid])
    db.execute("SELECT idmint.next_driver_id('HST')")
    db.execute("SELECT idmint.next_driver_ids('THR', 3)")
    history = db.execute("SELECT * FROM idmint.driver_id_history('drv-001hst')").fetchall()
    view = db.execute(
        "SELECT * FROM idmint.driver_id_audit WHERE driver_id = 'DRV-001HST' ORDER BY at"
    ).fetchall()
    assert history == view
    assert [r[5] for r in history] == ["reserved", "released", "assigned"]
    assert db.execute("SELECT * FROM idmint.driver_id_history('DRV-009ZZZ')").fetchall() == []
    for bad in ["DRV-000HST", "DRV-1HST", "", None]:
        with raises_sqlstate("ID003"):
            db.execute("SELECT * FROM idmint.driver_id_history(%s)", [bad])


def entity_history(db: psycopg.Connection, number: object) -> list[tuple[object, ...]]:
    return db.execute(
        "SELECT entity_number, prefix, entity, event, how, actor, issued_xid IS NOT NULL"
        " FROM idmint.entity_number_history(%s)",
        [number],
    ).fetchall()


def test_entity_number_history_is_the_trail_of_one_number(db: psycopg.Connection) -> None:
    me = scalar(db, "SELECT session_user")
    db.execute(
        "CREATE TABLE parts (id int PRIMARY KEY, pn text);"
        " CREATE TRIGGER parts_pn BEFORE INSERT OR UPDATE OR DELETE ON parts FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_entity_number('pn', 'part')"
    )
    with db.transaction():
        xid = scalar(db, "SELECT pg_current_xact_id()::text::bigint")
        gen = str(scalar(db, "SELECT idmint.gen_entity_number('part')"))
    assert entity_history(db, gen) == [(gen, 1, "part", "issued", "gen", me, True)]
    [(issued_xid, at)] = db.execute(
        "SELECT issued_xid, at FROM idmint.entity_number_history(%s)", [gen]
    ).fetchall()
    assert issued_xid == xid and isinstance(at, datetime)

    # Inserted later into a row of a triggered table: issued, then bound.
    db.execute("INSERT INTO parts VALUES (1, %s)", [gen])
    assert [r[3:5] for r in entity_history(db, gen)] == [("issued", "gen"), ("bound", None)]
    times = [r[0] for r in db.execute("SELECT at FROM idmint.entity_number_history(%s)", [gen])]
    assert times == sorted(times)
    # Issued by the trigger itself, and claimed by hand.
    db.execute("INSERT INTO parts VALUES (2, NULL)")
    bound = str(scalar(db, "SELECT pn FROM parts WHERE id = 2"))
    assert [r[3:5] for r in entity_history(db, bound)] == [("issued", "bind"), ("bound", None)]
    assert entity_history(db, "3000001") == []  # never issued
    db.execute("SELECT idmint.claim_entity_number('3000001')")
    assert entity_history(db, "3000001") == [("3000001", 3, "batch", "issued", "claim", me, True)]
    # A deleted row unbinds; the number stays issued.
    db.execute("DELETE FROM parts WHERE id = 1")
    assert [r[3] for r in entity_history(db, gen)] == ["issued"]
    assert entity_history(db, "9000001") == []  # prefix 9 is not a type: never issued

    for bad in ["123456", "12345678", "0123456", "1234567 ", "abcdefg", "", None]:
        with raises_sqlstate("ID003"):
            db.execute("SELECT * FROM idmint.entity_number_history(%s)", [bad])


def test_an_app_role_may_read_the_audit_and_capacity_views(
    db: psycopg.Connection, connect: Connect
) -> None:
    db.execute("SELECT idmint.add_fleet('Readable', 'RDB', 10)")
    db.execute("SELECT idmint.next_driver_id('RDB')")
    number = scalar(db, "SELECT idmint.gen_entity_number('order')")
    db.execute(
        "DO $$ BEGIN CREATE ROLE idmint_test_auditor LOGIN;"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    db.execute("GRANT idmint_user TO idmint_test_auditor")
    try:
        app = connect(user="idmint_test_auditor")
        assert (
            scalar(app, "SELECT count(*) FROM idmint.driver_id_audit WHERE fleet_code = 'RDB'") == 1
        )
        assert scalar(app, "SELECT assigned FROM idmint.fleet_capacity WHERE code = 'RDB'") == 1
        assert scalar(app, "SELECT used FROM idmint.capacity_report() WHERE key = 'RDB'") == 1
        assert scalar(app, "SELECT count(*) FROM idmint.driver_id_history('DRV-001RDB')") == 1
        assert scalar(app, "SELECT how FROM idmint.entity_number_history(%s)", [number]) == "gen"
    finally:
        db.execute("REVOKE idmint_user FROM idmint_test_auditor")

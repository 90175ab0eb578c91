"""The history checker itself, on small hand-made histories (no database)."""

from __future__ import annotations

from tests.faults.history import History, check


def _ok(h: History, p: int, key: str, driver_id: str) -> None:
    h.invoke(p, driver_id[7:10], key)
    h.ok(p, driver_id[7:10], key, driver_id)


def test_clean_history_is_valid() -> None:
    h = History()
    _ok(h, 1, "a", "DRV-001ABC")
    _ok(h, 2, "b", "DRV-002ABC")
    _ok(h, 1, "c", "DRV-001XYZ")
    r = check(h.ops, {"DRV-001ABC": "a", "DRV-002ABC": "b", "DRV-001XYZ": "c"})
    assert r.valid, r.summary()
    assert (r.oks, r.committed) == (3, 3)


def test_flags_a_duplicate() -> None:
    h = History()
    _ok(h, 1, "a", "DRV-001ABC")
    _ok(h, 2, "b", "DRV-001ABC")
    r = check(h.ops, {"DRV-001ABC": None})
    assert not r.valid
    assert len(r.duplicates) == 1 and "DRV-001ABC" in r.duplicates[0]


def test_flags_a_lost_acknowledged_id() -> None:
    h = History()
    _ok(h, 1, "a", "DRV-001ABC")
    _ok(h, 1, "b", "DRV-002ABC")
    r = check(h.ops, {"DRV-001ABC": "a"})
    assert not r.valid
    assert r.lost == ["DRV-002ABC"]


def test_flags_a_hole() -> None:
    h = History()
    _ok(h, 1, "a", "DRV-001ABC")
    _ok(h, 1, "c", "DRV-003ABC")
    r = check(h.ops, {"DRV-001ABC": "a", "DRV-003ABC": "c"})
    assert not r.valid
    assert r.holes == ["DRV-002ABC"]


def test_flags_a_key_answered_with_two_ids() -> None:
    h = History()
    h.invoke(1, "ABC", "a")
    h.info(1, "ABC", "a", "connection lost")
    _ok(h, 1, "a", "DRV-001ABC")
    _ok(h, 1, "a", "DRV-002ABC")  # the retry must have returned DRV-001ABC
    r = check(h.ops, {"DRV-001ABC": "a", "DRV-002ABC": "a"})
    assert not r.valid
    assert r.key_conflicts


def test_flags_an_id_nobody_asked_for() -> None:
    h = History()
    _ok(h, 1, "a", "DRV-001ABC")
    h.invoke(2, "ABC", "b")
    h.fail(2, "ABC", "b", "ID001")  # a definite failure must not have committed
    r = check(h.ops, {"DRV-001ABC": "a", "DRV-002ABC": "b"})
    assert not r.valid
    assert r.unexplained == ["DRV-002ABC (key 'b', never acknowledged)"]


def test_unknown_outcome_may_go_either_way() -> None:
    def history() -> History:
        h = History()
        _ok(h, 1, "a", "DRV-001ABC")
        h.invoke(2, "ABC", "b")
        h.info(2, "ABC", "b", "server closed the connection unexpectedly")
        return h

    assert check(history().ops, {"DRV-001ABC": "a"}).valid
    committed = check(history().ops, {"DRV-001ABC": "a", "DRV-002ABC": "b"})
    assert committed.valid and committed.unresolved == 1
    # Without the key stored, an info op still accounts for one id of its fleet, not two.
    assert check(history().ops, {"DRV-001ABC": None, "DRV-002ABC": None}).valid
    too_many = check(history().ops, {"DRV-001ABC": None, "DRV-002ABC": None, "DRV-003ABC": None})
    assert too_many.unexplained == ["DRV-003ABC"]


def test_info_resolved_by_a_retry_with_the_same_key() -> None:
    h = History()
    h.invoke(1, "ABC", "a")
    h.info(1, "ABC", "a", "terminating connection due to administrator command")
    _ok(h, 1, "a", "DRV-001ABC")
    r = check(h.ops, {"DRV-001ABC": "a"})
    assert r.valid and r.unresolved == 0 and r.infos == 1

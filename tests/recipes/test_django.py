"""Recipe: Django 5 (docs/ORMS.md), settings configured in-process, a real server.

idmint installed by a RunSQL migration from idmint.migrations_dir() (and removed by
migrating to zero); a db_default with a Func calling gen_entity_number; a trigger-filled
driver id declared db_default=Value(None), without which save() writes NULL over it (ID007,
read through error_from).
"""

from __future__ import annotations

from collections.abc import Iterator

import django
import pytest
from django.conf import settings

from tests.recipes.conftest import Server

if not settings.configured:
    settings.configure(
        INSTALLED_APPS=["tests.recipes.django_app"],
        # Pointed at each test's database by the fixture below.
        DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "unset"}},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        USE_TZ=True,
    )
    django.setup()

# Imported once the settings exist.
from django.core.management import call_command
from django.db import DatabaseError, connection

import idmint
from tests.recipes.django_app.models import Driver, DriverWithoutDbDefault, Part


@pytest.fixture
def django_db(empty_server: Server) -> Iterator[Server]:
    """Django's default connection, pointed at an empty database (as the superuser)."""
    connection.close()
    connection.settings_dict.update(
        NAME=empty_server.dbname,
        USER=empty_server.user,
        HOST=empty_server.host,
        PORT=empty_server.port,
    )
    yield empty_server
    connection.close()


def scalar(query: str) -> object:
    with connection.cursor() as cur:
        cur.execute(query)
        row = cur.fetchone()
    assert row is not None
    return row[0]


def test_runsql_install_db_default_and_trigger_filled_ids(django_db: Server) -> None:
    call_command("migrate", "django_app", verbosity=0)
    assert scalar("SELECT idmint.version()") == "0001_idmint"
    # The hand-written 0002 is what makemigrations writes for these models (exit 1 if not).
    call_command("makemigrations", "django_app", check=True, dry_run=True, verbosity=0)
    scalar("SELECT code FROM idmint.add_fleet('Django', 'DJA')")

    # db_default with a Func: the number comes back from the INSERT.
    bolt = Part.objects.create(name="bolt")
    assert isinstance(bolt.part_number, str)
    assert len(bolt.part_number) == 7 and bolt.part_number[0] == "1"
    assert Part.objects.get(pk=bolt.pk).part_number == bolt.part_number
    assert scalar("SELECT issued FROM idmint.entity_capacity WHERE name = 'part'") == 1

    # db_default=Value(None): INSERT ... DEFAULT, the trigger fills it, RETURNING reads it.
    ann = Driver.objects.create(fleet="DJA", name="Ann")
    assert ann.driver_id == "DRV-001DJA"
    ann.name = "Ann B."
    ann.save()  # writes the same id back: allowed
    assert Driver.objects.get(pk=ann.pk).driver_id == "DRV-001DJA"

    # Without it Django inserts NULL, never reads the id, and save() writes NULL over it.
    bo = DriverWithoutDbDefault.objects.create(fleet="DJA", name="Bo")
    assert bo.driver_id is None
    assert DriverWithoutDbDefault.objects.get(pk=bo.pk).driver_id == "DRV-002DJA"
    bo.name = "Bo B."
    with pytest.raises(DatabaseError) as info:
        bo.save()
    err = idmint.error_from(info.value)
    assert isinstance(err, idmint.ImmutableIdError)
    assert err.sqlstate == "ID007"
    assert err.__cause__ is info.value

    # Migrating to zero drops the tables, then runs the rollback SQL.
    call_command("migrate", "django_app", "zero", verbosity=0)
    assert scalar("SELECT to_regnamespace('idmint') IS NULL") is True

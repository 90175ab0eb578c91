"""Install idmint with RunSQL, from the SQL files the package ships.

Each SQL text goes in a list: a plain string would be split into statements by Django
(sqlparse), which is not needed here; a list item is sent as it is, in one call.
"""

from django.db import migrations

import idmint

SQL = idmint.migrations_dir()


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []  # noqa: RUF012 (Django reads these)
    operations = [  # noqa: RUF012
        migrations.RunSQL(
            sql=[(SQL / "0001_idmint.sql").read_text()],
            reverse_sql=[(SQL / "0001_idmint.rollback.sql").read_text()],
        ),
    ]

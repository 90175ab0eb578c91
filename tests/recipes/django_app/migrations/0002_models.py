"""The recipe's models (as makemigrations writes them) and the triggers that fill their ids."""

from django.db import migrations, models

DRIVER_TRIGGER = """
CREATE TRIGGER assign_driver_id BEFORE INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW
    EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id')
"""


class Migration(migrations.Migration):
    dependencies = [("django_app", "0001_idmint")]  # noqa: RUF012 (Django reads these)
    operations = [  # noqa: RUF012
        migrations.CreateModel(
            name="Driver",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("fleet", models.CharField(max_length=36)),
                ("name", models.TextField()),
                (
                    "driver_id",
                    models.CharField(
                        db_default=models.Value(None), max_length=10, null=True, unique=True
                    ),
                ),
            ],
        ),
        migrations.CreateModel(
            name="DriverWithoutDbDefault",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("fleet", models.CharField(max_length=36)),
                ("name", models.TextField()),
                ("driver_id", models.CharField(max_length=10, null=True, unique=True)),
            ],
        ),
        migrations.CreateModel(
            name="Part",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("name", models.TextField()),
                (
                    "part_number",
                    models.CharField(
                        db_default=models.Func(
                            models.Value("part"), function="idmint.gen_entity_number"
                        ),
                        max_length=7,
                        unique=True,
                    ),
                ),
            ],
        ),
        migrations.RunSQL(
            [
                DRIVER_TRIGGER.format(table="django_app_driver"),
                DRIVER_TRIGGER.format(table="django_app_driverwithoutdbdefault"),
            ],
            reverse_sql=migrations.RunSQL.noop,  # dropped with the tables
        ),
    ]

"""Models of the Django recipe."""

from __future__ import annotations

from django.db import models
from django.db.models import Func, Value


class Part(models.Model):
    name = models.TextField()
    # DEFAULT idmint.gen_entity_number('part'): Django leaves the column out of the INSERT
    # and reads the number back with RETURNING.
    part_number = models.CharField(
        max_length=7,
        unique=True,
        db_default=Func(Value("part"), function="idmint.gen_entity_number"),
    )


class Driver(models.Model):
    fleet = models.CharField(max_length=36)  # the fleet's code or uuid
    name = models.TextField()
    # Filled by the assign_driver_id trigger. db_default makes Django insert DEFAULT (NULL,
    # which the trigger replaces) and read the id back, so a later save() writes the same id.
    driver_id = models.CharField(max_length=10, unique=True, null=True, db_default=Value(None))


class DriverWithoutDbDefault(models.Model):
    """The same trigger, without db_default: Django never learns the id and a later save()
    writes NULL over it (ID007)."""

    fleet = models.CharField(max_length=36)
    name = models.TextField()
    driver_id = models.CharField(max_length=10, unique=True, null=True)

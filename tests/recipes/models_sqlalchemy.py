"""The SQLAlchemy 2 models of the recipes (docs/ORMS.md), shared by the sync, asyncio and
alembic tests."""

from __future__ import annotations

from sqlalchemy import DDL, FetchedValue, MetaData, String, event, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    metadata = MetaData(schema="app")


class Part(Base):
    __tablename__ = "parts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    # Written exactly as PostgreSQL stores it (pg_get_expr): alembic's
    # compare_server_default then finds the strings equal and runs neither on the server.
    part_number: Mapped[str] = mapped_column(
        String(7), unique=True, server_default=text("idmint.gen_entity_number('part'::text)")
    )


class Driver(Base):
    __tablename__ = "drivers"

    id: Mapped[int] = mapped_column(primary_key=True)
    fleet: Mapped[str] = mapped_column(String(36))  # the fleet's code or uuid
    name: Mapped[str]
    # Filled by the trigger: left out of the INSERT, fetched back with RETURNING.
    driver_id: Mapped[str] = mapped_column(String(10), unique=True, server_default=FetchedValue())


# The triggers are created with the tables by metadata.create_all (an alembic migration
# creates them with op.execute). The DEFAULT issues a part number, the trigger binds it to
# its row; the driver trigger assigns the fleet's next driver id.
event.listen(
    Part.__table__,
    "after_create",
    DDL(
        "CREATE TRIGGER parts_part_number BEFORE INSERT OR UPDATE OR DELETE ON %(fullname)s"
        " FOR EACH ROW EXECUTE FUNCTION idmint.assign_entity_number('part_number', 'part')"
    ),
)
event.listen(
    Driver.__table__,
    "after_create",
    DDL(
        "CREATE TRIGGER drivers_driver_id BEFORE INSERT OR UPDATE OR DELETE ON %(fullname)s"
        " FOR EACH ROW EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id')"
    ),
)

"""An ORM model whose key is an idmint column default: SQLAlchemy 2 (a test dependency
only) with server_default=text("idmint.gen_entity_number('part')")."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import String, create_engine, select, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import idmint


class Base(DeclarativeBase):
    pass


class Part(Base):
    __tablename__ = "parts"

    id: Mapped[int] = mapped_column(primary_key=True)
    part_number: Mapped[str] = mapped_column(
        String(7),
        unique=True,
        nullable=False,
        server_default=text("idmint.gen_entity_number('part')"),
    )
    name: Mapped[str]


@pytest.fixture
def engine(postgresql: psycopg.Connection) -> Iterator[Engine]:
    info = postgresql.info
    url = URL.create(
        "postgresql+psycopg",
        username=info.user,
        password=info.password or None,
        host=info.host,
        port=info.port,
        database=info.dbname,
    )
    eng = create_engine(url)
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()


def test_server_default_numbers_rows(engine: Engine, dsn: str) -> None:
    with Session(engine) as session:
        parts = [Part(name=f"bolt {i}") for i in range(25)]
        session.add_all(parts)
        session.commit()
        numbers = [p.part_number for p in parts]  # fetched back after the INSERT
    assert all(len(n) == 7 and n.isdigit() and n[0] == "1" for n in numbers)
    assert len(set(numbers)) == 25

    mint = idmint.IdMint(dsn)
    # The default registered each number with idmint: issued, and valid parts.
    issued = {c.prefix: c.issued for c in mint.entity_capacity()}
    assert issued[1] == 25
    assert all(mint.is_valid_entity_number(n, "part") for n in numbers)
    with pytest.raises(idmint.AlreadyTakenError):
        mint.claim_entity_number(numbers[0])

    with Session(engine) as session:
        stored = session.scalars(select(Part.part_number).order_by(Part.id)).all()
    assert list(stored) == numbers


def test_rolled_back_insert_consumes_nothing(engine: Engine, dsn: str) -> None:
    with Session(engine) as session:
        part = Part(name="washer")
        session.add(part)
        session.flush()
        number = part.part_number
        session.rollback()
    mint = idmint.IdMint(dsn)
    assert {c.prefix: c.issued for c in mint.entity_capacity()}[1] == 0
    assert mint.claim_entity_number(number) == number  # never issued: free to claim

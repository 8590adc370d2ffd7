"""A statement every area shares: insert a row unless one with its unique key is there already.

One INSERT … ON CONFLICT DO NOTHING (SQLite and PostgreSQL alike): two processes recording the
same event at once both succeed, one of them inserting, with no savepoint or retry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_new(
    session: Session, table: Table, values: Mapping[str, object], key: str
) -> int | None:
    """Insert `values` unless a row has the same `key` (a unique column).

    Returns the new row's id, or None when one with that key was there already.
    """
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[key])
        .returning(table.c.id)
    )
    return session.execute(statement).scalar()


def insert_new_many(
    session: Session, table: Table, rows: Sequence[Mapping[str, object]], key: str
) -> None:
    """`insert_new` for many rows in one statement (executemany); which were new is not told."""
    if rows:
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        statement = dialect.insert(table).on_conflict_do_nothing(index_elements=[key])
        session.execute(statement, list(rows))

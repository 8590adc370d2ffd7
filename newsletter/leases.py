"""Rows taken with a lease: claim, renew, release and settle, with retries that back off.

Every queue of the service works this way: the outbox's mails, a digest's ledger and the
import jobs. A worker claims a batch of due rows under a claim token of its own, which
moves them to their held status and their `next_attempt_at` to when the lease runs out.
It renews the lease while it works, and settles each row (sent, failed, done…) or releases
it back to the queue, always on the condition that the row still carries its claim: a
worker that stalled past its lease and lost rows to another finds out at its next write,
and changes nothing. A killed worker's rows come back once their lease has run out.

A claim is one UPDATE … RETURNING: on SQLite a single short write transaction, on
PostgreSQL the inner SELECT skips rows another worker holds (FOR UPDATE SKIP LOCKED), so
two workers never share a row.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, Update, bindparam, select, update
from sqlalchemy.orm import Session

from newsletter.models import utcnow


@dataclass(frozen=True)
class Policy:
    """How one queue's rows are taken and tried again."""

    batch_size: int = 50
    lease: timedelta = timedelta(minutes=5)
    max_attempts: int = 12
    first_retry: timedelta = timedelta(seconds=30)
    max_retry: timedelta = timedelta(hours=2)

    def retry_delay(self, attempts: int) -> timedelta:
        """Exponential back-off: first_retry, then doubling, capped at max_retry."""
        delay = self.first_retry
        # Doubling stops at the cap: 2 ** attempts would overflow timedelta from attempt 43 on.
        for _ in range(attempts - 1):
            if delay >= self.max_retry:
                break
            delay *= 2
        return min(delay, self.max_retry)


@contextmanager
def autocommit(session: Session) -> Iterator[Connection]:
    """A connection of its own that marks rows sent: one statement, one transaction, each.

    Of its own, because a Session's bookkeeping costs more than the write itself. In
    autocommit, so a mark is one round trip. Each mark is as durable as the database keeps
    any commit (PostgreSQL's default: its WAL on disk before the answer): a crash of the
    database server forgets none, so at most the mail in flight on each connection goes
    twice, as after a worker's crash.
    """
    with session.get_bind().connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


def new_claim() -> str:
    """A claim token: whoever holds rows under it, and nobody else."""
    return secrets.token_hex(16)


class Leases:
    """The leased rows of one table.

    The table has `id`, `status`, `claim`, `next_attempt_at` (when a waiting row is due; when
    a held row's lease runs out) and `attempts`. A row waits in `waiting`, is held in `held`
    (the same status for a queue whose rows keep theirs while held), and ends in `failed` when
    its attempts are used up.
    """

    def __init__(
        self,
        table: Table,
        *,
        waiting: str,
        held: str,
        failed: str | None = None,
        order_by: Callable[[Table], Sequence[ColumnElement[Any]]] | None = None,
        error_column: str | None = "last_error",
    ) -> None:
        self.table = table
        self.waiting = waiting
        self.held = held
        self.failed = failed
        self.c = table.c
        self._order_by = order_by(table) if order_by else (table.c.id,)
        self.error_column = error_column

    def claim(
        self,
        session: Session,
        token: str,
        policy: Policy,
        *where: ColumnElement[bool],
        limit: int | None = None,
        now: datetime | None = None,
    ) -> list[int]:
        """Take up to a batch of due rows (also held ones whose lease ran out); commits.

        Returns their ids in order. Each claim counts an attempt; a release of an untried row
        gives it back. A row whose attempts are used up by workers that died holding it (a
        message that kills the process) fails instead of being taken once more.
        """
        now = now or utcnow()
        statuses = {self.waiting, self.held}
        conditions = (self.c.status.in_(statuses), self.c.next_attempt_at <= now, *where)
        # A read first: an idle queue costs no write (on SQLite, no turn at the one write lock).
        if session.scalar(select(self.c.id).where(*conditions).limit(1)) is None:
            session.commit()
            return []
        if self.failed is not None:
            self._give_up(session, policy, (self.c.next_attempt_at <= now, *where))
        due = (
            select(self.c.id)
            .where(*conditions)
            .order_by(*self._order_by)
            .limit(limit or policy.batch_size)
        )
        if session.get_bind().dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True)
        claimed = session.scalars(
            update(self.table)
            .where(self.c.id.in_(due.scalar_subquery()))
            .values(
                status=self.held,
                claim=token,
                next_attempt_at=now + policy.lease,
                attempts=self.c.attempts + 1,
            )
            .returning(self.c.id)
        ).all()
        session.commit()
        return sorted(claimed)

    def _give_up(
        self, session: Session, policy: Policy, due: tuple[ColumnElement[bool], ...]
    ) -> None:
        """Fail the due rows whose every attempt ended without a word from their worker.

        Only held rows whose lease ran out can be such rows: a worker that gives a row back
        counts its attempt and fails it instead once they are used up (`retry_or_fail`). So
        where the held status is a status of its own, the rows waiting are not read at all.
        """
        values: dict[str, object] = {"status": self.failed, "claim": None}
        if self.error_column:
            values[self.error_column] = (
                f"gave up: the worker stopped while on it, {policy.max_attempts} times"
            )
        session.execute(
            update(self.table)
            .where(self.c.status == self.held, *due, self.c.attempts >= policy.max_attempts)
            .values(**values)
            .execution_options(synchronize_session=False)
        )

    def _held(self, rows: Sequence[int], token: str) -> Update:
        return update(self.table).where(
            self.c.id.in_(rows), self.c.claim == token, self.c.status == self.held
        )

    def renew(
        self,
        session: Session,
        rows: Sequence[int],
        token: str,
        policy: Policy,
        *,
        now: datetime | None = None,
        **values: object,
    ) -> bool:
        """Extend the lease of rows still held (writing `values` too); commits the transaction.

        False, having rolled the transaction back, when this claim no longer holds every one.
        """
        if not rows:
            return True
        until = (now or utcnow()) + policy.lease
        renewed = session.execute(self._held(rows, token).values(next_attempt_at=until, **values))
        if renewed.rowcount != len(rows):
            # Lost to another claim: what this claim wrote in the transaction goes too.
            session.rollback()
            return False
        session.commit()
        return True

    def release(
        self,
        session: Session,
        rows: Sequence[int],
        token: str,
        *,
        delay: timedelta | None = None,
        error: str | None = None,
        count_attempt: bool = False,
        now: datetime | None = None,
    ) -> int:
        """Give rows back to the queue, due after `delay`; an untried row counts no attempt.

        Commits. Rows settled meanwhile (a cancel skipped them) stay as they are. Returns
        how many it gave back.
        """
        if not rows:
            return 0
        values: dict[str, object] = {
            "status": self.waiting,
            "claim": None,
            "next_attempt_at": (now or utcnow()) + (delay or timedelta(0)),
        }
        if not count_attempt:
            values["attempts"] = self.c.attempts - 1
        if error is not None and self.error_column:
            values[self.error_column] = error[:2000]
        released = session.execute(self._held(rows, token).values(**values))
        session.commit()
        return released.rowcount

    def retry_or_fail(
        self,
        session: Session,
        row: int,
        token: str,
        policy: Policy,
        attempts: int,
        error: str,
        failed: str,
        gave_up: str | None = None,
    ) -> bool:
        """After a temporary failure: back to the queue with back-off, or `failed` (with the
        error `gave_up`, else `error`) once the attempts are used up.

        True when it will be tried again; commits.
        """
        if attempts >= policy.max_attempts:
            self.settle(session, [row], token, failed, gave_up or error)
            return False
        self.release(
            session,
            [row],
            token,
            delay=policy.retry_delay(attempts),
            error=error,
            count_attempt=True,
        )
        return True

    def settle(
        self,
        session: Session,
        rows: Sequence[int],
        token: str,
        status: str,
        error: str | None = None,
        **values: object,
    ) -> int:
        """Give rows their final status, if this claim still holds them; commits.

        Returns how many it settled.
        """
        if not rows:
            return 0
        statement = self.settle_statement(status, error, **values)
        settled = session.execute(statement, {"rows": list(rows), "token": token})
        session.commit()
        return settled.rowcount

    def settle_statement(
        self, status: str, error: str | None = None, *, one: bool = False, **values: object
    ) -> Update:
        """An UPDATE settling the rows held by the `token` parameter: those of the `rows`
        parameter, or with `one` the single row of the `row` parameter.

        Built once by a caller that settles one row at a time at speed (a digest's marks);
        `values` may hold bind parameters of their own.
        """
        changes: dict[str, object] = {"status": status, "claim": None, **values}
        if self.error_column:
            changes[self.error_column] = error[:2000] if error else None
        which = (
            self.c.id == bindparam("row")
            if one
            else self.c.id.in_(bindparam("rows", expanding=True))
        )
        return update(self.table).where(which, self.c.claim == bindparam("token")).values(**changes)

"""The signup queue: a request writes one row and answers; the worker applies the rules.

A signup box's request checks what it can check without looking the address up (the fields,
the honeypot, the proof of work, the per-IP limit, the lists), writes the signup with its
consent evidence to this queue, commits and answers. The answer thus takes the same time
whether the address is new, waiting, confirmed, gone or suppressed: nothing about it is read.
The worker's `SignupRunner` claims queued rows with a lease (`leases.py`) and applies the
subscription rules to each (`subscriptions.apply_signup`: suppression, states, the consent
trail, the confirmation mail and its limit) in one transaction that also deletes the row, so
no signup is applied twice, and none is lost while no worker runs.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, bindparam, delete, func, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from newsletter import frequencies
from newsletter import subscriptions as subs
from newsletter.config import SQLITE_WAIT_SECONDS, in_memory
from newsletter.leases import Leases, Policy, new_claim
from newsletter.models import Newsletter, QueuedSignup, SignupStatus, utcnow

log = logging.getLogger(__name__)

# Small batches: the confirmation of the first row should not wait for the fiftieth.
POLICY = Policy(batch_size=50, max_attempts=12)
LEASES = Leases(
    QueuedSignup.__table__,
    waiting=SignupStatus.QUEUED,
    held=SignupStatus.QUEUED,
    failed=SignupStatus.FAILED,
)

_TABLE = QueuedSignup.__table__
_INSERT = insert(_TABLE)
_HELD = select(_TABLE).where(_TABLE.c.id == bindparam("row"), _TABLE.c.claim == bindparam("token"))
_TAKE = delete(_TABLE).where(_TABLE.c.id == bindparam("row"), _TABLE.c.claim == bindparam("token"))
_OPEN_AMONG = select(Newsletter.id, Newsletter.frequencies, Newsletter.default_frequency).where(
    Newsletter.id.in_(bindparam("ids", expanding=True)), Newsletter.archived.is_(False)
)


# How long a signup waits for SQLite's write lock before it is answered 503 (as long as
# the engine's connections wait), and the pauses between tries: short first, the INSERT
# that holds the lock takes some thirty microseconds.
WAIT_SECONDS = float(SQLITE_WAIT_SECONDS)
FIRST_PAUSE = 0.00005
LAST_PAUSE = 0.002

_AUTOCOMMIT: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()
# What a request writes: the rest (the row's id, the worker's claim and error) is the worker's.
_WRITTEN = [c for c in _TABLE.columns if c.name not in ("id", "claim", "last_error")]
_DIRECT: weakref.WeakKeyDictionary[Engine, _DirectInsert] = weakref.WeakKeyDictionary()


class _OwnWriter:
    """Each web thread's own connection to a SQLite file, for the queue's INSERT alone.

    In autocommit, the INSERT is its own transaction: the file's one write lock is held for
    that statement only. And where the lock is taken (another web process writing), the
    wait is ours: SQLite's own sleeps a millisecond at least, some thirty INSERTs' time, and
    under a flood of signups several processes spent a tenth of theirs asleep so.
    """

    def __init__(self, engine: Engine) -> None:
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        # Busy at once, not after a wait; no transaction but the statement's own.
        self._connect = (cargs, {**cparams, "timeout": 0, "isolation_level": None})
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        local = self._local
        # A process forked from one that wrote (a server's master) opens its own.
        if getattr(local, "pid", None) != os.getpid():
            cargs, cparams = self._connect
            connection = sqlite3.connect(*cargs, **cparams)
            connection.execute("PRAGMA synchronous=NORMAL")  # as the engine's (WAL: the file's)
            local.connection, local.pid = connection, os.getpid()
        return local.connection  # type: ignore[no-any-return]

    def insert(self, sql: str, values: Sequence[Any]) -> None:
        """Run the INSERT, waiting up to WAIT_SECONDS for the write lock; SQLAlchemy's
        OperationalError (the app's 503) if it stays taken or the file cannot be written."""
        pause, deadline = FIRST_PAUSE, None
        while True:
            try:
                self._connection().execute(sql, values)
                return
            except sqlite3.OperationalError as exc:
                now = time.monotonic()
                deadline = deadline or now + WAIT_SECONDS
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or now >= deadline:
                    raise OperationalError(sql, values, exc) from exc
            time.sleep(pause)
            pause = min(pause * 2, LAST_PAUSE)


@dataclass(frozen=True)
class _DirectInsert:
    """The queue's INSERT as the database driver takes it, and each column's conversion
    (JSON, dates) as SQLAlchemy would apply it; on a SQLite file, by each thread's own
    connection."""

    sql: str
    conversions: list[tuple[str, Callable[[Any], Any] | None]]
    writer: _OwnWriter | None

    @classmethod
    def of(cls, engine: Engine) -> _DirectInsert:
        found = _DIRECT.get(engine)
        if found is None:
            dialect = engine.dialect
            names = ", ".join(c.name for c in _WRITTEN)
            marks = ", ".join("?" for _ in _WRITTEN)
            conversions = []
            for column in _WRITTEN:
                convert = column.type.dialect_impl(dialect).bind_processor(dialect)
                if convert is not None and column.name == "newsletters":
                    # The same few choices of lists over and over: each written as JSON once.
                    convert = functools.lru_cache(maxsize=256)(convert)
                conversions.append((column.name, convert))
            # A database in memory lives in the pool's one connection: no other sees it.
            shared = in_memory(str(engine.url))
            found = _DIRECT[engine] = cls(
                f"INSERT INTO {_TABLE.name} ({names}) VALUES ({marks})",
                conversions,
                None if shared else _OwnWriter(engine),
            )
        return found

    def run(self, engine: Engine, row: dict[str, Any]) -> None:
        """Insert the row and commit."""
        values = [
            convert(row[name]) if convert else row[name] for name, convert in self.conversions
        ]
        if self.writer is not None:
            self.writer.insert(self.sql, values)
            return
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute(self.sql, values)
            cursor.close()
            connection.commit()
        finally:
            connection.close()  # back to the pool, rolled back if the commit did not happen


def _autocommit(engine: Engine) -> Engine:
    """The engine's pool in autocommit: each statement is a transaction of its own."""
    found = _AUTOCOMMIT.get(engine)
    if found is None:
        found = _AUTOCOMMIT[engine] = engine.execution_options(isolation_level="AUTOCOMMIT")
    return found


def enqueue(
    engine: Engine,
    address: str,
    key: str,
    chosen: Sequence[tuple[int, str]],
    origin: subs.Origin,
    locale: str | None,
    frequency: str | None = None,
) -> None:
    """Queue a checked signup to these (newsletter id, box text) lists, with the frequency
    the reader chose in the box, if any; the signup is committed before this returns, so it
    is kept before the reader is told it was taken.

    One INSERT in a transaction of its own, on the engine rather than the request's session
    (opening a session costs more than the INSERT). On PostgreSQL in autocommit: one round
    trip instead of BEGIN, INSERT, COMMIT. On SQLite, where switching a pooled connection to
    autocommit and back costs a statement more, the INSERT begins the transaction and the
    COMMIT follows at once: the one write lock the web processes share is held for that
    span only, not across the request's Python in between.
    """
    row = {
        "email": address,
        "email_key": key,
        # Tuples, which JSON writes as arrays too: the direct INSERT's cache can keep them.
        "newsletters": tuple(
            (newsletter_id, text, frequency) if frequency else (newsletter_id, text)
            for newsletter_id, text in chosen
        ),
        "locale": locale,
        "ip": origin.ip,
        "user_agent": origin.user_agent,
        "source": origin.source,
        "created_at": origin.at or utcnow(),
        "status": SignupStatus.QUEUED,
        "attempts": 0,
        "next_attempt_at": utcnow(),
    }
    if engine.dialect.name == "sqlite":
        _DirectInsert.of(engine).run(engine, row)
    else:
        with _autocommit(engine).connect() as conn:
            conn.execute(_INSERT, row)


def waiting_count(session: Session) -> int:
    """How many signups wait for a worker."""
    count = select(func.count(QueuedSignup.id)).where(QueuedSignup.status == SignupStatus.QUEUED)
    return session.scalar(count) or 0


def oldest_waiting(session: Session) -> datetime | None:
    """When the oldest signup still waiting was taken."""
    oldest = select(func.min(QueuedSignup.created_at)).where(
        QueuedSignup.status == SignupStatus.QUEUED
    )
    return session.scalar(oldest)


def forget(session: Session, email_key: str) -> None:
    """Drop the queued signups of an address (its owner asked to be erased); no commit."""
    session.execute(delete(QueuedSignup).where(QueuedSignup.email_key == email_key))


class SignupRunner:
    """The worker's runner for the signup queue: one batch of queued signups per step."""

    def __init__(
        self,
        limit: subs.ConfirmationLimit | None = None,
        policy: Policy = POLICY,
    ) -> None:
        self.limit = limit or subs.ConfirmationLimit()
        self.policy = policy

    def step(self, session: Session, stop: threading.Event | None = None) -> int:
        """Claim and apply one batch; return how many rows it claimed.

        The batch is applied in one transaction; should any row fail, it is applied again
        one row per transaction, so one bad signup holds up no other.
        """
        token = new_claim()
        ids = LEASES.claim(session, token, self.policy)
        if not ids:
            return 0
        if stop is not None and stop.is_set():
            LEASES.release(session, ids, token)
            return len(ids)
        try:
            for row_id in ids:
                self._apply_once(session, row_id, token)
            session.commit()
        except Exception:
            session.rollback()
        else:
            return len(ids)
        for position, row_id in enumerate(ids):
            if stop is not None and stop.is_set():
                LEASES.release(session, ids[position:], token)
                break
            try:
                self._apply(session, row_id, token)
            except Exception as exc:
                # One signup that cannot be applied must not hold up those behind it.
                log.exception("signup %s not applied", row_id)
                session.rollback()
                attempts = session.scalar(select(_TABLE.c.attempts).where(_TABLE.c.id == row_id))
                LEASES.retry_or_fail(
                    session,
                    row_id,
                    token,
                    self.policy,
                    attempts or 0,
                    f"{type(exc).__name__}: {exc}",
                    SignupStatus.FAILED,
                )
        return len(ids)

    def _apply(self, session: Session, row_id: int, token: str) -> None:
        """Apply one held signup and delete it, in one transaction; commits."""
        for attempt in range(2):
            try:
                self._apply_once(session, row_id, token)
            except IntegrityError:
                # Another worker wrote the same new address first: its rows exist now.
                session.rollback()
                if attempt:
                    raise
            else:
                session.commit()
                return

    def _apply_once(self, session: Session, row_id: int, token: str) -> None:
        conn = session.connection()
        row = conn.execute(_HELD, {"row": row_id, "token": token}).first()
        if row is None or conn.execute(_TAKE, {"row": row_id, "token": token}).rowcount != 1:
            return  # taken over by another claim since ours
        # Each entry: [newsletter id, box text] and, when the reader chose one, a frequency.
        wanted = [(int(entry[0]), str(entry[1])) for entry in row.newsletters]
        asked = {int(entry[0]): str(entry[2]) for entry in row.newsletters if len(entry) > 2}
        ids = [n for n, _ in wanted]
        still_open = {found.id: found for found in conn.execute(_OPEN_AMONG, {"ids": ids})}
        # A list archived since the signup takes no one new; the others still count.
        chosen = [(n, text) for n, text in wanted if n in still_open]
        if not chosen:
            return
        # A choice the list stopped offering since counts as none: its default applies.
        offered = {n: frequencies.parse(found.frequencies) for n, found in still_open.items()}
        choices = {n: f for n, f in asked.items() if n in offered and f in offered[n]}
        defaults = {
            n: found.default_frequency if found.default_frequency in offered[n] else None
            for n, found in still_open.items()
        }
        origin = subs.Origin(
            source=row.source or "web", ip=row.ip, user_agent=row.user_agent, at=row.created_at
        )
        subs.apply_signup(
            session,
            row.email,
            row.email_key,
            chosen,
            origin,
            self.limit,
            row.locale,
            choices=choices,
            defaults=defaults,
        )

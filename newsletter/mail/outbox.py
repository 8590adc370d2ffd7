"""The outbox: transactional mails queued in the database and sent by the worker's runner.

A mail is queued in the same transaction as the change that causes it, so it exists exactly
when the change does. The worker's `OutboxRunner` claims due rows with a lease, reads them in
one query, and for each checks that its claim still holds it (renewing the lease only once
half of it has gone), builds the mail at the last moment (`transactional.build`: a reader who
left meanwhile gets nothing), sends it, and records the outcome at once. An outage of the mail
server delays mail and loses none.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from email.message import EmailMessage

from sqlalchemy import Connection, bindparam, func, insert, select
from sqlalchemy.orm import Session

from newsletter import metrics
from newsletter.leases import Leases, Policy, autocommit, new_claim
from newsletter.links import OUTBOX, Links
from newsletter.mail.transport import ConnectionFailure, DeliveryError, Transport
from newsletter.models import MailKind, OutboxMessage, OutboxStatus, utcnow

log = logging.getLogger(__name__)

# How workers take outbox rows: small batches, a confirmation should not wait.
POLICY = Policy(batch_size=50, max_attempts=12)
# A queued row keeps its status while a worker holds it: only its claim and lease change.
LEASES = Leases(
    OutboxMessage.__table__,
    waiting=OutboxStatus.QUEUED,
    held=OutboxStatus.QUEUED,
    failed=OutboxStatus.FAILED,
    order_by=lambda table: (table.c.next_attempt_at, table.c.id),
)

_INSERT = insert(OutboxMessage.__table__)
_TABLE = OutboxMessage.__table__
# Per message: when its lease runs out, if this claim still holds it (None if not).
_HELD_UNTIL = select(_TABLE.c.next_attempt_at).where(
    _TABLE.c.id == bindparam("row"),
    _TABLE.c.claim == bindparam("token"),
    _TABLE.c.status == OutboxStatus.QUEUED,
)
# Core, in autocommit: the ORM's UPDATE and commit cost more than the write itself.
_MARK_SENT = LEASES.settle_statement(OutboxStatus.SENT, one=True, sent_at=bindparam("now"))

# What a row stands for, built when it is sent: None when the reason for it has gone.
Build = Callable[[Session, OutboxMessage], EmailMessage | None]


# What a refusal of the address itself (5xx at RCPT) is, told where returned mail is kept.
Refused = Callable[[Session, int, DeliveryError], None]


class Withheld(Exception):
    """A row's mail must not go (its address may not be mailed): skipped, saying why."""


def enqueue(
    session: Session,
    kind: MailKind,
    subscriber_id: int | None,
    to_address: str,
    payload: dict[str, object],
) -> None:
    """Queue a mail in the caller's transaction: it exists exactly when the change does."""
    session.connection().execute(
        _INSERT,
        {
            "kind": kind,
            "subscriber_id": subscriber_id,
            "to_address": to_address,
            "payload": payload,
        },
    )
    metrics.MAILS_QUEUED.labels(kind).inc()


def pending_count(session: Session) -> int:
    """How many messages wait to be sent, due now or later."""
    return (
        session.scalar(
            select(func.count(OutboxMessage.id)).where(OutboxMessage.status == OutboxStatus.QUEUED)
        )
        or 0
    )


def server_side(exc: DeliveryError) -> bool:
    """Whether a refusal is the mail server's (or its settings'), not the message's."""
    return isinstance(exc, ConnectionFailure) or exc.sender_refused or exc.code == 421


class OutboxRunner:
    """The worker's runner for transactional mail: one batch of due rows per step."""

    def __init__(
        self,
        transport: Transport,
        build: Build,
        links: Links,
        policy: Policy = POLICY,
        *,
        refused: Refused | None = None,
    ) -> None:
        self.transport = transport
        self.build = build
        self.links = links
        self.policy = policy
        self.refused = refused

    def step(self, session: Session, stop: threading.Event | None = None) -> int:
        """Claim and send one batch; return how many rows it claimed."""
        token = new_claim()
        ids = LEASES.claim(session, token, self.policy)
        if not ids:
            return 0
        rows = _load(session, ids)
        with autocommit(session) as marks:
            for position, row_id in enumerate(ids):
                if stop is not None and stop.is_set():
                    LEASES.release(session, ids[position:], token)
                    break
                row = rows.get(row_id)
                if row is None or not self._still_held(session, row_id, token):
                    continue  # sent, skipped, erased or taken over since the claim
                refused = self._send(session, marks, row, token)
                if refused is not None:
                    # The server is down, will not let us in, refuses our sender or is
                    # closing (421): not this message's fault, and the rest of the batch would
                    # fail the same way. Try again soon; an outage loses nothing.
                    log.warning("mail server refuses mail for now, batch put back: %s", refused)
                    LEASES.release(
                        session,
                        ids[position:],
                        token,
                        delay=self.policy.first_retry,
                        error=str(refused),
                    )
                    break
        return len(ids)

    def _still_held(self, session: Session, row_id: int, token: str) -> bool:
        """Whether this claim still holds the row, its lease renewed if half of it has gone.

        A read, not a write, for most messages: a worker that stalled past its lease finds
        out here that another took the row, and sends nothing. Ends the transaction, so what
        the build reads next is as it is now.
        """
        until = session.scalar(_HELD_UNTIL, {"row": row_id, "token": token})
        if until is None:
            session.commit()
            return False
        if until - utcnow() < self.policy.lease / 2:
            return LEASES.renew(session, [row_id], token, self.policy)
        session.commit()
        return True

    def _send(
        self, session: Session, marks: Connection, row: OutboxMessage, token: str
    ) -> DeliveryError | None:
        """Build and send one held row and record how it went; the server's refusal when it
        takes no mail for now (the row is left held for the caller to put back)."""
        row_id, attempts, to_address, kind = row.id, row.attempts, row.to_address, str(row.kind)
        settle = functools.partial(self._settle, session, row_id, token, kind)
        try:
            message = self.build(session, row)
        except Withheld as exc:
            settle(OutboxStatus.SKIPPED, str(exc))
            return None
        except Exception as exc:
            # A mail that cannot be built (bad data) must not stop the queue behind it.
            log.exception("mail %s cannot be composed", row_id)
            settle(OutboxStatus.FAILED, f"cannot compose: {exc}")
            return None
        if message is None:
            settle(OutboxStatus.SKIPPED, "nothing to send any more")
            return None
        try:
            self.transport.send(message, self.links.envelope_sender(OUTBOX, row_id))
        except DeliveryError as exc:
            if server_side(exc):
                return exc
            log.warning("mail %s to %s not sent: %s", row_id, to_address, exc)
            if exc.permanent:
                settle(OutboxStatus.FAILED, str(exc))
                if exc.recipient_refused and self.refused is not None:
                    self.refused(session, row_id, exc)
            else:
                LEASES.retry_or_fail(
                    session, row_id, token, self.policy, attempts, str(exc), OutboxStatus.FAILED
                )
            return None
        except Exception as exc:
            # Not the server's answer: a fault on our side of the connection, whose state is
            # now unknown. It is dropped, and the mail tried again later with back-off.
            log.exception("mail %s not sent", row_id)
            self.transport.close()
            error = f"{type(exc).__name__}: {exc}"
            LEASES.retry_or_fail(
                session, row_id, token, self.policy, attempts, error, OutboxStatus.FAILED
            )
            return None
        # Recorded right away, in a write of its own: a crash after this line cannot send it
        # again.
        marked = marks.execute(_MARK_SENT, {"row": row_id, "token": token, "now": utcnow()})
        if marked.rowcount:
            metrics.MAILS_SENT.labels(kind, str(OutboxStatus.SENT)).inc()
        return None

    @staticmethod
    def _settle(
        session: Session,
        row_id: int,
        token: str,
        kind: str,
        status: OutboxStatus,
        error: str | None,
        **values: object,
    ) -> None:
        if LEASES.settle(session, [row_id], token, status, error, **values):
            metrics.MAILS_SENT.labels(kind, str(status)).inc()


def _load(session: Session, ids: list[int]) -> dict[int, OutboxMessage]:
    """The claimed rows in one query, as objects of their own (no session keeps or expires
    them): each is what was queued, its claim and lease are checked apart before it goes."""
    found = session.execute(select(_TABLE).where(_TABLE.c.id.in_(ids))).mappings().all()
    session.commit()
    return {row["id"]: OutboxMessage(**row) for row in found}

"""The outbox: transactional mails queued in the database and sent by the worker."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from newsletter.mail import compose as mails
from newsletter.mail.transport import ConnectionFailure, DeliveryError, Transport
from newsletter.models import (
    MailKind,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    utcnow,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    """How the outbox worker paces itself."""

    batch_size: int = 50
    lease: timedelta = timedelta(minutes=5)
    poll_interval: float = 1.0
    max_attempts: int = 12
    first_retry: timedelta = timedelta(seconds=30)
    max_retry: timedelta = timedelta(hours=2)


_INSERT = insert(OutboxMessage.__table__)


def enqueue(
    session: Session,
    kind: MailKind,
    subscriber_id: int,
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


def retry_delay(attempts: int, settings: WorkerSettings) -> timedelta:
    """Exponential back-off: 30 s, 1 min, 2 min, … capped at two hours."""
    delay = settings.first_retry
    # Doubling stops at the cap: 2 ** attempts would overflow timedelta from attempt 43 on.
    for _ in range(attempts - 1):
        if delay >= settings.max_retry:
            break
        delay *= 2
    return min(delay, settings.max_retry)


def claim(session: Session, settings: WorkerSettings) -> list[int]:
    """Take up to a batch of due messages by pushing their time forward by the lease.

    One UPDATE … RETURNING: on SQLite it is a single short write transaction, on PostgreSQL
    the inner SELECT skips rows another worker holds, so two workers never share a row.
    """
    now = utcnow()
    due = (
        select(OutboxMessage.id)
        .where(OutboxMessage.status == OutboxStatus.QUEUED, OutboxMessage.next_attempt_at <= now)
        .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
        .limit(settings.batch_size)
    )
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    claimed = session.scalars(
        update(OutboxMessage)
        .where(OutboxMessage.id.in_(due.scalar_subquery()))
        .values(next_attempt_at=now + settings.lease, attempts=OutboxMessage.attempts + 1)
        .returning(OutboxMessage.id)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    return sorted(claimed)


def compose(session: Session, row: OutboxMessage) -> EmailMessage | None:
    """Build the mail a row stands for, or None when the reason for it has gone."""
    subscriber = session.get(Subscriber, row.subscriber_id) if row.subscriber_id else None
    if subscriber is None:
        return None
    if row.kind == MailKind.CONFIRMATION:
        by_id = {s.id: s for s in subscriber.subscriptions}
        pending = [
            (by_id[sid], str(nonce))
            for sid, nonce in row.payload.get("subscriptions", [])  # type: ignore[union-attr]
            if sid in by_id
            and by_id[sid].status == SubscriptionStatus.PENDING
            and by_id[sid].nonce == nonce
        ]
        return mails.confirmation(subscriber, pending, row.message_key) if pending else None
    if row.kind == MailKind.WELCOME:
        subscription = session.get(Subscription, row.payload.get("subscription"))
        if subscription is None or subscription.status != SubscriptionStatus.CONFIRMED:
            return None
        return mails.welcome(subscription, row.message_key)
    raise ValueError(f"unknown mail kind {row.kind!r}")


def deliver_batch(session: Session, transport: Transport, settings: WorkerSettings) -> int:
    """Claim and send one batch; return how many rows it handled."""
    ids = claim(session, settings)
    for row_id in ids:
        row = session.get(OutboxMessage, row_id)
        if row is None or row.status != OutboxStatus.QUEUED:
            continue
        try:
            message = compose(session, row)
        except Exception as exc:
            # A mail that cannot be built (bad data) must not stop the queue behind it.
            log.exception("mail %s cannot be composed", row.id)
            row.status = OutboxStatus.FAILED
            row.last_error = f"cannot compose: {exc}"[:2000]
            session.commit()
            continue
        if message is None:
            row.status = OutboxStatus.SKIPPED
            row.last_error = "nothing to send any more"
            session.commit()
            continue
        try:
            transport.send(message)
        except ConnectionFailure as exc:
            # The server is down or refuses us: the rest of the batch would fail the same way.
            log.warning("mail server unavailable, batch put back: %s", exc)
            for later in session.scalars(
                select(OutboxMessage).where(OutboxMessage.id.in_(ids[ids.index(row_id) :]))
            ):
                _record_failure(later, exc, settings)
            session.commit()
            break
        except DeliveryError as exc:
            _record_failure(row, exc, settings)
            log.warning("mail %s to %s not sent: %s", row.id, row.to_address, exc)
        else:
            row.status = OutboxStatus.SENT
            row.sent_at = utcnow()
            row.last_error = None
        # Recorded right away: a crash after this line cannot send it again.
        session.commit()
    return len(ids)


def _record_failure(row: OutboxMessage, exc: Exception, settings: WorkerSettings) -> None:
    row.last_error = str(exc)[:2000]
    if getattr(exc, "permanent", False) or row.attempts >= settings.max_attempts:
        row.status = OutboxStatus.FAILED
    else:
        row.next_attempt_at = utcnow() + retry_delay(row.attempts, settings)


def pending_count(session: Session) -> int:
    """How many messages wait to be sent, due now or later."""
    return (
        session.scalar(
            select(func.count(OutboxMessage.id)).where(OutboxMessage.status == OutboxStatus.QUEUED)
        )
        or 0
    )


def run(
    session_factory: Callable[[], Session],
    transport: Transport,
    settings: WorkerSettings = WorkerSettings(),
    *,
    drain: bool = False,
    stop: threading.Event | None = None,
) -> int:
    """Send queued mail until stopped; with drain, until nothing is due, then return."""
    stop = stop or threading.Event()
    sent = 0
    try:
        while not stop.is_set():
            session = session_factory()
            try:
                handled = deliver_batch(session, transport, settings)
            finally:
                session.close()
            sent += handled
            if handled:
                continue
            if drain:
                break
            # Idle: close the connection ourselves rather than have the server time it out.
            transport.close()
            stop.wait(settings.poll_interval)
    finally:
        transport.close()
    return sent


def stop_on_signals(stop: threading.Event) -> None:
    """Finish the message in hand, then exit, on SIGTERM or SIGINT."""

    def _handler(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping after the current message", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)

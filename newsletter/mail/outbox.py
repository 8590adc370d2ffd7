"""The outbox: transactional mails queued in the database and sent by the worker."""

from __future__ import annotations

import logging
import secrets
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from email import message_from_bytes
from email.message import EmailMessage
from typing import Protocol

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from newsletter import metrics
from newsletter.mail import compose as mails
from newsletter.mail.transport import ConnectionFailure, DeliveryError, Transport
from newsletter.models import (
    Digest,
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


class Backoff(Protocol):
    first_retry: timedelta
    max_retry: timedelta


def retry_delay(attempts: int, settings: Backoff) -> timedelta:
    """Exponential back-off: 30 s, 1 min, 2 min, … capped at two hours."""
    delay = settings.first_retry
    # Doubling stops at the cap: 2 ** attempts would overflow timedelta from attempt 43 on.
    for _ in range(attempts - 1):
        if delay >= settings.max_retry:
            break
        delay *= 2
    return min(delay, settings.max_retry)


def claim(session: Session, settings: WorkerSettings, token: str) -> list[int]:
    """Take up to a batch of due messages for one claim, leased for `settings.lease`.

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
        .values(
            next_attempt_at=now + settings.lease,
            attempts=OutboxMessage.attempts + 1,
            claim=token,
        )
        .returning(OutboxMessage.id)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    return sorted(claimed)


def _hold(session: Session, row_id: int, token: str, settings: WorkerSettings) -> bool:
    """Renew the lease of a row about to be sent; False when another claim has taken it."""
    renewed = session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.id == row_id,
            OutboxMessage.claim == token,
            OutboxMessage.status == OutboxStatus.QUEUED,
        )
        .values(next_attempt_at=utcnow() + settings.lease)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return renewed.rowcount == 1


def _release(session: Session, row_ids: list[int], token: str) -> None:
    """Give back claimed rows that were not tried: due again at once, the attempt not counted."""
    if row_ids:
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id.in_(row_ids), OutboxMessage.claim == token)
            .values(next_attempt_at=utcnow(), attempts=OutboxMessage.attempts - 1, claim=None)
            .execution_options(synchronize_session=False)
        )
        session.commit()


def compose(session: Session, row: OutboxMessage) -> EmailMessage | None:
    """Build the mail a row stands for, or None when the reason for it has gone."""
    if row.kind == MailKind.DIGEST_TEST:
        return _digest_test(session, row)
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


def _digest_test(session: Session, row: OutboxMessage) -> EmailMessage | None:
    """An editor's test copy of a digest, as a reader would get it, marked as a test."""
    # Imported here: most processes that queue mail (the import's checker among them) never
    # build a digest, and the inliner is a large library.
    from newsletter.mail.digest_mail import Content, PreparedDigest

    digest = session.get(Digest, row.payload.get("digest"))
    if digest is None:
        return None
    content = Content(digest.newsletter, f"[Test] {digest.subject}", digest.intro, digest.items)
    reader = session.scalar(
        select(Subscriber).where(Subscriber.email_key == row.to_address.lower())
    )
    # The tester's own links when they read the list; otherwise links that lead nowhere.
    subscriber_id, token_key = (reader.id, reader.token_key) if reader else (0, "test")
    data = PreparedDigest(content, row.message_key).message(
        0, row.to_address, subscriber_id, token_key
    )
    message = message_from_bytes(data, policy=mails.POLICY)
    assert isinstance(message, EmailMessage)
    return message


def deliver_batch(
    session: Session,
    transport: Transport,
    settings: WorkerSettings,
    stop: threading.Event | None = None,
) -> int:
    """Claim and send one batch; return how many rows it claimed."""
    token = secrets.token_hex(16)
    ids = claim(session, settings, token)
    for position, row_id in enumerate(ids):
        if stop is not None and stop.is_set():
            _release(session, ids[position:], token)
            break
        if not _hold(session, row_id, token, settings):
            continue  # sent, skipped or taken over since the claim
        row = session.get(OutboxMessage, row_id, populate_existing=True)
        assert row is not None
        try:
            message = compose(session, row)
        except Exception as exc:
            # A mail that cannot be built (bad data) must not stop the queue behind it.
            log.exception("mail %s cannot be composed", row.id)
            _finish(session, row, OutboxStatus.FAILED, f"cannot compose: {exc}")
            continue
        if message is None:
            _finish(session, row, OutboxStatus.SKIPPED, "nothing to send any more")
            continue
        try:
            transport.send(message)
        except DeliveryError as exc:
            if not server_side(exc):
                _failed(session, row, exc, settings)
                continue
            # The server is down, will not let us in, refuses our sender or is closing (421):
            # not this message's fault, and the rest of the batch would fail the same way.
            # Try again soon; an outage loses nothing.
            log.warning("mail server refuses mail for now, batch put back: %s", exc)
            _release(session, ids[position:], token)
            session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id.in_(ids[position:]))
                .values(next_attempt_at=utcnow() + settings.first_retry, last_error=str(exc)[:2000])
                .execution_options(synchronize_session=False)
            )
            session.commit()
            break
        else:
            # Recorded right away: a crash after this line cannot send it again.
            _finish(session, row, OutboxStatus.SENT, None)
    return len(ids)


def server_side(exc: DeliveryError) -> bool:
    """Whether a refusal is the mail server's (or its settings'), not the message's."""
    return isinstance(exc, ConnectionFailure) or exc.sender_refused or exc.code == 421


def _failed(
    session: Session, row: OutboxMessage, exc: DeliveryError, settings: WorkerSettings
) -> None:
    log.warning("mail %s to %s not sent: %s", row.id, row.to_address, exc)
    if exc.permanent or row.attempts >= settings.max_attempts:
        _finish(session, row, OutboxStatus.FAILED, str(exc))
    else:
        row.next_attempt_at = utcnow() + retry_delay(row.attempts, settings)
        row.last_error = str(exc)[:2000]
        row.claim = None
        session.commit()


def _finish(session: Session, row: OutboxMessage, status: OutboxStatus, error: str | None) -> None:
    metrics.mail_settled(row, status)
    row.status = status
    row.last_error = error[:2000] if error else None
    row.claim = None
    if status == OutboxStatus.SENT:
        row.sent_at = utcnow()
    session.commit()


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
    between_batches: Callable[[], bool] | None = None,
) -> int:
    """Send queued mail until stopped; with drain, until nothing is due, then return.

    `between_batches` is other work the worker does after each batch (import jobs); it
    returns whether it found any.
    """
    stop = stop or threading.Event()
    sent = 0
    try:
        while not stop.is_set():
            session = session_factory()
            try:
                handled = deliver_batch(session, transport, settings, stop)
            finally:
                session.close()
            sent += handled
            if between_batches is not None and between_batches():
                continue
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

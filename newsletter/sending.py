"""The digest sender: workers claim rows of the delivery ledger and send them.

A claim is one UPDATE … RETURNING over a batch of due rows (PostgreSQL: the inner SELECT
skips rows other workers hold, FOR UPDATE SKIP LOCKED; SQLite: one short write transaction),
which moves them to `sending` with a lease. Each row is marked sent in its own short
transaction as soon as the server has accepted its message, so a killed worker leaves at
most the message in flight unrecorded; its other rows come back when the lease runs out.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import current_app
from sqlalchemy import Connection, Row, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter import digests, metrics
from newsletter.mail.digest_mail import Content, PreparedDigest, Signer
from newsletter.mail.outbox import retry_delay, server_side
from newsletter.mail.transport import DeliveryError, Transport
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Digest,
    DigestStatus,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
    utcnow,
)
from newsletter.subscriptions import address_hash

log = logging.getLogger(__name__)

DS = DeliveryStatus


@dataclass(frozen=True)
class SendSettings:
    """How a worker paces digest sending."""

    batch_size: int = 200
    lease: timedelta = timedelta(minutes=5)
    max_attempts: int = 8
    first_retry: timedelta = timedelta(minutes=1)
    max_retry: timedelta = timedelta(hours=2)
    # Messages a second for this worker; None sends as fast as the server takes them.
    rate: float | None = None
    # How often a worker in the middle of a batch looks for a pause or a cancel.
    status_every: float = 1.0


# The statement a worker runs per message, built once; Core, not ORM: the ORM's UPDATE
# would look for loaded objects to refresh, three times the cost of the write itself.
_LEDGER = Delivery.__table__
_MARK_SENT = (
    update(_LEDGER)
    .where(_LEDGER.c.id == bindparam("row"), _LEDGER.c.claim == bindparam("token"))
    .values(status=DS.SENT, sent_at=bindparam("now"), claim=None, last_error=None)
)
_RECIPIENTS = (
    select(
        Delivery.id,
        Subscription.status,
        Subscriber.id,
        Subscriber.email,
        Subscriber.token_key,
        Delivery.attempts,
    )
    .join(Subscription, Subscription.id == Delivery.subscription_id)
    .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
    .where(Delivery.id.in_(bindparam("rows", expanding=True)))
    .order_by(Delivery.id)
)


class Throttle:
    """Spaces messages to at most `rate` a second (no bursts beyond one message)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next = 0.0

    def wait(self, stop: threading.Event | None) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if self.next > now:
            if stop is not None:
                stop.wait(self.next - now)
            else:
                time.sleep(self.next - now)
            now = time.monotonic()
        self.next = max(self.next, now) + self.interval


class DigestSender:
    """Works off the ledger of every digest being sent; one per worker process."""

    def __init__(
        self,
        transport: Transport,
        settings: SendSettings | None = None,
        *,
        signer: Signer | None = None,
    ) -> None:
        self.transport = transport
        self.settings = settings or SendSettings(rate=current_app.config.get("SEND_RATE"))
        self.signer = signer
        self.throttle = Throttle(self.settings.rate)
        self._prepared: dict[int, PreparedDigest] = {}
        # With DKIM, the next messages are built and signed in threads while this one is on
        # the wire: OpenSSL's RSA lets go of the GIL, and a signature costs as much as a send.
        self._pool = ThreadPoolExecutor(max_workers=2) if signer is not None else None

    def prepared(self, digest: Digest) -> PreparedDigest:
        """The digest rendered once for this worker; it does not change while it is sent."""
        found = self._prepared.get(digest.id)
        if found is None:
            content = Content(digest.newsletter, digest.subject, digest.intro, digest.items)
            found = PreparedDigest(content, digest.message_key, signer=self.signer)
            # Finished digests are not needed again; keep the memory of a few.
            if len(self._prepared) > 8:
                self._prepared.clear()
            self._prepared[digest.id] = found
        return found

    def step(
        self, session: Session, stop: threading.Event | None = None, only: int | None = None
    ) -> int:
        """Start due scheduled digests, then claim and send one batch; rows handled."""
        digests.start_due(session)
        query = select(Digest.id).where(Digest.status == DigestStatus.SENDING).order_by(Digest.id)
        if only is not None:
            query = query.where(Digest.id == only)
        for digest_id in session.scalars(query).all():
            handled = self.send_batch(session, digest_id, stop)
            if handled:
                return handled
            digests.finish_if_done(session, digest_id)
        return 0

    def claim(self, session: Session, digest_id: int, token: str) -> list[int]:
        """Take up to a batch of the digest's due rows for one claim, with a lease."""
        now = utcnow()
        size = self.settings.batch_size
        if self.settings.rate:
            # A throttled batch must be sent well within its lease.
            lease_seconds = self.settings.lease.total_seconds()
            size = max(1, min(size, int(self.settings.rate * lease_seconds / 2)))
        due = (
            select(Delivery.id)
            .where(
                Delivery.digest_id == digest_id,
                Delivery.status.in_((DS.QUEUED, DS.SENDING)),
                Delivery.next_attempt_at <= now,
            )
            .order_by(Delivery.id)
            .limit(size)
        )
        if session.get_bind().dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True)
        claimed = session.scalars(
            update(Delivery)
            .where(Delivery.id.in_(due.scalar_subquery()))
            .values(
                status=DS.SENDING,
                claim=token,
                next_attempt_at=now + self.settings.lease,
                attempts=Delivery.attempts + 1,
            )
            .returning(Delivery.id)
            .execution_options(synchronize_session=False)
        ).all()
        session.commit()
        return sorted(claimed)

    def send_batch(
        self, session: Session, digest_id: int, stop: threading.Event | None = None
    ) -> int:
        """Claim one batch of a digest and send it; returns how many rows it claimed."""
        token = secrets.token_hex(16)
        ids = self.claim(session, digest_id, token)
        if not ids:
            return 0
        digest = session.get(Digest, digest_id, populate_existing=True)
        assert digest is not None
        prepared = self.prepared(digest)
        recipients = session.execute(_RECIPIENTS, {"rows": ids}).all()
        session.commit()
        claimed_at = checked_at = time.monotonic()
        renew_after = self.settings.lease.total_seconds() / 2
        left = [row[0] for row in recipients]
        # Rows whose subscription went (erased) between claim and now: nothing to send.
        gone = sorted(set(ids) - set(left))
        if gone:
            self._settle(session, gone, token, DS.SKIPPED, "reader erased")
        ahead = _Ahead(recipients, prepared, self._pool)
        with _marks_connection(session) as marks:
            for position, (
                row_id,
                status,
                subscriber_id,
                address,
                _token_key,
                attempts,
            ) in enumerate(recipients):
                if status == SubscriptionStatus.CONFIRMED:
                    # Wait for the throttle first: what is checked next (a pause, the lease)
                    # must hold when the message goes, however long the wait was.
                    self.throttle.wait(stop)
                now_mono = time.monotonic()
                if stop is not None and stop.is_set():
                    self._release(session, left[position:], token)
                    break
                if now_mono - checked_at >= self.settings.status_every:
                    checked_at = now_mono
                    current = session.scalar(select(Digest.status).where(Digest.id == digest_id))
                    session.commit()
                    if current != DigestStatus.SENDING:
                        # Paused: the rows go back. Cancelled: the cancel has skipped them.
                        self._release(session, left[position:], token)
                        break
                if now_mono - claimed_at >= renew_after:
                    claimed_at = now_mono
                    if not self._renew(session, left[position:], token):
                        # Stalled past the lease, or cancelled: rows this worker no longer
                        # holds may be on their way from another worker, so stop here.
                        self._release(session, left[position:], token)
                        break
                if status != SubscriptionStatus.CONFIRMED:
                    self._settle(session, [row_id], token, DS.SKIPPED, f"reader {status}")
                    continue
                try:
                    data = ahead.get(position)
                except Exception as exc:
                    # One reader's bad data (an address that cannot be a header) fails alone.
                    log.warning(
                        "digest %s: mail to delivery %s cannot be built: %s", digest_id, row_id, exc
                    )
                    self._settle(session, [row_id], token, DS.FAILED, f"cannot build: {exc}")
                    continue
                try:
                    self.transport.send_raw(prepared.sender, [prepared.recipient(address)], data)
                except DeliveryError as exc:
                    # The server is away, refuses our sender, or is shutting down (421): not
                    # this reader's doing. The rest of the batch waits; nothing is counted.
                    if server_side(exc):
                        log.warning("digest %s: batch put back, mail server: %s", digest_id, exc)
                        self._release(
                            session,
                            left[position:],
                            token,
                            delay=self.settings.first_retry,
                            error=str(exc),
                        )
                        break
                    self._failed(session, row_id, token, attempts, subscriber_id, address, exc)
                    continue
                # Recorded at once: a crash after this line does not send it again.
                marks.execute(_MARK_SENT, {"row": row_id, "token": token, "now": utcnow()})
                metrics.digest_sent()
        # Cancelled while this batch went: the figures the cancel kept miss what was sent since.
        current = session.scalar(select(Digest.status).where(Digest.id == digest_id))
        if current == DigestStatus.CANCELLED:
            digests.recount(session, digest_id)
        session.commit()
        return len(ids)

    def _failed(
        self,
        session: Session,
        row_id: int,
        token: str,
        attempts: int,
        subscriber_id: int,
        address: str,
        exc: DeliveryError,
    ) -> None:
        log.warning("digest delivery %s not sent: %s", row_id, exc)
        if exc.permanent:
            self._settle(session, [row_id], token, DS.FAILED, str(exc))
            if exc.recipient_refused:
                suppress_bounced(session, subscriber_id, address)
            return
        if attempts >= self.settings.max_attempts:
            self._settle(session, [row_id], token, DS.FAILED, f"gave up: {exc}")
            return
        self._release(
            session,
            [row_id],
            token,
            delay=retry_delay(attempts, self.settings),
            error=str(exc),
            count_attempt=True,
        )

    def _settle(
        self, session: Session, rows: list[int], token: str, status: DeliveryStatus, error: str
    ) -> None:
        if rows:
            metrics.MAILS_SENT.labels("digest", status).inc(len(rows))
            session.execute(
                update(Delivery)
                .where(Delivery.id.in_(rows), Delivery.claim == token)
                .values(status=status, claim=None, last_error=error[:2000])
                .execution_options(synchronize_session=False)
            )
            session.commit()

    def _release(
        self,
        session: Session,
        rows: list[int],
        token: str,
        *,
        delay: timedelta | None = None,
        error: str | None = None,
        count_attempt: bool = False,
    ) -> None:
        """Give rows back to the queue, due after `delay`; untried rows do not count a try."""
        if not rows:
            return
        values: dict[str, object] = {
            "status": DS.QUEUED,
            "claim": None,
            "next_attempt_at": utcnow() + (delay or timedelta(0)),
        }
        if not count_attempt:
            values["attempts"] = Delivery.attempts - 1
        if error is not None:
            values["last_error"] = error[:2000]
        session.execute(
            update(Delivery)
            # Rows a cancel skipped stay skipped.
            .where(Delivery.id.in_(rows), Delivery.claim == token, Delivery.status == DS.SENDING)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        session.commit()

    def _renew(self, session: Session, rows: list[int], token: str) -> bool:
        """Extend the lease of rows not yet sent; False when this worker no longer holds all."""
        renewed = session.execute(
            update(Delivery)
            .where(Delivery.id.in_(rows), Delivery.claim == token, Delivery.status == DS.SENDING)
            .values(next_attempt_at=utcnow() + self.settings.lease)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        return renewed.rowcount == len(rows)


@contextmanager
def _marks_connection(session: Session) -> Iterator[Connection]:
    """The connection that marks rows sent: one statement, one transaction, per message.

    Of its own, because a Session's bookkeeping costs more than the write itself. In
    autocommit, so a mark is one round trip. On PostgreSQL without waiting for the WAL to
    reach the disk (synchronous_commit off, as SQLite's synchronous=NORMAL in WAL mode): a
    worker that dies loses no mark; only a crash of the database machine itself can forget
    the last fraction of a second of them, and those readers get a second copy.
    """
    with session.get_bind().connect() as conn:
        marks = conn.execution_options(isolation_level="AUTOCOMMIT")
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            marks.exec_driver_sql("SET synchronous_commit TO off")
        try:
            yield marks
        finally:
            if postgres and not conn.invalidated:
                marks.exec_driver_sql("RESET synchronous_commit")


class _Ahead:
    """Each reader's message of a batch, built (and signed) a few readers ahead in a pool."""

    window = 4

    def __init__(
        self,
        recipients: Sequence[Row[Any]],
        prepared: PreparedDigest,
        pool: ThreadPoolExecutor | None,
    ) -> None:
        self.recipients = recipients
        self.prepared = prepared
        self.pool = pool
        self.futures: dict[int, Future[bytes]] = {}

    def _build(self, position: int) -> bytes:
        row_id, _, subscriber_id, address, token_key, _ = self.recipients[position]
        return self.prepared.message(row_id, address, subscriber_id, token_key)

    def get(self, position: int) -> bytes:
        """The message for the reader at `position`; raises what building it raised."""
        if self.pool is None:
            return self._build(position)
        for upcoming in range(position, min(position + self.window, len(self.recipients))):
            confirmed = self.recipients[upcoming][1] == SubscriptionStatus.CONFIRMED
            if upcoming not in self.futures and confirmed:
                self.futures[upcoming] = self.pool.submit(self._build, upcoming)
        return self.futures.pop(position).result()


def suppress_bounced(session: Session, subscriber_id: int, address: str) -> None:
    """A hard bounce: never mail this address again, from any list; commits."""
    digest = address_hash(address.lower())
    if session.scalar(select(Suppression.id).where(Suppression.email_hash == digest)) is None:
        try:
            with session.begin_nested():
                session.add(Suppression(email_hash=digest, reason=SuppressionReason.BOUNCED))
        except IntegrityError:
            pass  # another worker recorded the same bounce a moment ago
    session.execute(
        update(Subscription)
        .where(
            Subscription.subscriber_id == subscriber_id,
            Subscription.status.in_((SubscriptionStatus.PENDING, SubscriptionStatus.CONFIRMED)),
        )
        .values(status=SubscriptionStatus.BOUNCED)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def run_digests(
    session_factory: Callable[[], Session],
    sender: DigestSender,
    stop: threading.Event | None = None,
) -> bool:
    """One step of digest work for the worker loop; True when it sent or claimed anything."""
    session = session_factory()
    try:
        return sender.step(session, stop) > 0
    finally:
        session.close()

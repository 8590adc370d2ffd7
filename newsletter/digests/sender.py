"""The digest sender: the worker's runner that works off the ledger of every digest sending.

A worker claims a batch of a digest's due rows with a lease (`ledger.claim`), builds each
reader's message from the digest rendered once (`compose.PreparedDigest`), sends it over
its kept-open SMTP connection, and marks the row sent in its own short transaction as soon
as the server has accepted it: a killed worker leaves at most the message in flight
unrecorded, and its other rows come back when the lease runs out.
"""

from __future__ import annotations

import itertools
import logging
import selectors
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg import pq
from sqlalchemy import Connection, case, select
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.orm import Session

from newsletter import archive, frequencies, languages, metrics
from newsletter.bounces import ingest
from newsletter.bounces.parse import status_code
from newsletter.digests import ledger, states
from newsletter.digests.compose import (
    BodySigner,
    CombinedContent,
    Content,
    PreparedDigest,
    sections,
)
from newsletter.digests.ledger import Recipient
from newsletter.leases import Policy, autocommit, new_claim
from newsletter.links import DELIVERY, Links, Reader
from newsletter.mail.outbox import server_side
from newsletter.mail.transport import (
    DeliveryError,
    Envelope,
    SMTPTransport,
    TemporaryFailure,
    Transport,
)
from newsletter.models import (
    BounceKind,
    DeliveryStatus,
    Digest,
    DigestStatus,
    SubscriptionStatus,
    utcnow,
)

log = logging.getLogger(__name__)


class Clock:
    """The sender's time: the wall clock for leases, a monotonic one for pacing."""

    def now(self) -> datetime:
        return utcnow()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float, stop: threading.Event | None) -> None:
        if stop is not None:
            stop.wait(seconds)
        else:
            time.sleep(seconds)


class Throttle:
    """Spaces messages to at most `rate` a second (no bursts beyond one message)."""

    def __init__(self, rate: float | None, clock: Clock | None = None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.clock = clock or Clock()
        self.next = 0.0

    def wait(self, stop: threading.Event | None) -> None:
        if not self.interval:
            return
        now = self.clock.monotonic()
        if self.next > now:
            self.clock.sleep(self.next - now, stop)
            now = self.clock.monotonic()
        self.next = max(self.next, now) + self.interval


@dataclass(frozen=True)
class _Kind:
    """What the sender needs to know of a digest besides its ledger: its list, or the
    frequency and lists of a combined edition. None of it changes while it is sent."""

    newsletter_id: int | None
    frequency: str = ""
    lists: tuple[int, ...] = ()

    @property
    def combined(self) -> bool:
        return self.newsletter_id is None


# The set of lists of every reader of a list's own digest: its mail is the same for all.
_ONE_LIST: frozenset[int] = frozenset()


@dataclass
class _Claimed:
    """One claimed batch of a digest's ledger, while a worker sends it."""

    digest_id: int
    kind: _Kind
    token: str
    recipients: list[Recipient]
    claimed_at: float  # monotonic: when the lease was last taken or renewed
    checked_at: float  # monotonic: when the digest's status was last read

    def rest(self, position: int) -> list[int]:
        """The rows of the batch from `position` on."""
        return [r.delivery_id for r in self.recipients[position:]]

    def refresh(self, session: Session, position: int) -> None:
        """Read again the subscription statuses of the readers from `position` on."""
        if self.kind.combined:
            self._refresh_combined(session, position)
            return
        now = ledger.statuses(session, self.rest(position))
        session.commit()
        for at in range(position, len(self.recipients)):
            recipient = self.recipients[at]
            self.recipients[at] = recipient._replace(status=now.get(recipient.delivery_id))

    def _refresh_combined(self, session: Session, position: int) -> None:
        """A combined reader who left every list of their mail since the claim is skipped;
        the mail of one who still follows some of them stays as it was prepared."""
        readers = [r.subscriber_id for r in self.recipients[position:]]
        follows = ledger.reader_lists(session, self.kind.frequency, self.kind.lists, readers)
        session.commit()
        for at in range(position, len(self.recipients)):
            recipient = self.recipients[at]
            if recipient.subscriber_id not in follows:
                left = SubscriptionStatus.UNSUBSCRIBED
                self.recipients[at] = recipient._replace(status=left)


class DigestSender:
    """Works off the ledger of every digest being sent; one per worker process."""

    def __init__(
        self,
        transport: Transport,
        links: Links,
        *,
        policy: Policy = ledger.POLICY,
        rate: float | None = None,
        status_every: float = 1.0,
        signer: BodySigner | None = None,
        clock: Clock | None = None,
        rules: ingest.Rules | None = None,
    ) -> None:
        self.transport = transport
        # When refusals at the door add up to a suppression, as for returned mail.
        self.rules = rules or ingest.Rules()
        self.links = links
        self.policy = policy
        # How often a worker in the middle of a batch looks for a pause or a cancel.
        self.status_every = status_every
        self.signer = signer
        self.clock = clock or Clock()
        self.throttle = Throttle(rate, self.clock)
        self.batch_size = policy.batch_size
        if rate:
            # A throttled batch must be sent well within its lease.
            lease_seconds = policy.lease.total_seconds()
            self.batch_size = max(1, min(policy.batch_size, int(rate * lease_seconds / 2)))
        self._prepared: dict[tuple[int, frozenset[int], str], PreparedDigest] = {}
        self._kinds: dict[int, _Kind] = {}
        # With DKIM, the next messages are built and signed in threads while this one is on
        # the wire: OpenSSL's RSA lets go of the GIL, and a signature costs as much as a send.
        self._pool = ThreadPoolExecutor(max_workers=2) if signer is not None else None

    def prepared(
        self, digest: Digest, locale: str | None = None, lists: frozenset[int] = _ONE_LIST
    ) -> PreparedDigest:
        """The digest rendered once per language (and, for a combined edition, per set of
        lists its readers follow) for this worker; it does not change while it is sent."""
        key = (digest.id, lists, languages.known(locale) or languages.DEFAULT)
        found = self._prepared.get(key)
        if found is None:
            found = PreparedDigest(
                _content(digest, lists),
                digest.message_key,
                self.links,
                signer=self.signer,
                locale=key[2],
            )
            # Finished digests are not needed again; keep the memory of a few.
            if len(self._prepared) > 8 * 16 * len(languages.LANGUAGES):
                self._prepared.clear()
            self._prepared[key] = found
        return found

    def kind(self, session: Session, digest_id: int) -> _Kind:
        """The digest's list, or its combined edition's frequency and lists; read once."""
        found = self._kinds.get(digest_id)
        if found is None:
            digest = session.get(Digest, digest_id)
            assert digest is not None
            lists = tuple(n.id for n in digest.lists)
            found = _Kind(digest.newsletter_id, digest.frequency or "", lists)
            if len(self._kinds) > 1000:
                self._kinds.clear()
            self._kinds[digest_id] = found
        return found

    def step(
        self, session: Session, stop: threading.Event | None = None, only: int | None = None
    ) -> int:
        """Start due scheduled digests, then claim and send one batch; rows handled."""
        states.start_due(session)
        # Breaking alerts first: they must not wait behind a long edition.
        first = case((Digest.frequency == frequencies.ALERT, 0), else_=1)
        query = (
            select(Digest.id)
            .where(Digest.status == DigestStatus.SENDING)
            .order_by(first, Digest.id)
        )
        if only is not None:
            query = query.where(Digest.id == only)
        for digest_id in session.scalars(query).all():
            handled = self.send_batch(session, digest_id, stop)
            if handled:
                return handled
            states.finish_if_done(session, digest_id)
        return 0

    def claim(self, session: Session, digest_id: int, token: str) -> list[int]:
        """Take up to a batch of the digest's due rows for one claim, with a lease."""
        return ledger.claim(
            session, digest_id, token, self.policy, size=self.batch_size, now=self.clock.now()
        )

    def send_batch(
        self, session: Session, digest_id: int, stop: threading.Event | None = None
    ) -> int:
        """Claim one batch of a digest and send it; returns how many rows it claimed."""
        token = new_claim()
        ids = self.claim(session, digest_id, token)
        if not ids:
            return 0
        kind = self.kind(session, digest_id)
        if kind.combined:
            recipients = ledger.combined_recipients(session, ids, kind.frequency, kind.lists)
        else:
            recipients = ledger.recipients(session, ids)
        try:
            # Rendered here, not in the signing threads: rendering needs the app context, and
            # the digest row, expired at every commit, would be loaded again through the session.
            wanted = {(r.lists, r.locale) for r in recipients if r.lists or not kind.combined}
            by_key = self._prepared_for(session, digest_id, wanted)
        except Exception as exc:
            # Not one reader's mail can be built (settings that cannot go into a header):
            # every row fails with the reason, and the digest finishes instead of hanging.
            log.exception("digest %s cannot be built", digest_id)
            self._cannot_build(session, digest_id, ids, token, exc)
            return len(ids)
        session.commit()
        # Rows whose subscription went (erased) between the claim and now: nothing to send.
        gone = sorted(set(ids) - {r.delivery_id for r in recipients})
        _settle(session, gone, token, DeliveryStatus.SKIPPED, "reader erased")
        started = self.clock.monotonic()
        batch = _Claimed(
            digest_id,
            kind,
            token,
            recipients,
            claimed_at=started,
            checked_at=started,
        )
        # Over SMTP each message is built as it goes after DATA, most of it stuffed once.
        smtp = isinstance(self.transport, SMTPTransport)
        ahead = _Ahead(recipients, by_key, self.links, self._pool, stuffed=smtp)
        with autocommit(session) as conn, _Marks(conn) as marks:
            for position in range(len(recipients)):
                if recipients[position].status == SubscriptionStatus.CONFIRMED:
                    # Wait for the throttle first: what is checked next (a pause, the lease)
                    # must hold when the message goes, however long the wait was.
                    self.throttle.wait(stop)
                if not self._still_ours(session, batch, position, stop):
                    break
                # As read again just now, if it was: a reader may have left since the claim.
                recipient = recipients[position]
                if recipient.status != SubscriptionStatus.CONFIRMED:
                    why = f"reader {recipient.status or 'erased'}"
                    _settle(session, [recipient.delivery_id], token, DeliveryStatus.SKIPPED, why)
                    continue
                if not self._send(session, marks, batch, position, ahead):
                    break
        # Cancelled while this batch went: the figures the cancel kept miss what was sent since.
        # (Every mark of the batch has been made: leaving _Marks waits for the last one.)
        if (
            session.scalar(select(Digest.status).where(Digest.id == digest_id))
            == DigestStatus.CANCELLED
        ):
            states.recount(session, digest_id)
        session.commit()
        return len(ids)

    def _prepared_for(
        self, session: Session, digest_id: int, wanted: set[tuple[frozenset[int], str | None]]
    ) -> dict[tuple[frozenset[int], str | None], PreparedDigest]:
        """The digest prepared for each of these (set of lists, language); the digest is read
        from the database only when one of them is not prepared yet."""
        keys = {
            want: (digest_id, want[0], languages.known(want[1]) or languages.DEFAULT)
            for want in wanted
        }
        if all(key in self._prepared for key in keys.values()):
            return {want: self._prepared[key] for want, key in keys.items()}
        digest = session.get(Digest, digest_id, populate_existing=True)
        assert digest is not None
        return {want: self.prepared(digest, want[1], want[0]) for want in wanted}

    def _cannot_build(
        self, session: Session, digest_id: int, ids: list[int], token: str, exc: Exception
    ) -> None:
        why = f"cannot build: {exc}"
        _settle(session, ids, token, DeliveryStatus.FAILED, why)
        digest = session.get(Digest, digest_id)
        assert digest is not None
        digest.error = f"The mail of this digest cannot be built: {exc}"[:2000]
        session.commit()

    def _still_ours(
        self, session: Session, batch: _Claimed, position: int, stop: threading.Event | None
    ) -> bool:
        """Whether to go on with the batch at `position`; if not, its rest is put back.

        Not when the worker is stopping, the digest was paused or cancelled (looked at every
        `status_every` seconds), or the lease could not be renewed (renewed halfway through).
        Along with the digest's status, the rest of the batch's readers are read again: one
        who unsubscribed, bounced or complained since the claim is skipped, not mailed.
        """
        now = self.clock.monotonic()
        go_on = stop is None or not stop.is_set()
        if go_on and now - batch.checked_at >= self.status_every:
            batch.checked_at = now
            status = session.scalar(select(Digest.status).where(Digest.id == batch.digest_id))
            session.commit()
            # Paused: the rows go back. Cancelled: the cancel has skipped them.
            go_on = status == DigestStatus.SENDING
            if go_on:
                batch.refresh(session, position)
        if go_on and now - batch.claimed_at >= self.policy.lease.total_seconds() / 2:
            batch.claimed_at = now
            # Stalled past the lease, or cancelled: rows this worker no longer holds may be
            # on their way from another worker, so stop here.
            go_on = ledger.LEASES.renew(
                session, batch.rest(position), batch.token, self.policy, now=self.clock.now()
            )
        if not go_on:
            ledger.LEASES.release(session, batch.rest(position), batch.token, now=self.clock.now())
        return go_on

    def _send(
        self,
        session: Session,
        marks: _Marks,
        batch: _Claimed,
        position: int,
        ahead: _Ahead,
    ) -> bool:
        """Send one reader's message and record it; False when the rest of the batch must wait."""
        recipient = batch.recipients[position]
        row = recipient.delivery_id
        try:
            data = ahead.get(position)
        except Exception as exc:
            # One reader's bad data (an address that cannot be a header) fails alone.
            log.warning(
                "digest %s: mail to delivery %s cannot be built: %s", batch.digest_id, row, exc
            )
            _settle(session, [row], batch.token, DeliveryStatus.FAILED, f"cannot build: {exc}")
            return True
        try:
            sender, to = ahead.envelope(position)
            if isinstance(self.transport, SMTPTransport):
                # The last reader's mark is waited for only once the server has answered this
                # message's envelope, just before its body goes: the two round trips overlap.
                # The next reader's envelope goes with this body, so theirs is answered early.
                then = ahead.next_envelope(position)
                self.transport.send_raw(
                    sender, to, data, before_data=marks.wait, then=then, stuffed=True
                )
            else:
                marks.wait()
                self.transport.send_raw(sender, to, data)
        except _MarkFailed:
            raise
        except DeliveryError as exc:
            if server_side(exc):
                # The server is away, refuses our sender, or is shutting down (421): not this
                # reader's doing. The rest of the batch waits; nothing is counted.
                log.warning("digest %s: batch put back, mail server: %s", batch.digest_id, exc)
                ledger.LEASES.release(
                    session,
                    batch.rest(position),
                    batch.token,
                    delay=self.policy.first_retry,
                    error=str(exc),
                    now=self.clock.now(),
                )
                return False
            self._failed(session, batch, recipient, exc)
            return True
        except Exception as exc:
            # A fault on our side of the connection, whose state is now unknown: it is
            # dropped, and this reader's message tried again later with back-off.
            log.exception("digest %s: delivery %s not sent", batch.digest_id, row)
            self.transport.close()
            self._failed(
                session, batch, recipient, TemporaryFailure(f"{type(exc).__name__}: {exc}")
            )
            return True
        # Recorded at once, and before the next message can be accepted: a worker killed at any
        # moment leaves at most one accepted message unmarked, which goes again.
        marks.mark(row, batch.token, self.clock.now())
        metrics.digest_sent()
        return True

    def _failed(
        self, session: Session, batch: _Claimed, recipient: Recipient, exc: DeliveryError
    ) -> None:
        row, token = recipient.delivery_id, batch.token
        log.warning("digest delivery %s not sent: %s", row, exc)
        if exc.permanent:
            _settle(session, [row], token, DeliveryStatus.FAILED, str(exc))
            if exc.recipient_refused:
                # A hard bounce at the door: kept as one, and the address never mailed again.
                target = ingest.Target(
                    recipient.address.lower(),
                    recipient.subscriber_id,
                    newsletter_id=batch.kind.newsletter_id,
                    digest_id=batch.digest_id,
                    delivery_id=row,
                )
                text = str(exc)
                hard = ingest.Returned(target, BounceKind.HARD, "smtp", status_code(text), text)
                ingest.record(session, hard, self.rules)
                session.commit()
            return
        ledger.LEASES.retry_or_fail(
            session,
            row,
            token,
            self.policy,
            recipient.attempts,
            str(exc),
            DeliveryStatus.FAILED,
            gave_up=f"gave up: {exc}",
        )


def _content(digest: Digest, lists: frozenset[int]) -> Content | CombinedContent:
    """What the digest says; of a combined edition, to the readers of these of its lists."""
    if digest.newsletter is not None:
        return Content(
            digest.newsletter,
            digest.subject,
            digest.intro,
            digest.items,
            archive.mail_path(digest),
        )
    followed = [n for n in digest.lists if n.id in lists]
    return CombinedContent(
        digest.frequency or "",
        digest.subject,
        digest.intro,
        sections(followed, digest.items),
    )


def _settle(
    session: Session, rows: Sequence[int], token: str, status: DeliveryStatus, error: str
) -> None:
    """Give rows their final status (skipped, failed) if this claim holds them; counted."""
    settled = ledger.LEASES.settle(session, rows, token, status, error)
    if settled:
        metrics.MAILS_SENT.labels("digest", str(status)).inc(settled)


class _MarkFailed(Exception):
    """Marking a row sent failed: the batch stops, as when the database goes away."""


class _Marks:
    """Marks rows sent, each in its own transaction, one at a time and in order.

    On PostgreSQL a mark is a round trip. It goes out at once, from this thread,
    without waiting for the answer: the worker builds the next message and the mail server
    answers its envelope while the database commits the mark. `wait` returns once the mark
    has been committed; the sender waits before the next message's body goes, so the server
    never accepts a message while an earlier one is unmarked. On SQLite, a write to a local
    file, each mark is made at once.

    Sent without waiting through the driver's connection itself (libpq's asynchronous
    calls, a prepared statement): a thread of its own for the round trip could only start
    it when the sender let go of the interpreter, that is once the next envelope was on
    its way, and the two threads handed the interpreter to each other at every mail.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        # Other drivers (none configured here) would mark synchronously, as on SQLite.
        self.overlapped = conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg"
        self.waiting = False
        if self.overlapped:
            self.pgconn = conn.connection.driver_connection.pgconn  # type: ignore[union-attr]
            self.name = f"newsletter_mark_{next(_MARK_NAMES)}".encode()
            self._call(lambda: _checked(self.pgconn.prepare(self.name, _MARK_SQL)))
            self.selector = selectors.DefaultSelector()
            self.selector.register(self.pgconn.socket, selectors.EVENT_READ)

    def mark(self, row: int, token: str, now: datetime) -> None:
        """Mark the row sent; on PostgreSQL, sent without waiting for the answer."""
        self.wait()
        if not self.overlapped:
            self.conn.execute(ledger.MARK_SENT, {"row": row, "token": token, "now": now})
            return
        params = _mark_params(row, token, now)
        self._call(lambda: self.pgconn.send_query_prepared(self.name, params))
        self.waiting = True

    def wait(self) -> None:
        """Return once every mark made so far is committed; raises `_MarkFailed` if one failed."""
        if self.waiting:
            self.waiting = False
            self._call(self._answer)

    def _answer(self) -> None:
        """Read the answer to the mark in flight (waiting for it) and check it."""
        pgconn = self.pgconn
        pgconn.consume_input()
        while pgconn.is_busy():
            self.selector.select()
            pgconn.consume_input()
        failed = None
        while (result := pgconn.get_result()) is not None:
            try:
                _checked(result)
            except psycopg.DatabaseError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed

    def _call(self, call: Callable[[], object]) -> None:
        try:
            call()
        except (psycopg.Error, OSError) as exc:
            # The connection's state is unknown: it does not go back to the pool.
            self.conn.invalidate()
            raise _MarkFailed(f"{type(exc).__name__}: {exc}") from exc

    def __enter__(self) -> _Marks:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # The last mark is waited for even when the batch ends with an error: the connection
        # goes back to the pool only once nothing is in flight on it.
        if not self.overlapped:
            return
        try:
            self.wait()
            if not self.conn.invalidated:
                self._call(lambda: _checked(self.pgconn.exec_(b"DEALLOCATE " + self.name)))
        except _MarkFailed:
            if exc_info[0] is None:
                raise
        finally:
            self.selector.close()


# The mark as the database server's prepared statement: its text, and its parameters in order.
_MARK = ledger.MARK_SENT.compile(dialect=psycopg_dialect(paramstyle="numeric_dollar"))
_MARK_SQL = str(_MARK).encode()
_MARK_ORDER = tuple(_MARK.positiontup or ())
# The values that are the same for every mark (its status, no claim, no error), as text.
_MARK_FIXED = [
    None if value is None else str(value).encode()
    for value in map(_MARK.construct_params({"row": 0, "token": "", "now": None}).get, _MARK_ORDER)
]


# Where the values that change from mark to mark go; each is named once in the statement.
assert all(_MARK_ORDER.count(name) == 1 for name in ("row", "token", "now")), _MARK_ORDER
_ROW, _TOKEN, _NOW = (_MARK_ORDER.index(name) for name in ("row", "token", "now"))


def _mark_params(row: int, token: str, now: datetime) -> list[bytes | None]:
    """The mark's parameters as the server reads them (text), in the statement's order."""
    params = _MARK_FIXED.copy()
    params[_ROW] = b"%d" % row
    params[_TOKEN] = token.encode()
    params[_NOW] = now.astimezone(UTC).isoformat().encode()
    return params


_MARK_NAMES = itertools.count()


def _checked(result: pq.abc.PGresult) -> None:
    """Raise the error of a statement the server refused."""
    if result.status not in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
        raise psycopg.DatabaseError(result.get_error_message())


class _Ahead:
    """Each reader's message of a batch, built (and signed) a few readers ahead in a pool."""

    window = 4

    def __init__(
        self,
        recipients: Sequence[Recipient],
        prepared: Mapping[tuple[frozenset[int], str | None], PreparedDigest],
        links: Links,
        pool: ThreadPoolExecutor | None,
        *,
        stuffed: bool = False,
    ) -> None:
        self.recipients = recipients
        self.prepared = prepared
        self.links = links
        self.pool = pool
        self.stuffed = stuffed
        self.futures: dict[int, Future[bytes]] = {}
        self.envelopes: dict[int, Envelope] = {}

    def prepared_of(self, position: int) -> PreparedDigest:
        """The mail, rendered once, that the reader at `position` gets made personal."""
        r = self.recipients[position]
        return self.prepared[(r.lists, r.locale)]

    def envelope(self, position: int) -> Envelope:
        """The SMTP envelope of the reader's message at `position`: its VERP sender and address."""
        found = self.envelopes.pop(position, None)
        if found is None:
            r = self.recipients[position]
            prepared = self.prepared_of(position)
            sender = self.links.envelope_sender(DELIVERY, r.delivery_id) or prepared.sender
            found = (sender, [prepared.recipient(r.address)])
        return found

    def next_envelope(self, position: int) -> Envelope | None:
        """The envelope of the next reader after `position` to be mailed, if there is one."""
        upcoming = next(
            (
                n
                for n in range(position + 1, len(self.recipients))
                if self.recipients[n].status == SubscriptionStatus.CONFIRMED
            ),
            None,
        )
        if upcoming is None:
            return None
        try:
            self.envelopes[upcoming] = self.envelope(upcoming)
        except Exception:
            # Nothing goes ahead; that reader's own turn says what is wrong.
            return None
        return self.envelopes[upcoming]

    def _build(self, position: int) -> bytes:
        r = self.recipients[position]
        prepared = self.prepared_of(position)
        reader = Reader(r.subscriber_id, r.token_key)
        return prepared.message(r.delivery_id, r.address, reader, stuffed=self.stuffed)

    def get(self, position: int) -> bytes:
        """The message for the reader at `position`; raises what building it raised."""
        if self.pool is None:
            return self._build(position)
        for upcoming in range(position, min(position + self.window, len(self.recipients))):
            confirmed = self.recipients[upcoming].status == SubscriptionStatus.CONFIRMED
            if upcoming not in self.futures and confirmed:
                self.futures[upcoming] = self.pool.submit(self._build, upcoming)
        return self.futures.pop(position).result()

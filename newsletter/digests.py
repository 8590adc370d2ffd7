"""Digests: composed from news items, snapshotted into the delivery ledger, sent by workers.

draft → scheduled → sending ⇄ paused → sent, or cancelled from any state before sent.
The ledger (`Delivery`) holds one row per reader; `newsletter/sending.py` works it off.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, exists, func, insert, literal, or_, select, update
from sqlalchemy.orm import Session

from newsletter.errors import UserError
from newsletter.items import items_query
from newsletter.mail import outbox
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Digest,
    DigestItem,
    DigestStatus,
    Item,
    MailKind,
    Newsletter,
    Subscription,
    SubscriptionStatus,
    utcnow,
)

D = DigestStatus

# How many new items a digest offers at most; an editor can add older ones by hand.
MAX_ITEMS = 30
EDITABLE = (D.DRAFT, D.SCHEDULED)
# Control characters but tab, line feed and carriage return (folded to spaces instead).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class DigestError(UserError):
    """A digest action the rules refuse; the message is fit to show an editor."""


def last_sent(session: Session, newsletter: Newsletter) -> Digest | None:
    """The newsletter's latest digest that went out (or is going out)."""
    return session.scalar(
        select(Digest)
        .where(
            Digest.newsletter_id == newsletter.id,
            Digest.status.in_((D.SENDING, D.PAUSED, D.SENT)),
        )
        .order_by(Digest.started_at.desc(), Digest.id.desc())
        .limit(1)
    )


def new_items(session: Session, newsletter: Newsletter, limit: int = MAX_ITEMS) -> list[Item]:
    """Items of the newsletter published since its last digest went out, newest first."""
    query = items_query(newsletter.id).limit(limit)
    previous = last_sent(session, newsletter)
    if previous is not None:
        # Since the last digest was composed: what came in while it waited to go is new too,
        # and so is a story that reached us late with an earlier publication time.
        sent_items = select(DigestItem.item_id).where(DigestItem.digest_id == previous.id)
        since = previous.created_at
        query = query.where(
            or_(Item.published_at > since, Item.created_at > since), ~Item.id.in_(sent_items)
        )
    return list(session.scalars(query))


def default_subject(newsletter: Newsletter, items: Sequence[Item], now: datetime) -> str:
    """What a digest is called until an editor says otherwise."""
    if items:
        return f"{newsletter.name}: {items[0].title}"[:300]
    return f"{newsletter.name} for {now:%-d %B %Y}"


def compose(
    session: Session,
    newsletter: Newsletter,
    *,
    subject: str | None = None,
    intro: str = "",
    created_by: int | None = None,
    automatic: bool = False,
    items: Sequence[Item] | None = None,
) -> Digest:
    """A draft digest of the newsletter's new items, newest first; commits."""
    if newsletter.archived:
        raise DigestError(f"{newsletter.name} is archived: it sends no digests.")
    chosen = list(items) if items is not None else new_items(session, newsletter)
    digest = Digest(
        newsletter=newsletter,
        subject=_subject(subject or default_subject(newsletter, chosen, utcnow())),
        intro=intro,
        created_by=created_by,
        automatic=automatic,
        entries=[DigestItem(item=item, position=n) for n, item in enumerate(chosen)],
    )
    session.add(digest)
    session.commit()
    return digest


def _subject(subject: str) -> str:
    # A control character would stop the mail at its header; whitespace is folded to spaces.
    subject = " ".join(_CONTROL.sub("", subject).split())
    if not subject:
        raise DigestError("A digest needs a subject.")
    if len(subject) > 300:
        raise DigestError("The subject is longer than 300 characters.")
    return subject


def edit(
    session: Session,
    digest: Digest,
    *,
    subject: str,
    intro: str,
    item_ids: Sequence[int],
) -> Digest:
    """Change a digest not yet sending: subject, intro, and its items in this order; commits."""
    if digest.status not in EDITABLE:
        raise DigestError("This digest is on its way and can no longer be changed.")
    if len(intro) > 10_000:
        raise DigestError("The introduction is longer than 10,000 characters.")
    by_id = {item.id: item for item in session.scalars(select(Item).where(Item.id.in_(item_ids)))}
    order = list(dict.fromkeys(i for i in item_ids if i in by_id))
    digest.subject = _subject(subject)
    digest.intro = intro.replace("\r\n", "\n").strip()
    digest.entries = [DigestItem(item=by_id[i], position=n) for n, i in enumerate(order)]
    session.commit()
    return digest


def schedule(session: Session, digest: Digest, when: datetime) -> Digest:
    """Send the digest at `when` (a worker starts it then); commits."""
    if digest.status not in EDITABLE:
        raise DigestError("Only a draft can be scheduled.")
    if when.tzinfo is None:
        raise DigestError("The time to send needs a time zone.")
    _sendable(digest)
    digest.status = D.SCHEDULED
    digest.scheduled_at = when
    session.commit()
    return digest


def unschedule(session: Session, digest: Digest) -> Digest:
    """Back to a draft; commits."""
    if digest.status != D.SCHEDULED:
        raise DigestError("This digest is not scheduled.")
    digest.status = D.DRAFT
    digest.scheduled_at = None
    session.commit()
    return digest


def _sendable(digest: Digest) -> None:
    if not digest.entries:
        raise DigestError("This digest has no items: add at least one before sending it.")
    if digest.newsletter.archived:
        raise DigestError(f"{digest.newsletter.name} is archived: it sends no digests.")


def audience(newsletter_id: int) -> object:
    """The newsletter's confirmed readers: everyone bounced, complained or left is not."""
    return and_(
        Subscription.newsletter_id == newsletter_id,
        Subscription.status == SubscriptionStatus.CONFIRMED,
    )


def audience_size(session: Session, newsletter: Newsletter) -> int:
    """How many readers a digest of the newsletter would go to if it started now."""
    query = select(func.count()).select_from(Subscription).where(audience(newsletter.id))
    return session.scalar(query) or 0


def start(session: Session, digest: Digest) -> int:
    """Snapshot the audience into the ledger and start sending; returns the readers; commits.

    One INSERT … SELECT, in the same transaction as the change of state, guarded by it:
    two callers (an editor's click and a worker's schedule) cannot both snapshot.
    """
    if digest.status not in EDITABLE:
        raise DigestError("This digest has already been sent or cancelled.")
    _sendable(digest)
    now = utcnow()
    taken = session.execute(
        update(Digest)
        .where(Digest.id == digest.id, Digest.status.in_(EDITABLE))
        .values(status=D.SENDING, started_at=now)
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount != 1:
        session.rollback()
        raise DigestError("This digest has already been started.")
    added = session.execute(
        insert(Delivery).from_select(
            ["digest_id", "subscription_id", "status", "attempts", "next_attempt_at"],
            select(
                literal(digest.id),
                Subscription.id,
                literal(DeliveryStatus.QUEUED.value),
                literal(0),
                literal(now, Delivery.next_attempt_at.type),
            ).where(audience(digest.newsletter_id)),
        ),
        # An INSERT's row count is kept only when asked for (psycopg would say -1).
        execution_options={"preserve_rowcount": True},
    ).rowcount
    session.execute(
        update(Digest)
        .where(Digest.id == digest.id)
        .values(recipients=added)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    session.refresh(digest)
    if added == 0:
        finish_if_done(session, digest.id)
        session.refresh(digest)
    return added


def pause(session: Session, digest: Digest) -> Digest:
    """Stop handing out mail; workers put back what they hold within a second; commits."""
    return _move(session, digest, (D.SENDING,), D.PAUSED, "Only a digest being sent can pause.")


def resume(session: Session, digest: Digest) -> Digest:
    """Go on from where the digest paused; commits."""
    return _move(session, digest, (D.PAUSED,), D.SENDING, "Only a paused digest can resume.")


def cancel(session: Session, digest: Digest) -> Digest:
    """Send nothing more of this digest; what went out stays counted; commits."""
    _move(
        session,
        digest,
        (D.DRAFT, D.SCHEDULED, D.SENDING, D.PAUSED),
        D.CANCELLED,
        "This digest has already been sent or cancelled.",
    )
    # Held rows too: a worker that dies holding them would leave them `sending` for good. Their
    # claim stays, so a message a live worker is sending right now is still marked sent, and
    # that worker brings the figures up to date when it sees the cancel (`recount`).
    session.execute(
        update(Delivery)
        .where(
            Delivery.digest_id == digest.id,
            Delivery.status.in_((DeliveryStatus.QUEUED, DeliveryStatus.SENDING)),
        )
        .values(status=DeliveryStatus.SKIPPED, last_error="cancelled")
        .execution_options(synchronize_session=False)
    )
    _record_figures(session, digest.id, finished=True)
    session.commit()
    session.refresh(digest)
    return digest


def _move(
    session: Session,
    digest: Digest,
    sources: tuple[DigestStatus, ...],
    target: DigestStatus,
    refusal: str,
) -> Digest:
    moved = session.execute(
        update(Digest)
        .where(Digest.id == digest.id, Digest.status.in_(sources))
        .values(status=target)
        .execution_options(synchronize_session=False)
    )
    if moved.rowcount != 1:
        session.rollback()
        session.refresh(digest)
        raise DigestError(refusal)
    session.commit()
    session.refresh(digest)
    return digest


def _counts(session: Session, digest_id: int) -> dict[DeliveryStatus, int]:
    rows = session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.digest_id == digest_id)
        .group_by(Delivery.status)
    )
    counts = {status: 0 for status in DeliveryStatus}
    for status, count in rows:
        counts[DeliveryStatus(status)] = count
    return counts


def _record_figures(session: Session, digest_id: int, *, finished: bool) -> None:
    counts = _counts(session, digest_id)
    values: dict[str, object] = {
        "sent_count": counts[DeliveryStatus.SENT],
        "failed_count": counts[DeliveryStatus.FAILED],
        "skipped_count": counts[DeliveryStatus.SKIPPED],
    }
    if finished:
        values["finished_at"] = utcnow()
    session.execute(
        update(Digest)
        .where(Digest.id == digest_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def recount(session: Session, digest_id: int) -> None:
    """Bring a cancelled digest's figures up to date with what workers sent since; commits."""
    _record_figures(session, digest_id, finished=False)
    session.commit()


def finish_if_done(session: Session, digest_id: int) -> bool:
    """Mark a sending digest sent once no row waits or is held; True when it did; commits."""
    waiting = exists().where(
        Delivery.digest_id == digest_id,
        Delivery.status.in_((DeliveryStatus.QUEUED, DeliveryStatus.SENDING)),
    )
    done = session.execute(
        update(Digest)
        .where(Digest.id == digest_id, Digest.status == D.SENDING, ~waiting)
        .values(status=D.SENT)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount == 1:
        _record_figures(session, digest_id, finished=True)
    session.commit()
    return done.rowcount == 1


@dataclass(frozen=True)
class Progress:
    """Where a digest stands, for the progress bar and the command line."""

    status: DigestStatus
    recipients: int
    queued: int  # waiting, held by a worker, or waiting for a retry
    sent: int
    failed: int
    skipped: int
    retrying: int  # of `queued`: put back after a temporary failure
    started_at: datetime | None
    finished_at: datetime | None
    unsubscribed_since: int

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped

    @property
    def finished(self) -> bool:
        return self.status in (D.SENT, D.CANCELLED)

    def rate(self, now: datetime) -> float | None:
        """Messages a second since the digest started (until it finished)."""
        if self.started_at is None or not self.sent:
            return None
        seconds = ((self.finished_at or now) - self.started_at).total_seconds()
        return self.sent / seconds if seconds > 0 else None

    def as_json(self, now: datetime) -> dict[str, object]:
        rate = self.rate(now)
        left = self.queued / rate if rate and self.status == D.SENDING else None
        return {
            "status": str(self.status),
            "recipients": self.recipients,
            "queued": self.queued,
            "sent": self.sent,
            "failed": self.failed,
            "skipped": self.skipped,
            "retrying": self.retrying,
            "rate": round(rate, 1) if rate else None,
            "seconds_left": round(left) if left is not None else None,
            "unsubscribed_since": self.unsubscribed_since,
            "finished": self.finished,
        }


def progress(session: Session, digest: Digest) -> Progress:
    """Counts from the ledger while it is worked on, the kept figures once it is done."""
    session.refresh(digest)
    if digest.finished_at is not None:
        sent, failed, skipped = digest.sent_count, digest.failed_count, digest.skipped_count
        queued = retrying = 0
    else:
        counts = _counts(session, digest.id)
        sent, failed = counts[DeliveryStatus.SENT], counts[DeliveryStatus.FAILED]
        skipped = counts[DeliveryStatus.SKIPPED]
        queued = counts[DeliveryStatus.QUEUED] + counts[DeliveryStatus.SENDING]
        retrying = (
            session.scalar(
                select(func.count())
                .select_from(Delivery)
                .where(
                    Delivery.digest_id == digest.id,
                    Delivery.status == DeliveryStatus.QUEUED,
                    Delivery.attempts > 0,
                )
            )
            or 0
        )
    unsubscribed = 0
    if digest.started_at is not None:
        unsubscribed = (
            session.scalar(
                select(func.count())
                .select_from(Subscription)
                .where(
                    Subscription.newsletter_id == digest.newsletter_id,
                    Subscription.unsubscribed_at >= digest.started_at,
                )
            )
            or 0
        )
    return Progress(
        status=DigestStatus(digest.status),
        recipients=digest.recipients,
        queued=queued,
        sent=sent,
        failed=failed,
        skipped=skipped,
        retrying=retrying,
        started_at=digest.started_at,
        finished_at=digest.finished_at,
        unsubscribed_since=unsubscribed,
    )


def waiting_reason(session: Session, digest_id: int) -> str | None:
    """Why rows of a digest wait: the last refusal of one put back for a retry, if any."""
    return session.scalar(
        select(Delivery.last_error)
        .where(
            Delivery.digest_id == digest_id,
            Delivery.status == DeliveryStatus.QUEUED,
            Delivery.last_error.is_not(None),
        )
        .limit(1)
    )


def start_due(session: Session, now: datetime | None = None) -> list[int]:
    """Start every scheduled digest whose time has come; returns their ids; commits."""
    now = now or utcnow()
    due = session.scalars(
        select(Digest)
        .where(Digest.status == D.SCHEDULED, Digest.scheduled_at <= now)
        .order_by(Digest.scheduled_at)
    ).all()
    started = []
    for digest in due:
        try:
            start(session, digest)
        except DigestError as exc:
            # Another worker was first, or the digest lost its items: note it on the digest.
            session.rollback()
            if digest.status == D.SCHEDULED:
                digest.status = D.DRAFT
                digest.error = f"Not sent at the scheduled time: {exc.message}"
                session.commit()
            continue
        started.append(digest.id)
    return started


def send_test(session: Session, digest: Digest, to_address: str) -> None:
    """Queue a test copy of the digest to one address (an editor's); commits."""
    if not digest.entries:
        raise DigestError("This digest has no items: add at least one first.")
    outbox.enqueue(session, MailKind.DIGEST_TEST, None, to_address, {"digest": digest.id})
    session.commit()


def recent(session: Session, newsletter: Newsletter | None = None, limit: int = 50) -> list[Digest]:
    """The latest digests, newest first."""
    query = select(Digest).order_by(Digest.id.desc()).limit(limit)
    if newsletter is not None:
        query = query.where(Digest.newsletter_id == newsletter.id)
    return list(session.scalars(query))

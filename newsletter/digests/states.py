"""A digest's life: composed from news items, scheduled, started, paused, sent or cancelled.

draft → scheduled → sending ⇄ paused → sent, or cancelled from any state before sent. Starting
snapshots the audience into the ledger (`ledger.py`); the workers' sender works it off.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Sequence
from datetime import datetime, timedelta

from flask_babel import gettext as _
from flask_babel import lazy_gettext
from sqlalchemy import Insert, or_, select, update
from sqlalchemy.orm import Session

from newsletter import frequencies, suppression
from newsletter.digests import ledger
from newsletter.digests.items import items_query
from newsletter.errors import UserError
from newsletter.mail import outbox
from newsletter.models import (
    DeliveryStatus,
    Digest,
    DigestItem,
    DigestStatus,
    Item,
    MailKind,
    Newsletter,
    utcnow,
)

log = logging.getLogger(__name__)

# How many new items a digest offers at most; an editor can add older ones by hand.
MAX_ITEMS = 30
EDITABLE = (DigestStatus.DRAFT, DigestStatus.SCHEDULED)
# Figures and ledger rows of a digest that went out, or is going out.
UNDER_WAY = (DigestStatus.SENDING, DigestStatus.PAUSED, DigestStatus.SENT)
# Control characters but tab, line feed and carriage return (folded to spaces instead).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# The states an editor's action moves a digest from.
PAUSABLE = (DigestStatus.SENDING,)
RESUMABLE = (DigestStatus.PAUSED,)
CANCELLABLE = (
    DigestStatus.DRAFT,
    DigestStatus.SCHEDULED,
    DigestStatus.SENDING,
    DigestStatus.PAUSED,
)
# How a digest's state reads on its page.
LABELS = {
    DigestStatus.DRAFT: lazy_gettext("Draft"),
    DigestStatus.SCHEDULED: lazy_gettext("Scheduled"),
    DigestStatus.SENDING: lazy_gettext("Sending"),
    DigestStatus.PAUSED: lazy_gettext("Paused"),
    DigestStatus.SENT: lazy_gettext("Sent"),
    DigestStatus.CANCELLED: lazy_gettext("Cancelled"),
}


class DigestError(UserError):
    """A digest action the rules refuse; the message is fit to show an editor."""


class StaleConfirmation(DigestError):
    """The editor confirmed a digest that has changed since it was shown to them."""

    def __init__(self) -> None:
        super().__init__(
            _(
                "This digest changed after you were asked to confirm, so nothing was done. "
                "Check it and confirm again."
            )
        )


class NoNewItems(DigestError):
    """Nothing new to send since the newsletter's last digest."""

    def __init__(self, newsletter: Newsletter) -> None:
        super().__init__(
            _("%(name)s has no new items since its last digest.", name=newsletter.name)
        )


def editable(digest: Digest) -> bool:
    """Whether the digest can still be changed, scheduled or started: not on its way yet."""
    return digest.status in EDITABLE


def actions(digest: Digest) -> frozenset[str]:
    """What an editor may do to the digest now: edit, unschedule, pause, resume, cancel."""
    allowed = {
        "edit": editable(digest),
        "unschedule": digest.status == DigestStatus.SCHEDULED,
        "pause": digest.status in PAUSABLE,
        "resume": digest.status in RESUMABLE,
        "cancel": digest.status in CANCELLABLE,
    }
    return frozenset(name for name, ok in allowed.items() if ok)


def fingerprint(digest: Digest) -> str:
    """What an editor confirms: the digest's list, its time, and everything its mail says.

    Any change to it (an edit, a new time, an item changed) makes an earlier confirmation stale.
    """
    scheduled = digest.scheduled_at.isoformat() if digest.scheduled_at else None
    items = [(item.id, item.title, item.url, item.summary) for item in digest.items]
    facts = [
        digest.id,
        digest.newsletter_id,
        digest.frequency,
        digest.subject,
        digest.intro,
        scheduled,
        items,
    ]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:32]


def ready(digest: Digest) -> None:
    """Refuse a digest that could not go now: on its way already, no items, an archived list."""
    if not editable(digest):
        raise DigestError(_("This digest has already been sent or cancelled."))
    _sendable(digest)


def check_time(when: datetime, now: datetime | None = None) -> None:
    """Refuse a send time without a zone, or one that has passed."""
    if when.tzinfo is None:
        raise DigestError(_("The time to send needs a time zone."))
    if when <= (now or utcnow()):
        raise DigestError(_("This time has passed: choose one in the future."))


def last_sent(
    session: Session, newsletter: Newsletter, frequency: str | None = None
) -> Digest | None:
    """The newsletter's latest digest that went out (or is going out), of this edition.

    Without an edition, any digest of the list counts. The cadence's edition counts the
    digests to every reader too (all of them before the list offered editions). A breaking
    alert is no edition: its item is still new for the next one, which carries it to the
    readers whose alert cap held it back and to those who chose no alerts.
    """
    query = select(Digest).where(
        Digest.newsletter_id == newsletter.id,
        Digest.status.in_(UNDER_WAY),
        Digest.frequency.is_distinct_from(frequencies.ALERT),
    )
    if frequency == newsletter.cadence:
        query = query.where(or_(Digest.frequency.is_(None), Digest.frequency == frequency))
    elif frequency is not None:
        query = query.where(Digest.frequency == frequency)
    return session.scalar(query.order_by(Digest.started_at.desc(), Digest.id.desc()).limit(1))


def new_items(
    session: Session,
    newsletter: Newsletter,
    limit: int = MAX_ITEMS,
    frequency: str | None = None,
) -> list[Item]:
    """Items of the newsletter published since its last digest (of the edition) went out."""
    previous = last_sent(session, newsletter, frequency)
    return items_since_digest(session, newsletter, previous, limit, frequency)


def items_since_digest(
    session: Session,
    newsletter: Newsletter,
    previous: Digest | None,
    limit: int = MAX_ITEMS,
    frequency: str | None = None,
) -> list[Item]:
    """Items of the list that came in since `previous` was composed and were not in it.

    Newest first. The weekly edition of a list that offers frequencies takes the week's
    items, the editor's picks first, at most the list's `weekly_max_items`; a list offering
    none keeps its digests as they were.
    """
    query = items_query(newsletter.id)
    if previous is not None:
        # Since the last digest was composed: what came in while it waited to go is new too,
        # and so is a story that reached us late with an earlier publication time.
        sent_items = select(DigestItem.item_id).where(DigestItem.digest_id == previous.id)
        since = previous.created_at
        query = query.where(
            or_(Item.published_at > since, Item.created_at > since), ~Item.id.in_(sent_items)
        )
    if frequency == frequencies.WEEKLY and frequencies.offered(newsletter):
        week_ago = utcnow() - timedelta(days=7)
        query = query.where(Item.published_at > week_ago)
        query = query.order_by(None).order_by(
            Item.pick.desc(), Item.published_at.desc(), Item.id.desc()
        )
        limit = min(limit, newsletter.weekly_max_items)
    return list(session.scalars(query.limit(limit)))


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
    frequency: str | None = None,
) -> Digest:
    """A draft digest of these items, or else of the newsletter's new ones, newest first.

    `frequency` is its edition: it goes to that edition's readers (None: every reader) and
    takes what is new since that edition's last digest. Commits. NoNewItems when there is
    nothing new since the last digest.
    """
    if newsletter.archived:
        raise DigestError(_("%(name)s is archived: it sends no digests.", name=newsletter.name))
    chosen = (
        list(items) if items is not None else new_items(session, newsletter, frequency=frequency)
    )
    if items is None and not chosen:
        raise NoNewItems(newsletter)
    digest = Digest(
        newsletter=newsletter,
        subject=clean_subject(subject or default_subject(newsletter, chosen, utcnow())),
        intro=intro,
        created_by=created_by,
        automatic=automatic,
        frequency=frequency,
        entries=[DigestItem(item=item, position=n) for n, item in enumerate(chosen)],
    )
    session.add(digest)
    session.commit()
    return digest


def clean_subject(subject: str) -> str:
    # A control character would stop the mail at its header; whitespace is folded to spaces.
    subject = " ".join(_CONTROL.sub("", subject).split())
    if not subject:
        raise DigestError(_("A digest needs a subject."))
    if len(subject) > 300:
        raise DigestError(_("The subject is longer than 300 characters."))
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
    if not editable(digest):
        raise DigestError(_("This digest is on its way and can no longer be changed."))
    if len(intro) > 10_000:
        raise DigestError(_("The introduction is longer than 10,000 characters."))
    by_id = {item.id: item for item in session.scalars(select(Item).where(Item.id.in_(item_ids)))}
    order = list(dict.fromkeys(i for i in item_ids if i in by_id))
    # Still editable at the moment of writing: a worker may have started it since it was read.
    _hold_editable(session, digest, _("This digest is on its way and can no longer be changed."))
    digest.subject = clean_subject(subject)
    digest.intro = intro.replace("\r\n", "\n").strip()
    digest.entries = [DigestItem(item=by_id[i], position=n) for n, i in enumerate(order)]
    session.commit()
    return digest


def _hold_editable(session: Session, digest: Digest, refusal: str) -> None:
    """Lock the digest's row while it is draft or scheduled, or refuse: no start slips between.

    An UPDATE that changes nothing but matches only an editable digest: on PostgreSQL it holds
    the row until the caller's commit, on SQLite the write lock; a start that won the race
    leaves it matching nothing.
    """
    held = session.execute(
        update(Digest)
        .where(Digest.id == digest.id, Digest.status.in_(EDITABLE))
        .values(status=Digest.status)
        .execution_options(synchronize_session=False)
    )
    if held.rowcount != 1:
        session.rollback()
        session.refresh(digest)
        raise DigestError(refusal)


def _hold_as_seen(session: Session, digest: Digest, seen: str | None, refusal: str) -> None:
    """Lock the editable digest, then refuse it if it is no longer what the editor confirmed.

    Read again under the lock: an edit that committed a moment ago counts, one that waits
    for the lock finds the digest on its way and is refused.
    """
    _hold_editable(session, digest, refusal)
    if seen is None:
        return
    session.expire_all()
    if not hmac.compare_digest(fingerprint(digest), seen):
        session.rollback()
        raise StaleConfirmation()


def schedule(
    session: Session,
    digest: Digest,
    when: datetime,
    now: datetime | None = None,
    *,
    seen: str | None = None,
) -> Digest:
    """Send the digest at `when`, in the future (a worker starts it then); commits.

    `seen`: the fingerprint of the digest the editor confirmed; refused when it changed since.
    """
    if not editable(digest):
        raise DigestError(_("Only a draft can be scheduled."))
    check_time(when, now)
    _sendable(digest)
    _hold_as_seen(session, digest, seen, _("Only a draft can be scheduled."))
    _move(
        session,
        digest,
        EDITABLE,
        DigestStatus.SCHEDULED,
        _("Only a draft can be scheduled."),
        scheduled_at=when,
    )
    return digest


def unschedule(session: Session, digest: Digest) -> Digest:
    """Back to a draft; commits."""
    return _move(
        session,
        digest,
        (DigestStatus.SCHEDULED,),
        DigestStatus.DRAFT,
        _("This digest is not scheduled."),
        scheduled_at=None,
    )


def _sendable(digest: Digest) -> None:
    if not digest.entries:
        raise DigestError(_("This digest has no items: add at least one before sending it."))
    if digest.newsletter is not None and digest.newsletter.archived:
        raise DigestError(
            _("%(name)s is archived: it sends no digests.", name=digest.newsletter.name)
        )
    if digest.newsletter is None and not any(not n.archived for n in digest.lists):
        raise DigestError(_("Every list of this combined edition is archived."))


def audience_size(session: Session, newsletter: Newsletter, frequency: str | None = None) -> int:
    """How many readers a digest of the newsletter (and edition) would go to if it started now."""
    statement = ledger.audience_size(newsletter.id, frequency, newsletter.cadence)
    return session.scalar(statement) or 0


def readers_now(session: Session, digest: Digest) -> int:
    """How many readers the digest would go to if it started now; a combined edition too."""
    if digest.newsletter is None:
        statement = ledger.combined_size(digest.frequency or "", live_lists(digest))
        return session.scalar(statement) or 0
    return audience_size(session, digest.newsletter, digest.frequency)


def live_lists(digest: Digest) -> list[int]:
    """The lists a combined edition still carries: archived ones send nothing."""
    return [n.id for n in digest.lists if not n.archived]


def _snapshot(digest: Digest, now: datetime) -> Insert:
    """The INSERT … SELECT of the digest's readers: a combined edition's, an alert's (within
    each reader's daily cap), or a list's edition's."""
    if digest.newsletter is None:
        return ledger.combined_snapshot(digest.id, digest.frequency or "", live_lists(digest), now)
    if digest.frequency == frequencies.ALERT:
        return ledger.alert_snapshot(
            digest.id, digest.newsletter.id, now, frequencies.alerts_per_day()
        )
    return ledger.snapshot(
        digest.id, digest.newsletter.id, now, digest.frequency, digest.newsletter.cadence
    )


def start(session: Session, digest: Digest, *, seen: str | None = None) -> int:
    """Snapshot the audience into the ledger and start sending; returns the readers; commits.

    One INSERT … SELECT, in the same transaction as the change of state, guarded by it:
    two callers (an editor's click and a worker's schedule) cannot both snapshot.
    `seen`: the fingerprint of the digest the editor confirmed; refused when it changed since.
    """
    ready(digest)
    if seen is not None:
        _hold_as_seen(session, digest, seen, _("This digest has already been sent or cancelled."))
    now = utcnow()
    taken = session.execute(
        update(Digest)
        .where(Digest.id == digest.id, Digest.status.in_(EDITABLE))
        .values(status=DigestStatus.SENDING, started_at=now)
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount != 1:
        session.rollback()
        raise DigestError(_("This digest has already been started."))
    if digest.frequency == frequencies.ALERT:
        ledger.hold_alerts(session)
    added = session.execute(
        _snapshot(digest, now),
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
    return _move(
        session,
        digest,
        PAUSABLE,
        DigestStatus.PAUSED,
        _("Only a digest being sent can pause."),
    )


def resume(session: Session, digest: Digest) -> Digest:
    """Go on from where the digest paused; commits."""
    return _move(
        session,
        digest,
        RESUMABLE,
        DigestStatus.SENDING,
        _("Only a paused digest can resume."),
    )


def cancel(session: Session, digest: Digest) -> Digest:
    """Send nothing more of this digest; what went out stays counted; commits.

    The state and the ledger's skipped rows change in one transaction.
    """
    _move(
        session,
        digest,
        CANCELLABLE,
        DigestStatus.CANCELLED,
        _("This digest has already been sent or cancelled."),
        commit=False,
    )
    # A live worker that sees the cancel brings the figures up to date (`recount`).
    session.execute(ledger.skip_unsent(digest.id, "cancelled"))
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
    *,
    commit: bool = True,
    **values: object,
) -> Digest:
    """Move the digest from one of `sources` to `target` in one guarded UPDATE, or refuse."""
    moved = session.execute(
        update(Digest)
        .where(Digest.id == digest.id, Digest.status.in_(sources))
        .values(status=target, **values)
        .execution_options(synchronize_session=False)
    )
    if moved.rowcount != 1:
        session.rollback()
        session.refresh(digest)
        raise DigestError(refusal)
    if commit:
        session.commit()
        session.refresh(digest)
    return digest


def _record_figures(session: Session, digest_id: int, *, finished: bool) -> None:
    counts = ledger.counts(session, digest_id)
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
    done = session.execute(
        update(Digest)
        .where(
            Digest.id == digest_id,
            Digest.status == DigestStatus.SENDING,
            ~ledger.unsent(digest_id),
        )
        .values(status=DigestStatus.SENT)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount == 1:
        _record_figures(session, digest_id, finished=True)
    session.commit()
    return done.rowcount == 1


def start_due(session: Session, now: datetime | None = None) -> list[int]:
    """Start every scheduled digest whose time has come; returns their ids; commits."""
    now = now or utcnow()
    due = session.scalars(
        select(Digest)
        .where(Digest.status == DigestStatus.SCHEDULED, Digest.scheduled_at <= now)
        .order_by(Digest.scheduled_at)
    ).all()
    started = []
    for digest in due:
        try:
            start(session, digest)
        except Exception as exc:
            # Another worker was first, or the digest lost its items: note it on the digest,
            # back to a draft. Whatever else went wrong, the other digests still start.
            session.rollback()
            if not isinstance(exc, DigestError):
                log.exception("digest %s could not start", digest.id)
            why = exc.message if isinstance(exc, DigestError) else "it could not be started"
            try:
                _move(
                    session,
                    digest,
                    (DigestStatus.SCHEDULED,),
                    DigestStatus.DRAFT,
                    "",
                    error=f"Not sent at the scheduled time: {why}"[:2000],
                )
            except DigestError:
                pass  # started or changed by someone else meanwhile
            continue
        started.append(digest.id)
    return started


def send_test(session: Session, digest: Digest, to_address: str) -> None:
    """Queue a test copy of the digest to one address (an editor's); commits."""
    if digest.newsletter is None:
        raise DigestError(_("A combined edition has no test copy: its preview shows it."))
    if not digest.entries:
        raise DigestError(_("This digest has no items: add at least one first."))
    if suppression.unmailable(session, to_address):
        raise DigestError(
            _(
                "Mail to %(address)s cannot be delivered: the address is suppressed.",
                address=to_address,
            )
        )
    outbox.enqueue(session, MailKind.DIGEST_TEST, None, to_address, {"digest": digest.id})
    session.commit()


def recent(session: Session, newsletter: Newsletter | None = None, limit: int = 50) -> list[Digest]:
    """The latest digests, newest first."""
    query = select(Digest).order_by(Digest.id.desc()).limit(limit)
    if newsletter is not None:
        query = query.where(Digest.newsletter_id == newsletter.id)
    return list(session.scalars(query))

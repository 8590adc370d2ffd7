"""The site's combined editions: one mail per edition for readers who chose it.

A reader who ticks "one combined mail" (subscriber.combined) is left out of each list's
daily and weekly editions (`ledger.audience`) and gets the site's combined edition of that
frequency instead: one digest carrying every list that has combined readers at that
frequency and new items, with those items. It is stored as a digest with no newsletter of
its own (`Digest.lists` says what it carries), so the ledger, the states, pause and cancel
and the sender serve it as they serve a list's digest: one ledger row per reader, rendered
once per distinct set of lists its readers follow.

When they go is in the site settings (`CombinedEdition`, one row per edition): on by default,
daily at 07:00 and weekly on Mondays at 07:00, so a reader who ticks the box is never left
without mail. A worker that finds an edition due moves it to its following moment first (one
UPDATE guarded by the old value, so of several workers exactly one takes the run), then
composes and starts it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

from flask_babel import gettext as _
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from newsletter import frequencies, site
from newsletter.digests import cadence, feeds, ledger, states
from newsletter.models import (
    AuditEvent,
    CombinedEdition,
    Digest,
    DigestItem,
    Item,
    Newsletter,
    Subscription,
    utcnow,
)

log = logging.getLogger(__name__)


def editions(session: Session) -> dict[str, CombinedEdition]:
    """The combined editions' settings, the rows made with their defaults when missing; commits
    when it made one."""
    found = {row.frequency: row for row in session.scalars(select(CombinedEdition))}
    missing = [f for f in frequencies.EDITIONS if f not in found]
    for frequency in missing:
        row = CombinedEdition(
            frequency=frequency, automatic=True, send_time="07:00", timezone="UTC", send_weekday=0
        )
        session.add(row)
        found[frequency] = row
    if missing:
        session.commit()
    return {f: found[f] for f in frequencies.EDITIONS}


def plan(row: CombinedEdition, now: datetime | None = None) -> None:
    """Set when the edition is next due (None when it is off)."""
    if not row.automatic:
        row.next_at = None
        return
    row.next_at = cadence.next_run(
        row.frequency, row.send_time, row.timezone, row.send_weekday, now or utcnow()
    )


def update_settings(
    session: Session,
    frequency: str,
    values: Mapping[str, object],
    admin_user_id: int | None = None,
    now: datetime | None = None,
) -> bool:
    """Save an edition's schedule (automatic, send_time, timezone, send_weekday), noted in the
    audit trail; True when something changed; commits. CadenceError for a time, zone or
    weekday that cannot be used."""
    row = editions(session)[frequency]
    automatic = bool(values.get("automatic"))
    send_time = cadence.clock(str(values.get("send_time") or "")).strftime("%H:%M")
    timezone = str(values.get("timezone") or "").strip()
    cadence.zone(timezone)
    weekday = str(values.get("send_weekday", row.send_weekday)).strip()
    if not weekday.isdigit() or int(weekday) > 6:
        raise cadence.CadenceError(_("Choose a day of the week."))
    new = (automatic, send_time, timezone, int(weekday))
    before = (row.automatic, row.send_time, row.timezone, row.send_weekday)
    if new == before:
        return False
    row.automatic, row.send_time, row.timezone, row.send_weekday = new
    plan(row, now)
    detail = {"edition": frequency, "before": list(before), "after": list(new)}
    session.add(AuditEvent(admin_user_id=admin_user_id, action="combined-edition", detail=detail))
    session.commit()
    return True


def followed_lists(session: Session, frequency: str) -> list[Newsletter]:
    """Open lists with readers who get the combined edition of this frequency."""
    ids = select(Subscription.newsletter_id).where(
        Newsletter.id == Subscription.newsletter_id, ledger.combined_audience(frequency)
    )
    return list(
        session.scalars(
            select(Newsletter)
            .where(Newsletter.archived.is_(False), Newsletter.id.in_(ids))
            .order_by(Newsletter.id)
        )
    )


def last_edition(session: Session, frequency: str, newsletter: Newsletter) -> Digest | None:
    """The latest combined edition of this frequency that carried the list, if any went out."""
    return session.scalar(
        select(Digest)
        .where(
            Digest.newsletter_id.is_(None),
            Digest.frequency == frequency,
            Digest.status.in_(states.UNDER_WAY),
            Digest.lists.any(Newsletter.id == newsletter.id),
        )
        .order_by(Digest.started_at.desc(), Digest.id.desc())
        .limit(1)
    )


def last_to_everyone(session: Session, newsletter: Newsletter) -> Digest | None:
    """The list's latest digest to every reader (an editor's one-off), combined ones too."""
    return session.scalar(
        select(Digest)
        .where(
            Digest.newsletter_id == newsletter.id,
            Digest.frequency.is_(None),
            Digest.status.in_(states.UNDER_WAY),
        )
        .order_by(Digest.started_at.desc(), Digest.id.desc())
        .limit(1)
    )


def new_items(session: Session, frequency: str, newsletter: Newsletter) -> list[Item]:
    """The list's items since its combined readers last had them: its last combined edition
    of this frequency or its last digest to every reader, whichever went later; before
    either, since the list's own last digest of the edition (its readers saw those)."""
    candidates = (
        last_edition(session, frequency, newsletter),
        last_to_everyone(session, newsletter),
    )
    seen = [d for d in candidates if d is not None]
    previous = (
        max(seen, key=lambda d: (d.created_at, d.id))
        if seen
        else states.last_sent(session, newsletter, frequency)
    )
    return states.items_since_digest(session, newsletter, previous, frequency=frequency)


def edition_subject(items: list[Item]) -> str:
    """The edition's subject: the site's name and the newest story."""
    name = site.current().name
    return f"{name}: {items[0].title}"[:300] if name else items[0].title[:300]


def compose(session: Session, frequency: str) -> Digest | None:
    """A draft combined edition of every followed list's new items; None when nothing is new.

    An item tagged to several lists is in it once. Commits.
    """
    carried: list[Newsletter] = []
    chosen: dict[int, Item] = {}
    for newsletter in followed_lists(session, frequency):
        if newsletter.feed_url:
            # As a list's own automatic digest does: the feed's latest before composing.
            feeds.pull(session, newsletter)
        items = new_items(session, frequency, newsletter)
        if items:
            carried.append(newsletter)
            chosen.update((item.id, item) for item in items)
    if not chosen:
        return None
    # Newest first; in the weekly edition the editors' picks before the rest.
    picks_first = frequency == frequencies.WEEKLY
    ordered = sorted(
        chosen.values(),
        key=lambda i: (picks_first and i.pick, i.published_at, i.id),
        reverse=True,
    )
    digest = Digest(
        newsletter=None,
        frequency=frequency,
        subject=states.clean_subject(edition_subject(ordered)),
        intro="",
        automatic=True,
        lists=carried,
        entries=[DigestItem(item=item, position=n) for n, item in enumerate(ordered)],
    )
    session.add(digest)
    session.commit()
    return digest


def send(session: Session, frequency: str) -> Digest | None:
    """Compose the combined edition and start it at once; commits."""
    digest = compose(session, frequency)
    if digest is None:
        log.info("combined %s edition: nothing new, none this time", frequency)
        return None
    try:
        readers = states.start(session, digest)
    except states.DigestError as exc:
        log.warning("combined %s edition %s not sent: %s", frequency, digest.id, exc)
    else:
        log.info("combined %s edition %s to %d readers", frequency, digest.id, readers)
    return digest


def run_due(session: Session, now: datetime | None = None) -> list[Digest]:
    """Compose and start every combined edition that is due; commits."""
    now = now or utcnow()
    made = []
    for row in editions(session).values():
        if not row.automatic:
            continue
        if row.next_at is None:
            plan(row, now)
            session.commit()
            continue
        if row.next_at > now:
            continue
        previous = row.next_at
        try:
            following = cadence.next_run(
                row.frequency, row.send_time, row.timezone, row.send_weekday, now
            )
        except cadence.CadenceError as exc:
            log.warning("combined %s edition stopped: %s", row.frequency, exc)
            following = None
        taken = session.execute(
            update(CombinedEdition)
            .where(CombinedEdition.frequency == row.frequency, CombinedEdition.next_at == previous)
            .values(next_at=following)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if taken.rowcount != 1:
            continue  # another worker took this run
        digest = send(session, row.frequency)
        if digest is not None:
            made.append(digest)
    return made


def title(frequency: str | None) -> str:
    """What a combined edition is called on the admin's pages."""
    if frequency == frequencies.WEEKLY:
        return _("Combined weekly edition")
    return _("Combined daily edition")

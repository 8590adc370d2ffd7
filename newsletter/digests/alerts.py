"""Breaking alerts: an item marked alert goes at once to the readers who chose alerts.

A worker's `AlertRunner` looks every few seconds for alert items not taken yet. It takes
one in a guarded UPDATE (of several workers exactly one does) and, in the same transaction,
composes an alert per list of the item that offers alerts: a digest of that item alone,
its title as the subject. Then it starts each through the ledger as any digest starts
(`states.start`): the alert's snapshot mails a reader once however many of the item's lists
they follow, and not beyond their cap of alerts a day (`frequencies.alerts_per_day`); what
the cap holds back comes in the reader's next edition, which carries alert items too.
An alert whose worker died between composing and starting it is started at the next look.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from threading import Event
from time import monotonic

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from newsletter import frequencies
from newsletter.digests import feeds, states
from newsletter.models import Digest, DigestItem, DigestStatus, Item, Newsletter, utcnow

log = logging.getLogger(__name__)

# Alert items taken in one look; the rest wait for the next, a few seconds later.
BATCH = 20


def offers_alerts(newsletter: Newsletter) -> bool:
    """Whether the list mails breaking alerts: open, and alerts among its frequencies."""
    return not newsletter.archived and frequencies.ALERT in frequencies.offered(newsletter)


def pending(session: Session) -> list[int]:
    """Alert items no worker has taken yet, oldest first."""
    query = (
        select(Item.id)
        .where(Item.alert.is_(True), Item.alerted_at.is_(None))
        .order_by(Item.id)
        .limit(BATCH)
    )
    return list(session.scalars(query))


def take(session: Session, item_id: int, now: datetime | None = None) -> list[Digest]:
    """Take the alert item and compose its alerts, one per list offering alerts; commits.

    Empty when another worker took it first (or it is no alert, or none of its lists offers
    alerts: then it is taken all the same, and waits for the editions like any item).
    """
    taken = session.execute(
        update(Item)
        .where(Item.id == item_id, Item.alert.is_(True), Item.alerted_at.is_(None))
        .values(alerted_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount != 1:
        session.rollback()
        return []
    item = session.get(Item, item_id)
    if item is None:  # pragma: no cover - the UPDATE just matched it
        session.rollback()
        return []
    made = [
        Digest(
            newsletter=newsletter,
            subject=item.title[:300],
            frequency=frequencies.ALERT,
            automatic=True,
            entries=[DigestItem(item=item, position=0)],
        )
        for newsletter in sorted(item.newsletters, key=lambda n: n.id)
        if offers_alerts(newsletter)
    ]
    session.add_all(made)
    session.commit()
    return made


def waiting(session: Session) -> list[Digest]:
    """Alerts composed and not started yet, oldest first."""
    query = (
        select(Digest)
        .where(
            Digest.frequency == frequencies.ALERT,
            Digest.automatic.is_(True),
            Digest.status == DigestStatus.DRAFT,
        )
        .order_by(Digest.id)
    )
    return list(session.scalars(query))


def start_waiting(session: Session) -> int:
    """Start every alert composed and not started yet; how many this call started; commits."""
    started = 0
    for digest in waiting(session):
        try:
            readers = states.start(session, digest)
        except states.DigestError as exc:
            session.rollback()
            session.refresh(digest)
            if digest.status == DigestStatus.DRAFT:
                # Its list closed meanwhile: an alert is news now or never.
                digest.error = f"Not sent: {exc.message}"[:2000]
                session.commit()
                states.cancel(session, digest)
            continue  # or another worker started it first
        log.info("alert %s on %s to %d readers", digest.id, digest.newsletter.slug, readers)
        started += 1
    return started


def send_due(session: Session, now: datetime | None = None) -> int:
    """Take every pending alert item and start its alerts; how many alerts started."""
    for item_id in pending(session):
        take(session, item_id, now)
    return start_waiting(session)


def pull_alert_feeds(session: Session, every: timedelta, now: datetime | None = None) -> int:
    """Pull the feeds of lists that map categories to alerts, each at most once per `every`.

    The cadence pulls a list's feed only when its edition is due; breaking news cannot wait
    for that. A guarded UPDATE of the time it was checked gives each pull to one worker.
    Returns how many items came in.
    """
    now = now or utcnow()
    lists = session.scalars(
        select(Newsletter).where(
            Newsletter.archived.is_(False),
            Newsletter.feed_url.is_not(None),
            Newsletter.alert_categories != "",
        )
    ).all()
    added = 0
    for newsletter in lists:
        checked = newsletter.feed_checked_at
        if not offers_alerts(newsletter) or (checked is not None and checked > now - every):
            continue
        taken = session.execute(
            update(Newsletter)
            .where(
                Newsletter.id == newsletter.id,
                Newsletter.feed_checked_at.is_not_distinct_from(checked),
            )
            .values(feed_checked_at=now)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if taken.rowcount == 1:
            session.refresh(newsletter)
            added += feeds.pull(session, newsletter)
    return added


class AlertRunner:
    """The worker's runner for breaking alerts: looks for new ones every `every` seconds.

    Pulls the feeds that map categories to alerts every `feed_every` seconds.
    """

    def __init__(
        self,
        every: float = 5.0,
        feed_every: float = 120.0,
        timer: Callable[[], float] = monotonic,
    ) -> None:
        self.every = every
        self.feed_every = timedelta(seconds=feed_every)
        self.timer = timer
        self._next = 0.0

    def step(self, session: Session, stop: Event) -> int:
        """Start the alerts of new alert items, if it is time to look; how many started."""
        if self.timer() < self._next:
            return 0
        self._next = self.timer() + self.every
        pull_alert_feeds(session, self.feed_every)
        return send_due(session)

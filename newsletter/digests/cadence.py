"""Cadences: when a newsletter's next automatic digest is due, and composing it then.

A newsletter whose automatic digests are on has `next_digest_at`, the next moment of its
cadence (daily at HH:MM, weekly on a weekday at HH:MM, monthly on the 1st at HH:MM, in its
time zone). A worker that finds it due moves it to the following moment first (one
UPDATE guarded by the old value, so of several workers exactly one takes the run), pulls
the newsletter's feed when it follows one, and composes a digest of the new items: a
draft for an editor to review, or sent at once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sized
from datetime import date, datetime, time, timedelta
from threading import Event
from time import monotonic
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask_babel import gettext as _
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from newsletter import frequencies
from newsletter.digests import feeds, states
from newsletter.errors import UserError
from newsletter.models import AutoDigest, Digest, Edition, Newsletter, utcnow

log = logging.getLogger(__name__)

CADENCES = ("daily", "weekly", "monthly")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_HH_MM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


class CadenceError(UserError):
    """A cadence that cannot be computed; the message is fit to show an editor."""


def zone(name: str) -> ZoneInfo:
    """The IANA time zone of that name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CadenceError(
            _("%(name)r is not a time zone such as Europe/Kyiv or UTC.", name=name)
        ) from exc


def clock(text: str) -> time:
    """HH:MM, 24-hour."""
    match = _HH_MM.fullmatch(text.strip())
    if match is None:
        raise CadenceError(_("%(text)r is not a time of day such as 07:30.", text=text))
    return time(int(match.group(1)), int(match.group(2)))


def _candidate_days(cadence: str, weekday: int, start: date) -> list[date]:
    """Days on or after `start` (and a little before, for zones ahead of UTC) that fit."""
    days = [start + timedelta(days=n) for n in range(-1, 40)]
    if cadence == "daily":
        return days
    if cadence == "weekly":
        return [d for d in days if d.weekday() == weekday]
    if cadence == "monthly":
        return [d for d in days if d.day == 1]
    raise CadenceError(_("%(text)r is not a cadence: daily, weekly or monthly.", text=cadence))


def next_run(
    cadence: str, send_time: str, timezone: str, weekday: int, after: datetime
) -> datetime:
    """The first moment of the cadence strictly after `after`, in UTC."""
    tz, at = zone(timezone), clock(send_time)
    local_start = after.astimezone(tz).date()
    for day in _candidate_days(cadence, weekday % 7, local_start):
        # A wall-clock time skipped by a DST change resolves to the hour after, as
        # zoneinfo does; one that happens twice, to its first occurrence.
        moment = datetime.combine(day, at, tzinfo=tz).astimezone(ZoneInfo("UTC"))
        if moment > after:
            return moment
    raise CadenceError(_("No moment of this cadence in the next 40 days."))  # pragma: no cover


def plan(newsletter: Newsletter, now: datetime | None = None) -> None:
    """Set when the newsletter's next automatic digest of each edition is due (None when
    they are off)."""
    now = now or utcnow()
    for edition in newsletter.editions:
        plan_edition(newsletter, edition, now)
    if newsletter.auto_digest == AutoDigest.OFF or newsletter.archived:
        newsletter.next_digest_at = None
        return
    newsletter.next_digest_at = next_run(
        newsletter.cadence,
        newsletter.send_time,
        newsletter.timezone,
        newsletter.send_weekday,
        now,
    )


def runs(newsletter: Newsletter, edition: Edition) -> bool:
    """Whether an edition's own schedule is in use: on, offered, not the cadence's edition."""
    return (
        edition.auto_digest != AutoDigest.OFF
        and not newsletter.archived
        and edition.frequency in frequencies.offered(newsletter)
        and edition.frequency != newsletter.cadence
    )


def plan_edition(newsletter: Newsletter, edition: Edition, now: datetime) -> None:
    """Set when the edition's next automatic digest is due, or None."""
    if not runs(newsletter, edition):
        edition.next_digest_at = None
        return
    edition.next_digest_at = next_run(
        edition.frequency, edition.send_time, edition.timezone, edition.send_weekday, now
    )


def run_due(session: Session, now: datetime | None = None) -> list[Digest]:
    """Compose (and, when so set, send) every automatic digest that is due; commits.

    The cadence's edition runs on the list's own schedule; each other edition on its own.
    """
    now = now or utcnow()
    due = session.scalars(
        select(Newsletter)
        .where(
            Newsletter.next_digest_at.is_not(None),
            Newsletter.next_digest_at <= now,
            Newsletter.auto_digest != AutoDigest.OFF,
            Newsletter.archived.is_(False),
        )
        .order_by(Newsletter.next_digest_at)
    ).all()
    made = []
    for newsletter in due:
        previous = newsletter.next_digest_at
        try:
            following = next_run(
                newsletter.cadence,
                newsletter.send_time,
                newsletter.timezone,
                newsletter.send_weekday,
                now,
            )
        except CadenceError as exc:
            log.warning("newsletter %s: automatic digests stopped: %s", newsletter.slug, exc)
            following = None
        taken = session.execute(
            update(Newsletter)
            .where(Newsletter.id == newsletter.id, Newsletter.next_digest_at == previous)
            .values(next_digest_at=following)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if taken.rowcount != 1:
            continue  # another worker took this run
        session.refresh(newsletter)
        digest = _compose(session, newsletter, newsletter.auto_digest, newsletter.cadence)
        if digest is not None:
            made.append(digest)
    made.extend(_run_due_editions(session, now))
    return made


def _run_due_editions(session: Session, now: datetime) -> list[Digest]:
    """The due editions with their own schedules, each taken by one worker as above."""
    due = session.scalars(
        select(Edition)
        .join(Newsletter, Newsletter.id == Edition.newsletter_id)
        .where(
            Edition.next_digest_at.is_not(None),
            Edition.next_digest_at <= now,
            Edition.auto_digest != AutoDigest.OFF,
            Newsletter.archived.is_(False),
        )
        .order_by(Edition.next_digest_at)
    ).all()
    made = []
    for edition in due:
        previous, newsletter = edition.next_digest_at, edition.newsletter
        following = None
        if runs(newsletter, edition):
            try:
                following = next_run(
                    edition.frequency,
                    edition.send_time,
                    edition.timezone,
                    edition.send_weekday,
                    now,
                )
            except CadenceError as exc:
                log.warning(
                    "newsletter %s: %s edition stopped: %s", newsletter.slug, edition.frequency, exc
                )
        taken = session.execute(
            update(Edition)
            .where(Edition.id == edition.id, Edition.next_digest_at == previous)
            .values(next_digest_at=following)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if taken.rowcount != 1 or not runs(newsletter, edition):
            continue  # another worker took this run, or the edition is no longer offered
        session.refresh(edition)
        digest = _compose(session, newsletter, edition.auto_digest, edition.frequency)
        if digest is not None:
            made.append(digest)
    return made


def _compose(
    session: Session, newsletter: Newsletter, automatic: str, frequency: str
) -> Digest | None:
    if newsletter.feed_url:
        feeds.pull(session, newsletter)
    try:
        digest = states.compose(session, newsletter, automatic=True, frequency=frequency)
    except states.NoNewItems:
        log.info("newsletter %s: no new %s items, no digest this time", newsletter.slug, frequency)
        return None
    if automatic == AutoDigest.SEND:
        try:
            readers = states.start(session, digest)
        except states.DigestError as exc:
            log.warning("newsletter %s: digest %s not sent: %s", newsletter.slug, digest.id, exc)
        else:
            log.info("newsletter %s: digest %s to %d readers", newsletter.slug, digest.id, readers)
    return digest


class CadenceRunner:
    """The worker's runner for scheduled digests: looks for due ones every `every` seconds.

    `look` composes (and starts) what is due and returns it: the lists' automatic digests by
    default, the site's combined editions with `combined.run_due`.
    """

    def __init__(
        self,
        every: float = 15.0,
        timer: Callable[[], float] = monotonic,
        look: Callable[[Session], Sized] = run_due,
    ) -> None:
        self.every = every
        self.timer = timer
        self.look = look
        self._next = 0.0

    def step(self, session: Session, stop: Event) -> int:
        """Compose the digests that are due, if it is time to look; how many it composed."""
        if self.timer() < self._next:
            return 0
        self._next = self.timer() + self.every
        return len(self.look(session))

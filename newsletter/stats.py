"""The dashboard's figures: subscriptions per status, recent activity, growth per day.

Each figure is a COUNT(*) over index ranges (per newsletter, status, window or day), so the
database reads no table rows and sorts none, and Python adds up at most one number per day.
That holds with the index named beside each statement; without it, a count per day becomes a
scan of the table per day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Date,
    ScalarSelect,
    Select,
    column,
    func,
    select,
    true,
    values,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from newsletter.models import Newsletter, Subscription, SubscriptionStatus, UTCDateTime

# Subscriptions that may count as confirmed: a new signup makes one pending again and
# clears its times.
NOT_PENDING = tuple(status for status in SubscriptionStatus if status != SubscriptionStatus.PENDING)
# The activity windows, shortest first.
WINDOWS = (timedelta(hours=24), timedelta(days=7), timedelta(days=30))
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Activity:
    """Signups and unsubscribes of one newsletter in the last 24 hours, 7 days and 30 days."""

    signups_24h: int = 0
    signups_7d: int = 0
    signups_30d: int = 0
    unsubscribes_24h: int = 0
    unsubscribes_7d: int = 0
    unsubscribes_30d: int = 0


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def _days(first: date, days: int) -> list[date]:
    return [first + offset * DAY for offset in range(days)]


_OF_THE_ROW = Subscription.newsletter_id == Newsletter.id


def _count(*conditions: ColumnElement[bool]) -> ScalarSelect[int]:
    """COUNT(*) of the subscriptions meeting every condition, as one value of the outer row."""
    return select(func.count()).select_from(Subscription).where(*conditions).scalar_subquery()


def _per_open_newsletter(*counts: ColumnElement[Any]) -> Select[Any]:
    return (
        select(Newsletter.id, *counts)
        .where(Newsletter.archived.is_(False))
        .order_by(Newsletter.position, Newsletter.id)
    )


# One row per open newsletter: its subscriptions in each status.
# Index: ix_subscription_newsletter_status (newsletter_id, status).
STATUS_COUNTS = _per_open_newsletter(
    *(
        _count(_OF_THE_ROW, Subscription.status == status).label(status)
        for status in SubscriptionStatus
    )
)


def recent_activity(now: datetime) -> Select[Any]:
    """One row per open newsletter: signups, then unsubscribes, in each window (now - w, now].

    Indexes: ix_subscription_newsletter_subscribed, ix_subscription_newsletter_unsubscribed.
    """

    def within(moment: InstrumentedAttribute[Any]) -> list[ScalarSelect[int]]:
        return [_count(_OF_THE_ROW, moment > now - w, moment <= now) for w in WINDOWS]

    return _per_open_newsletter(
        *within(Subscription.subscribed_at), *within(Subscription.unsubscribed_at)
    )


def _chosen(newsletter_id: int | None) -> ColumnElement[bool]:
    """The newsletters a growth figure covers: the one asked for, or every open one."""
    if newsletter_id is None:
        return Newsletter.archived.is_(False)
    return Newsletter.id == newsletter_id


def confirmed_before(moment: datetime, newsletter_id: int | None = None) -> Select[Any]:
    """Subscriptions confirmed before `moment` less those that left before it.

    A subscription leaves after its confirmation (confirming clears unsubscribed_at).
    Counted per newsletter row, so that PostgreSQL too reads an index range per list
    rather than the whole table.
    Indexes: ix_subscription_newsletter_confirmed, ix_subscription_newsletter_unsubscribed.
    """
    not_pending = Subscription.status.in_(NOT_PENDING)
    per_list = _count(_OF_THE_ROW, not_pending, Subscription.confirmed_at < moment) - _count(
        _OF_THE_ROW,
        not_pending,
        Subscription.confirmed_at.is_not(None),
        Subscription.unsubscribed_at < moment,
    )
    return select(func.coalesce(func.sum(per_list), 0)).where(_chosen(newsletter_id))


def _day_bounds(first: date, days: int) -> Any:
    return (
        values(
            column("day", Date),
            column("since", UTCDateTime),
            column("until", UTCDateTime),
            name="days",
        )
        .data([(day, _midnight(day), _midnight(day + DAY)) for day in _days(first, days)])
        .cte("days")
    )


def confirmed_before_each(moment: datetime) -> Select[Any]:
    """One row per open newsletter: its subscriptions confirmed before `moment`, less departures.

    As `confirmed_before`, one count per list, without the sum. Indexes: as its.
    """
    not_pending = Subscription.status.in_(NOT_PENDING)
    per_list = _count(_OF_THE_ROW, not_pending, Subscription.confirmed_at < moment) - _count(
        _OF_THE_ROW,
        not_pending,
        Subscription.confirmed_at.is_not(None),
        Subscription.unsubscribed_at < moment,
    )
    return _per_open_newsletter(per_list)


def changes_per_day_each(first: date, days: int) -> Select[Any]:
    """Per UTC day and open newsletter: confirmations, and departures of confirmed ones.

    The same index ranges as `changes_per_day` of all open lists (whose IN list reads one range
    per list anyway), so every list's series costs what the combined one does.
    """
    bounds = _day_bounds(first, days)
    return (
        select(
            bounds.c.day,
            Newsletter.id,
            *_joined_and_left(_OF_THE_ROW, bounds),
        )
        .select_from(bounds)
        .join(Newsletter, true())
        .where(Newsletter.archived.is_(False))
        .order_by(bounds.c.day, Newsletter.id)
    )


def changes_per_day(first: date, days: int, newsletter_id: int | None = None) -> Select[Any]:
    """Per UTC day from `first` on: confirmations, and departures of confirmed subscriptions.

    The day bounds are sent as values, so no database has to cut timestamps into dates.
    Leaving a list that was never confirmed changes no confirmed count, hence confirmed_at.
    Indexes: as confirmed_before's.
    """
    bounds = _day_bounds(first, days)
    lists = Subscription.newsletter_id.in_(select(Newsletter.id).where(_chosen(newsletter_id)))
    return select(bounds.c.day, *_joined_and_left(lists, bounds)).order_by(bounds.c.day)


def _joined_and_left(scope: Any, bounds: Any) -> tuple[Any, Any]:
    """A day's confirmations and departures of confirmed subscriptions, within `scope`."""
    not_pending = Subscription.status.in_(NOT_PENDING)
    joined = _count(
        scope,
        not_pending,
        Subscription.confirmed_at >= bounds.c.since,
        Subscription.confirmed_at < bounds.c.until,
    )
    left = _count(
        scope,
        not_pending,
        Subscription.confirmed_at.is_not(None),
        Subscription.unsubscribed_at >= bounds.c.since,
        Subscription.unsubscribed_at < bounds.c.until,
    )
    return joined, left


def status_counts(session: Session) -> dict[int, dict[str, int]]:
    """Per open newsletter, in the site's order, its subscriptions in each status."""
    return {
        row.id: {status.value: row._mapping[status] for status in SubscriptionStatus}
        for row in session.execute(STATUS_COUNTS)
    }


def activity(session: Session, now: datetime) -> dict[int, Activity]:
    """Per open newsletter, signups and unsubscribes in the windows (now - 24h/7d/30d, now]."""
    return {row[0]: Activity(*row[1:]) for row in session.execute(recent_activity(_utc(now)))}


def growth(
    session: Session, now: datetime, days: int = 90, newsletter_id: int | None = None
) -> list[tuple[date, int]]:
    """Confirmed subscriptions at the end of each of the last `days` UTC days, today last.

    One newsletter's, or those of all open newsletters together (a reader of two lists
    counts twice). The history is read from each subscription's current timestamps: a
    reader who left and came back counts from the later confirmation only.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    first = _utc(now).date() - (days - 1) * DAY
    # PostgreSQL sums counts as numeric.
    count = int(session.scalar(confirmed_before(_midnight(first), newsletter_id)) or 0)
    points = []
    for day, confirmations, departures in session.execute(
        changes_per_day(first, days, newsletter_id)
    ):
        count += confirmations - departures
        points.append((day, count))
    return points


def growth_each(
    session: Session, now: datetime, days: int = 90
) -> dict[int, list[tuple[date, int]]]:
    """`growth` of every open newsletter, in two statements whatever their number."""
    if days < 1:
        raise ValueError("days must be at least 1")
    first = _utc(now).date() - (days - 1) * DAY
    counts = {
        row[0]: int(row[1] or 0) for row in session.execute(confirmed_before_each(_midnight(first)))
    }
    points: dict[int, list[tuple[date, int]]] = {newsletter_id: [] for newsletter_id in counts}
    for day, newsletter_id, confirmations, departures in session.execute(
        changes_per_day_each(first, days)
    ):
        counts[newsletter_id] += confirmations - departures
        points.setdefault(newsletter_id, []).append((day, counts[newsletter_id]))
    return points


def combined(series: dict[int, list[tuple[date, int]]]) -> list[tuple[date, int]]:
    """Several lists' daily counts added up day by day (a reader of two lists counts twice)."""
    totals: dict[date, int] = {}
    for points in series.values():
        for day, count in points:
            totals[day] = totals.get(day, 0) + count
    return sorted(totals.items())

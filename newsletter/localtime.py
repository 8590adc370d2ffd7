"""Times as an editor or a reader of one newsletter reads them: in the newsletter's time zone."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask_babel import format_datetime

# How a moment reads in mails and on the admin's pages, in the reader's language.
LONG = "d MMMM y, HH:mm"
SHORT = "d MMM y, HH:mm"


def zone(name: str | None) -> tzinfo:
    """The IANA time zone of that name; UTC when the name is empty or unknown here."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def in_zone(moment: datetime | None, zone_name: str | None, pattern: str = LONG) -> str:
    """A moment (UTC) as the clock reads in that zone, such as 5 December 2026, 12:00."""
    if moment is None:
        return "—"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_datetime(moment.astimezone(zone(zone_name)), pattern, rebase=False)


def to_utc(local: datetime, zone_name: str | None) -> datetime:
    """A wall-clock time given in that zone, as a moment in UTC."""
    return local.replace(tzinfo=zone(zone_name)).astimezone(UTC)

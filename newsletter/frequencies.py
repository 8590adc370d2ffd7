"""How often a reader hears from a list: the frequencies a list offers and the editions.

A list offers some of *as it happens* (breaking alerts), *daily* and *weekly*; a reader's
subscription stores one of them, or none, which keeps the list's own cadence as before
frequencies existed. The list's digests come in editions, one per frequency: a digest of
the daily edition goes to the readers whose edition is daily.

A subscription's edition is its frequency when that is daily or weekly, otherwise the
list's cadence: readers of alerts get the breaking news at once and the regular edition
(what their alert cap held back is in it). A reader who chose one combined mail gets the
site's combined edition of that frequency instead of each list's own.
"""

from __future__ import annotations

from collections.abc import Iterable

from flask import current_app, has_app_context
from flask_babel import gettext, lazy_gettext
from sqlalchemy import ColumnElement, case, literal

from newsletter.models import Newsletter, Subscription

ALERT = "alert"
DAILY = "daily"
WEEKLY = "weekly"
FREQUENCIES = (ALERT, DAILY, WEEKLY)
# Frequencies that are editions of digests; alerts go out one item at a time.
EDITIONS = (DAILY, WEEKLY)
# How each reads to an editor and a reader.
LABELS = {
    ALERT: lazy_gettext("As it happens"),
    DAILY: lazy_gettext("Daily"),
    WEEKLY: lazy_gettext("Weekly"),
}
# An edition's name on a digest: the cadences besides daily and weekly too.
EDITION_LABELS = {**LABELS, "monthly": lazy_gettext("Monthly")}
# Breaking alerts one reader gets at most in 24 hours, across all lists, unless configured.
ALERTS_PER_DAY = 3


def parse(text: str | None) -> tuple[str, ...]:
    """The frequencies named in a stored or submitted list, in their canonical order."""
    named = {part.strip().lower() for part in (text or "").split(",")}
    return tuple(f for f in FREQUENCIES if f in named)


def unknown(text: str | None) -> list[str]:
    """What a submitted list names that is not a frequency, to tell the editor."""
    parts = [part.strip() for part in (text or "").split(",") if part.strip()]
    return [part for part in parts if part.lower() not in FREQUENCIES]


def join(frequencies: Iterable[str]) -> str:
    """The stored form of a choice of frequencies."""
    return ",".join(f for f in FREQUENCIES if f in set(frequencies))


def offered(newsletter: Newsletter) -> tuple[str, ...]:
    """What a reader of the list may choose; empty when the list offers no choice."""
    return parse(newsletter.frequencies)


def default(newsletter: Newsletter) -> str | None:
    """The choice preselected for a new reader: the editor's default if offered, else None."""
    choices = offered(newsletter)
    if newsletter.default_frequency in choices:
        return newsletter.default_frequency
    return None


def valid_choice(newsletter: Newsletter, frequency: str | None) -> bool:
    """Whether a reader may store `frequency` on a subscription to the list."""
    return frequency is None or frequency in offered(newsletter)


def editions(newsletter: Newsletter) -> tuple[str, ...]:
    """The list's editions: its cadence's, then each other daily or weekly one it offers."""
    others = [f for f in offered(newsletter) if f in EDITIONS and f != newsletter.cadence]
    return (newsletter.cadence, *others)


def edition_name(frequency: str | None) -> str:
    """How a digest's edition reads to an editor: whom it goes to."""
    if frequency is None:
        return gettext("Every reader")
    if frequency == ALERT:
        return gettext("Breaking alert")
    return gettext("%(edition)s edition", edition=EDITION_LABELS.get(frequency, frequency))


def edition(frequency: str | None, cadence: str) -> str:
    """The edition a subscription with `frequency` reads, on a list of that cadence."""
    return frequency if frequency in EDITIONS else cadence


def edition_of(cadence: ColumnElement[str] | str) -> ColumnElement[str]:
    """SQL: a subscription's edition, given its list's cadence (a column or a value)."""
    fallback = literal(cadence) if isinstance(cadence, str) else cadence
    return case(
        (Subscription.frequency.in_(EDITIONS), Subscription.frequency),
        else_=fallback,
    )


def alerts_per_day() -> int:
    """How many breaking alerts one reader gets at most in any 24 hours, across all lists.

    NEWSLETTER_ALERTS_PER_DAY; what the cap holds back waits for the reader's next edition.
    """
    if not has_app_context():
        return ALERTS_PER_DAY
    return max(0, int(current_app.config.get("ALERTS_PER_DAY", ALERTS_PER_DAY)))

"""A list's archive: which digests it shows, their addresses, its pages, who opens a private one.

An edition's address names the list, the digest's id and the day it started going out (UTC):
none of them changes once the first mail has left, so a "View in browser" link keeps working.
Breaking alerts are left out: their item comes again in the next edition, which is archived.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from newsletter.errors import UserError
from newsletter.frequencies import ALERT
from newsletter.languages import lazy_gettext
from newsletter.links import ARCHIVE, PATHS, ArchiveLink, LinkNoLongerValid
from newsletter.models import (
    Digest,
    DigestStatus,
    Newsletter,
    Subscriber,
    Subscription,
    SubscriptionStatus,
)

# Editions on one page of a list's archive, and in its feed.
PAGE_SIZE = 20
FEED_SIZE = 20
# An edition's page answers from the first mail on: readers follow "View in browser" while
# the rest are still being sent. A cancelled digest was withdrawn: it has no page.
OPEN = (DigestStatus.SENDING, DigestStatus.PAUSED, DigestStatus.SENT)
# Listed, and in the feed, once it has gone to every reader.
LISTED = (DigestStatus.SENT,)


class ArchiveError(UserError):
    """An archive page that cannot be shown."""


class NoSuchEdition(ArchiveError):
    message = lazy_gettext("There is no such edition of this newsletter.")


class NoSuchPage(ArchiveError):
    message = lazy_gettext("This archive has no such page.")


class ReadersOnly(ArchiveError):
    message = lazy_gettext(
        "The archive of this newsletter is open to its readers only: open it from the "
        "\u201cView in browser\u201d link in one of its mails."
    )


@dataclass(frozen=True)
class Page:
    """One page of a list's archive, newest first."""

    editions: Sequence[Digest]
    number: int
    more: bool  # an older page follows


def _kept(query: Select[tuple[Digest]]) -> Select[tuple[Digest]]:
    """Alerts left out (a NULL frequency is an editor's one-off mailing: kept)."""
    return query.where(or_(Digest.frequency.is_(None), Digest.frequency != ALERT))


def list_path(newsletter: Newsletter) -> str:
    """The list's archive page, under the base URL."""
    return PATHS[ARCHIVE] + quote(newsletter.slug, safe="")


def edition_path(digest: Digest) -> str | None:
    """The edition's own page, under the base URL; None before it starts or for an alert."""
    if digest.started_at is None or digest.frequency == ALERT:
        return None
    return f"{list_path(digest.newsletter)}/{edition_name(digest)}"


def edition_name(digest: Digest) -> str:
    """The last part of a started edition's address: its id and its day."""
    assert digest.started_at is not None
    return f"{digest.id}-{digest.started_at.date().isoformat()}"


def mail_path(digest: Digest) -> str | None:
    """Where a digest's "View in browser" leads: its page; before it starts (an editor's test
    copy or preview) the list's archive, where the page will be; an alert or a combined
    edition (each list's own edition is archived) has none."""
    if digest.frequency == ALERT or digest.newsletter is None:
        return None
    return edition_path(digest) or list_path(digest.newsletter)


def listed(newsletter_id: int) -> Select[tuple[Digest]]:
    """A list's editions sent to every reader, newest first."""
    return _kept(
        select(Digest)
        .where(Digest.newsletter_id == newsletter_id, Digest.status.in_(LISTED))
        .order_by(Digest.started_at.desc(), Digest.id.desc())
    )


def page(session: Session, newsletter: Newsletter, number: int) -> Page:
    """Page `number` (from 1) of the list's archive; NoSuchPage past the last one.

    An archive with no edition yet has a first page, which says so.
    """
    if number < 1:
        raise NoSuchPage()
    query = listed(newsletter.id).offset((number - 1) * PAGE_SIZE).limit(PAGE_SIZE + 1)
    found = list(session.scalars(query))
    if not found and number > 1:
        raise NoSuchPage()
    return Page(found[:PAGE_SIZE], number, len(found) > PAGE_SIZE)


def latest(session: Session, newsletter: Newsletter) -> list[Digest]:
    """The editions the list's feed carries."""
    return list(session.scalars(listed(newsletter.id).limit(FEED_SIZE)))


def edition(session: Session, newsletter: Newsletter, digest_id: int) -> Digest:
    """An edition of this list that has a page; NoSuchEdition otherwise."""
    digest = session.scalar(
        _kept(
            select(Digest).where(
                Digest.id == digest_id,
                Digest.newsletter_id == newsletter.id,
                Digest.status.in_(OPEN),
                Digest.started_at.is_not(None),
            )
        )
    )
    if digest is None:
        raise NoSuchEdition()
    return digest


def reader(session: Session, newsletter: Newsletter, link: ArchiveLink) -> Subscriber:
    """The reader a private archive's link opens it for: a confirmed reader of that list.

    LinkNoLongerValid when the link is another list's, or its reader has left or was erased.
    """
    subscriber = session.get(Subscriber, link.reader.subscriber_id)
    if (
        link.newsletter_id != newsletter.id
        or subscriber is None
        or subscriber.token_key != link.reader.key
    ):
        raise LinkNoLongerValid()
    confirmed = session.scalar(
        select(Subscription.id).where(
            Subscription.subscriber_id == subscriber.id,
            Subscription.newsletter_id == newsletter.id,
            Subscription.status == SubscriptionStatus.CONFIRMED,
        )
    )
    if confirmed is None:
        raise LinkNoLongerValid()
    return subscriber

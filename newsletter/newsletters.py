"""Newsletters: finding them by slug, the open ones, and the editor's create, change, archive."""

from __future__ import annotations

from collections.abc import Mapping

from flask_babel import gettext as _
from flask_babel import lazy_gettext
from sqlalchemy import select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter import frequencies
from newsletter.addresses import sender_address
from newsletter.digests import cadence
from newsletter.errors import UserError
from newsletter.models import Edition, Newsletter, Subscription

# What an editor may set; everything else about a newsletter is the service's business.
FIELDS = (
    "name",
    "slug",
    "description",
    "cadence",
    "from_name",
    "from_address",
    "reply_to",
    "prompt_text",
    "button_text",
    "thanks_text",
    "welcome_text",
    "welcome_enabled",
    "altcha",
    "archive_public",
    "feed_url",
    "alert_categories",
    "send_time",
    "timezone",
    "send_weekday",
    "auto_digest",
    "frequencies",
    "default_frequency",
    "weekly_max_items",
)
# Addresses mail goes out with: stored in the form every mail server takes.
ADDRESS_FIELDS = ("from_address", "reply_to")
# The settings that decide when the next automatic digest is due.
SCHEDULE_FIELDS = (
    "cadence",
    "send_time",
    "timezone",
    "send_weekday",
    "auto_digest",
    "frequencies",
)
# What an editor may set of an edition's own schedule.
EDITION_FIELDS = ("send_time", "timezone", "send_weekday", "auto_digest")


class UnknownNewsletter(UserError):
    message = lazy_gettext("We have no newsletter by that name.")


class SlugTaken(UserError):
    message = lazy_gettext("Another newsletter has this slug.")


def by_slug(session: Session, slug: str, *, open_only: bool = False) -> Newsletter:
    """The newsletter with this slug (only an open one, if asked); else UnknownNewsletter."""
    query = select(Newsletter).where(Newsletter.slug == slug)
    if open_only:
        query = query.where(Newsletter.archived.is_(False))
    newsletter = session.scalar(query)
    if newsletter is None:
        if open_only:
            message = _("There is no open newsletter with slug %(slug)r.", slug=slug[:64])
        else:
            message = _("There is no newsletter with slug %(slug)r.", slug=slug[:64])
        raise UnknownNewsletter(message)
    return newsletter


def open_newsletters(session: Session) -> list[Newsletter]:
    """The lists a reader can join, in the site's order."""
    return list(
        session.scalars(
            select(Newsletter)
            .where(Newsletter.archived.is_(False))
            .order_by(Newsletter.position, Newsletter.id)
        )
    )


def all_newsletters(session: Session) -> list[Newsletter]:
    """Every newsletter, open ones first, in the site's order."""
    return list(
        session.scalars(
            select(Newsletter).order_by(Newsletter.archived, Newsletter.position, Newsletter.id)
        )
    )


def save(
    session: Session,
    newsletter: Newsletter | None,
    values: Mapping[str, object],
    editions: Mapping[str, Mapping[str, object]] | None = None,
) -> Newsletter:
    """Create a newsletter, or change one, from validated values; commits.

    `editions`: the schedules of its daily and weekly editions, by frequency. The sender
    addresses are checked here, whoever saves them (InvalidSender says why).
    """
    values = dict(values)
    for field in ADDRESS_FIELDS:
        if values.get(field):
            values[field] = sender_address(str(values[field]))
    if newsletter is None:
        last = session.scalar(select(Newsletter.position).order_by(Newsletter.position.desc()))
        newsletter = Newsletter(position=(last or 0) + 1)
        session.add(newsletter)
    rescheduled = newsletter.id is None
    for field in FIELDS:
        if field in values:
            rescheduled |= field in SCHEDULE_FIELDS and getattr(newsletter, field) != values[field]
            setattr(newsletter, field, values[field])
    for frequency, settings in (editions or {}).items():
        rescheduled |= _save_edition(newsletter, frequency, settings)
    try:
        # Flushed first, so the schedule sees the list with its id and new settings.
        session.flush()
        _forget_withdrawn_choices(session, newsletter)
        if rescheduled:
            # Set when the next automatic digest is due, committed with the settings.
            cadence.plan(newsletter)
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise SlugTaken() from exc
    return newsletter


def _forget_withdrawn_choices(session: Session, newsletter: Newsletter) -> None:
    """Readers whose choice the list no longer offers get its cadence again, rather than an
    edition that no longer goes out (a signup with such a choice counts as none, too)."""
    offered = frequencies.offered(newsletter)
    session.execute(
        update(Subscription)
        .where(
            Subscription.newsletter_id == newsletter.id,
            Subscription.frequency.is_not(None),
            Subscription.frequency.not_in(offered) if offered else true(),
        )
        .values(frequency=None)
        .execution_options(synchronize_session=False)
    )


def _save_edition(newsletter: Newsletter, frequency: str, settings: Mapping[str, object]) -> bool:
    """Keep one edition's schedule; whether it changed."""
    edition = next((e for e in newsletter.editions if e.frequency == frequency), None)
    if edition is None:
        edition = Edition(frequency=frequency)
        newsletter.editions.append(edition)
    changed = False
    for field in EDITION_FIELDS:
        if field in settings and getattr(edition, field) != settings[field]:
            setattr(edition, field, settings[field])
            changed = True
    return changed or edition.id is None


def set_archived(session: Session, newsletter: Newsletter, archived: bool) -> None:
    """Close a newsletter to signups (its subscribers and history stay), or open it again."""
    newsletter.archived = archived
    # An archived list sends no automatic digests; reopened, it picks its cadence up again.
    cadence.plan(newsletter)
    session.commit()

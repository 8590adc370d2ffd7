"""Newsletters as the editor manages them: create, change, archive."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.models import Newsletter

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
)


class SlugTaken(Exception):
    """Another newsletter has this slug."""


def all_newsletters(session: Session) -> list[Newsletter]:
    """Every newsletter, open ones first, in the site's order."""
    return list(
        session.scalars(
            select(Newsletter).order_by(Newsletter.archived, Newsletter.position, Newsletter.id)
        )
    )


def save(
    session: Session, newsletter: Newsletter | None, values: Mapping[str, object]
) -> Newsletter:
    """Create a newsletter, or change one, from validated values; commits."""
    if newsletter is None:
        last = session.scalar(select(Newsletter.position).order_by(Newsletter.position.desc()))
        newsletter = Newsletter(position=(last or 0) + 1)
        session.add(newsletter)
    for field in FIELDS:
        if field in values:
            setattr(newsletter, field, values[field])
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise SlugTaken(str(values.get("slug"))) from exc
    return newsletter


def set_archived(session: Session, newsletter: Newsletter, archived: bool) -> None:
    """Close a newsletter to signups (its subscribers and history stay), or open it again."""
    newsletter.archived = archived
    session.commit()

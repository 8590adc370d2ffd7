"""A newsletter's own texts in the reader's language: its version in that language, else its own."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from flask import g, has_request_context
from flask_babel import get_locale, lazy_gettext
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.extensions import db
from newsletter.languages import DEFAULT
from newsletter.models import (
    DEFAULT_BUTTON,
    DEFAULT_PROMPT,
    DEFAULT_THANKS,
    Newsletter,
    NewsletterText,
)

# The texts an editor can give per language, in the order the admin form shows them.
FIELDS = ("name", "description", "prompt_text", "button_text", "thanks_text", "welcome_text")

# A new newsletter's box starts with our words: they stay ours, shown in the reader's
# language, until an editor writes their own.
OURS: Mapping[str, Any] = {
    DEFAULT_PROMPT: lazy_gettext("Enter your email to subscribe"),
    DEFAULT_BUTTON: lazy_gettext("Subscribe"),
    DEFAULT_THANKS: lazy_gettext(
        "Thank you for signing up for this newsletter. We\u2019ve sent you a confirmation email."
    ),
}


# Where a request keeps the versions it read: web/language.py forgets them after it.
CACHE = "newsletter_texts"
# Where the worker keeps them while it builds one mail (`one_reading`).
_READING: ContextVar[dict[str, dict[int, NewsletterText]] | None] = ContextVar(
    "newsletter_texts_reading", default=None
)


class HasTexts(Protocol):
    """A newsletter or a row of one: its id and its own texts."""

    id: int


def versions(session: Session, locale: str) -> dict[int, NewsletterText]:
    """Every newsletter's version in one language, by newsletter id."""
    found = session.scalars(select(NewsletterText).where(NewsletterText.locale == locale))
    return {version.newsletter_id: version for version in found}


def text(newsletter: HasTexts, field: str, version: NewsletterText | None) -> str:
    """One of a newsletter's texts as a reader of `version`'s language reads it."""
    if field not in FIELDS:
        raise ValueError(f"no text {field!r}")
    given = getattr(version, field, "") if version is not None else ""
    if given:
        return str(given)
    own = str(getattr(newsletter, field) or "")
    ours = OURS.get(own)
    return str(ours) if ours is not None else own


@contextmanager
def one_reading() -> Iterator[None]:
    """Within it, outside a request, each language's versions are read once: a mail's
    subject, text and HTML parts name a list several times, and read what is there now."""
    token = _READING.set({})
    try:
        yield
    finally:
        _READING.reset(token)


def _current_versions() -> dict[int, NewsletterText]:
    locale = str(get_locale() or DEFAULT)
    if not has_request_context():
        # The worker's app context lives for hours: no cache there beyond one mail
        # (`one_reading`), editors change texts.
        reading = _READING.get()
        if reading is None:
            return versions(db.session, locale)
        cached = reading
    else:
        cached = g.setdefault(CACHE, {})
    if locale not in cached:
        cached[locale] = versions(db.session, locale)
    return cached[locale]


def local(newsletter: HasTexts, field: str) -> str:
    """A newsletter's text in the current language: the request's, or the one a mail forces."""
    return text(newsletter, field, _current_versions().get(newsletter.id))


def version(session: Session, newsletter: Newsletter, locale: str) -> NewsletterText | None:
    """A newsletter's version in one language, if an editor gave one."""
    return session.scalar(
        select(NewsletterText).where(
            NewsletterText.newsletter_id == newsletter.id, NewsletterText.locale == locale
        )
    )


def save(session: Session, newsletter: Newsletter, locale: str, values: Mapping[str, str]) -> None:
    """Keep a newsletter's texts in one language; with every field empty, none is kept; commits."""
    found = version(session, newsletter, locale)
    cleaned = {field: (values.get(field) or "").strip() for field in FIELDS}
    if not any(cleaned.values()):
        if found is not None:
            session.delete(found)
            session.commit()
        return
    if found is None:
        found = NewsletterText(newsletter_id=newsletter.id, locale=locale)
        session.add(found)
    for field, value in cleaned.items():
        setattr(found, field, value)
    session.commit()

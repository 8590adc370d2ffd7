"""What every signup endpoint shares: reading the fields, the rules' call, the reply."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from typing import Any

from flask import current_app, request
from flask_babel import gettext, lazy_gettext
from sqlalchemy import Row
from werkzeug.datastructures import MultiDict

from newsletter import frequencies, languages, metrics, signups, texts
from newsletter import subscriptions as subs
from newsletter.addresses import InvalidEmail, normalize_email
from newsletter.extensions import db
from newsletter.models import DEFAULT_THANKS, utcnow
from newsletter.newsletters import UnknownNewsletter
from newsletter.texts import OURS
from newsletter.web import challenge, language, limits

HONEYPOT = "leave_blank"
# How long a process trusts its copy of the open lists and their texts; an editor's change
# in this process clears it at once (`forget`), a slug it does not know reads them again.
LISTS_CACHE_SECONDS = 10.0
# The least time between two reads for a slug the copy does not know: a flood of unknown
# slugs costs one read a second.
LISTS_REREAD_SECONDS = 1.0
SUCCESS_TITLE = lazy_gettext("Successfully subscribed")
THANKS_SEVERAL = lazy_gettext(
    "Thank you for signing up for these newsletters. We\u2019ve sent you one confirmation "
    "email for all of them."
)
# Control characters (NUL among them) never reach the database or a page.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _subscribe_limit() -> str:
    return str(current_app.config["SUBSCRIBE_RATE_LIMIT"])


# One per-IP budget for the form, the JSON API and the embed script together.
rate_limit = limits.shared_limit(_subscribe_limit, scope="subscribe", methods=("POST",))


def printable(value: str | None, limit: int) -> str:
    """Text from a request, without control characters, cut to `limit`."""
    return _CONTROL.sub("", value or "")[:limit]


def consent_origin(source: str | None = None) -> subs.Origin:
    """Who is asking, and when, for the consent trail."""
    return subs.Origin(
        source=printable(source or request.endpoint or "web", 100),
        ip=request.remote_addr,
        user_agent=_agent(request.headers.get("User-Agent")),
        at=utcnow(),
    )


_OPEN_LISTS = "newsletter.open_lists"


@lru_cache(maxsize=256)
def _agent(header: str | None) -> str | None:
    # Most signups come from a few browsers' User-Agent headers: each is cleaned once.
    return printable(header, 400) or None


@dataclass
class _OpenLists:
    """The open lists as last read, their thank-you texts per language, and when to read
    them again."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    rows: list[Row[Any]] = field(default_factory=list)
    thanks: dict[str, dict[int, str]] = field(default_factory=dict)
    read_at: float = float("-inf")
    expires: float = 0.0


def _lists_state() -> _OpenLists:
    found: _OpenLists | None = current_app.extensions.get(_OPEN_LISTS)
    if found is None:
        # Made once per app, not as a default argument on each of a signup's three looks.
        found = current_app.extensions.setdefault(_OPEN_LISTS, _OpenLists())
    return found


def _read_lists(state: _OpenLists, now: float) -> None:
    rows = list(db.session.connection().execute(subs.OPEN_NEWSLETTERS))
    with state.lock:
        state.rows, state.thanks = rows, {}
        state.read_at, state.expires = now, now + LISTS_CACHE_SECONDS


def forget_lists() -> None:
    """Read the open lists again on this process's next signup (an editor changed one)."""
    _lists_state().expires = 0.0


def open_lists(slugs: Sequence[str] = ()) -> list[Row[Any]]:
    """The open lists with their box texts, in the site's order, from this process's copy.

    The copy is read again when it is old, or when it lacks one of `slugs` (a list made
    since) and was not read in the last second.
    """
    state = _lists_state()
    now = time.monotonic()
    if now >= state.expires:
        _read_lists(state, now)
    elif slugs and now - state.read_at >= LISTS_REREAD_SECONDS:
        known = {row.slug for row in state.rows}
        if any(slug not in known for slug in slugs):
            _read_lists(state, now)
    return state.rows


def chosen_lists(slugs: Sequence[str]) -> list[Row[Any]]:
    """The open lists of these slugs, in the site's order; NoNewsletterChosen when none is
    named, UnknownNewsletter when one is not an open list."""
    wanted = list(dict.fromkeys(s.strip() for s in slugs if s and s.strip()))
    if not wanted:
        raise subs.NoNewsletterChosen()
    chosen = [row for row in open_lists(wanted) if row.slug in wanted]
    if len(chosen) != len(wanted):
        raise UnknownNewsletter()
    return chosen


def thanks_text(newsletter: Row[Any]) -> str:
    """A list's thank-you text in the answer's language, from this process's copy."""
    state = _lists_state()
    locale = language.current()
    by_id = state.thanks.get(locale)
    if by_id is None:
        versions = texts.versions(db.session, locale)
        by_id = {row.id: texts.text(row, "thanks_text", versions.get(row.id)) for row in state.rows}
        state.thanks[locale] = by_id
    found = by_id.get(newsletter.id)
    return found if found is not None else texts.text(newsletter, "thanks_text", None)


def confirmation_limit() -> subs.ConfirmationLimit:
    """The per-address limit on confirmation mails, from configuration."""
    cfg = current_app.config
    return subs.ConfirmationLimit(
        count=int(cfg["CONFIRMATIONS_PER_ADDRESS"]),
        window=timedelta(seconds=int(cfg["CONFIRMATION_WINDOW"])),
    )


def json_body() -> dict[str, Any] | None:
    """The request's JSON object, or None for anything else (malformed, too deep, a list)."""
    try:
        data = request.get_json(silent=True)
    except RecursionError:
        return None
    return data if isinstance(data, dict) else None


@dataclass
class SignupReply:
    """What any signup form or API call answers."""

    status: int
    message: str
    field: str | None = None
    title: str = ""  # empty: ours, "Successfully subscribed", in the answer's language

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def heading(self) -> str:
        return self.title or str(SUCCESS_TITLE)

    def as_json(self) -> dict[str, object]:
        body: dict[str, object] = {"ok": self.ok, "message": self.message}
        if self.ok:
            body["title"] = self.heading
        else:
            body["field"] = self.field
        return body


@dataclass(frozen=True)
class SignupFields:
    email: str
    slugs: list[str]
    honeypot: str
    source: str | None
    lang: str | None = None  # as sent: `lang` of the box (the snippet's data-lang)
    altcha: object = None  # the proof of work's solution, when the box asks for one
    frequency: object = None  # how often, when the box offers the choice


def fields(data: Mapping[str, Any], default_source: str | None = None) -> SignupFields:
    """Email, newsletter slugs, honeypot and source from a form or a JSON object."""
    if isinstance(data, MultiDict):
        raw: object = data.getlist("newsletter") or data.getlist("newsletters")
    else:
        raw = data.get("newsletters", data.get("newsletter", []))
    if isinstance(raw, str):
        raw = [raw]
    slugs = [s[:64] for s in raw if isinstance(s, str)][:20] if isinstance(raw, list) else []

    def text(name: str) -> str:
        value = data.get(name)
        return value if isinstance(value, str) else ""

    source = printable(text("source"), 100) or default_source
    lang = data.get("lang")
    lang = lang if lang else None
    frequency = data.get("frequency")
    return SignupFields(
        text("email"),
        slugs,
        text(HONEYPOT),
        source,
        lang,
        data.get("altcha"),
        frequency if frequency else None,
    )


def unknown_language(lang: object) -> str | None:
    """What is wrong with a box's `lang`, or None when it is absent or one of ours."""
    if lang is None or (isinstance(lang, str) and lang in languages.LANGUAGES):
        return None
    return gettext("We write in English (en) or Ukrainian (uk) only.")


def unknown_frequency() -> str:
    """What a box that names no frequency of ours is told."""
    return gettext("Choose how often: as it happens (alert), daily or weekly.")


def frequency_refusal(frequency: object, chosen: Sequence[Row[Any]]) -> str | None:
    """What is wrong with a box's choice of how often, or None when it is absent or offered
    by every list chosen. Read from this process's copy of the lists."""
    if frequency is None:
        return None
    if not isinstance(frequency, str) or frequency not in frequencies.FREQUENCIES:
        return unknown_frequency()
    for row in chosen:
        offered = frequencies.parse(row.frequencies)
        if frequency not in offered:
            if not offered:
                return gettext("%(name)s offers no choice of how often.", name=row.name)
            return gettext(
                "%(name)s is not sent %(frequency)s: choose %(choices)s.",
                name=row.name,
                frequency=str(frequencies.LABELS[frequency]).lower(),
                choices=", ".join(str(frequencies.LABELS[f]).lower() for f in offered),
            )
    return None


def _thanks(slugs: list[str]) -> SignupReply:
    """The thank-you text of the lists chosen: a list's own; for several, ours in the plural
    unless they all say the same words of an editor's. Read from this process's copy."""
    wanted = set(slugs)
    chosen = [row for row in open_lists() if row.slug in wanted]
    if len(chosen) == 1:
        return SignupReply(200, thanks_text(chosen[0]))
    own = {thanks_text(n) for n in chosen if n.thanks_text != DEFAULT_THANKS}
    if len(own) == 1 and all(n.thanks_text != DEFAULT_THANKS for n in chosen):
        return SignupReply(200, own.pop())
    return SignupReply(200, str(THANKS_SEVERAL if chosen else OURS[DEFAULT_THANKS]))


def signup(given: SignupFields) -> SignupReply:
    """Take a signup from any form or API call and say what the reader should see.

    What is checked here reads nothing about the address: it is queued with its consent
    evidence and the worker applies the rules (`newsletter/signups.py`), so the answer takes
    the same time whoever the address belongs to.
    """
    if given.honeypot:
        # Bots get the normal reply, so they learn nothing; nothing is stored.
        return _thanks(given.slugs)
    wrong_language = unknown_language(given.lang)
    if wrong_language:
        return SignupReply(422, wrong_language, "lang")
    unproven = challenge.refusal(given.slugs, given.altcha)
    if unproven:
        return SignupReply(422, unproven, "altcha")
    check = bool(current_app.config["CHECK_DELIVERABILITY"])
    try:
        address, key = normalize_email(given.email, check_deliverability=check)
    except InvalidEmail as exc:
        return SignupReply(422, exc.message, "email")
    try:
        chosen = chosen_lists(given.slugs)
    except (subs.NoNewsletterChosen, UnknownNewsletter) as exc:
        return SignupReply(422, exc.message, "newsletter")
    wrong_frequency = frequency_refusal(given.frequency, chosen)
    if wrong_frequency:
        return SignupReply(422, wrong_frequency, "frequency")
    boxes = [(row.id, subs.box_text(row)) for row in chosen]
    origin = consent_origin(given.source)
    frequency = given.frequency if isinstance(given.frequency, str) else None
    signups.enqueue(db.engine, address, key, boxes, origin, language.current(), frequency)
    metrics.signed_up(row.slug for row in chosen)
    return _thanks([row.slug for row in chosen])

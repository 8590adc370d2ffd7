"""What every signup endpoint shares: reading the fields, the rules' call, the reply."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import current_app, request
from flask_babel import gettext, lazy_gettext
from werkzeug.datastructures import MultiDict

from newsletter import languages, metrics
from newsletter import subscriptions as subs
from newsletter.addresses import InvalidEmail
from newsletter.extensions import db, limiter
from newsletter.models import DEFAULT_THANKS
from newsletter.newsletters import UnknownNewsletter
from newsletter.texts import OURS, local
from newsletter.web import challenge, language

HONEYPOT = "leave_blank"
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
rate_limit = limiter.shared_limit(_subscribe_limit, scope="subscribe", methods=["POST"])


def printable(value: str | None, limit: int) -> str:
    """Text from a request, without control characters, cut to `limit`."""
    return _CONTROL.sub("", value or "")[:limit]


def consent_origin(source: str | None = None) -> subs.Origin:
    """Who is asking, for the consent trail."""
    return subs.Origin(
        source=printable(source or request.endpoint or "web", 100),
        ip=request.remote_addr,
        user_agent=printable(request.headers.get("User-Agent"), 400) or None,
    )


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
    title: str = ""

    def __post_init__(self) -> None:
        self.title = self.title or str(SUCCESS_TITLE)

    @property
    def ok(self) -> bool:
        return self.status < 400

    def as_json(self) -> dict[str, object]:
        body: dict[str, object] = {"ok": self.ok, "message": self.message}
        if self.ok:
            body["title"] = self.title
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
    return SignupFields(text("email"), slugs, text(HONEYPOT), source, lang, data.get("altcha"))


def unknown_language(lang: object) -> str | None:
    """What is wrong with a box's `lang`, or None when it is absent or one of ours."""
    if lang is None or (isinstance(lang, str) and lang in languages.LANGUAGES):
        return None
    return gettext("We write in English (en) or Ukrainian (uk) only.")


def _thanks(slugs: list[str]) -> SignupReply:
    """The thank-you text of the lists chosen: a list's own; for several, ours in the plural
    unless they all say the same words of an editor's."""
    chosen = subs.signup_newsletters(db.session, slugs)
    if len(chosen) == 1:
        return SignupReply(200, local(chosen[0], "thanks_text"))
    own = {local(n, "thanks_text") for n in chosen if n.thanks_text != DEFAULT_THANKS}
    if len(own) == 1 and all(n.thanks_text != DEFAULT_THANKS for n in chosen):
        return SignupReply(200, own.pop())
    return SignupReply(200, str(THANKS_SEVERAL if chosen else OURS[DEFAULT_THANKS]))


def signup(given: SignupFields) -> SignupReply:
    """Run a signup from any form or API call and say what the reader should see."""
    if given.honeypot:
        # Bots get the normal reply, so they learn nothing; nothing is stored.
        return _thanks(given.slugs)
    wrong_language = unknown_language(given.lang)
    if wrong_language:
        return SignupReply(422, wrong_language, "lang")
    unproven = challenge.refusal(given.slugs, given.altcha)
    if unproven:
        return SignupReply(422, unproven, "altcha")
    try:
        subs.subscribe(
            db.session,
            given.email,
            given.slugs,
            consent_origin(given.source),
            limit=confirmation_limit(),
            check_deliverability=bool(current_app.config["CHECK_DELIVERABILITY"]),
            locale=language.current(),
        )
    except InvalidEmail as exc:
        return SignupReply(422, exc.message, "email")
    except (subs.NoNewsletterChosen, UnknownNewsletter) as exc:
        return SignupReply(422, exc.message, "newsletter")
    metrics.signed_up(given.slugs)
    return _thanks(given.slugs)

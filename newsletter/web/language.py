"""The language of each answer, chosen per request and forgotten after it."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from babel import Locale
from flask import Flask, g, has_request_context, request, session
from flask_babel import get_babel, get_locale, refresh
from flask_babel.speaklater import LazyString
from werkzeug.datastructures import LanguageAccept
from werkzeug.exceptions import HTTPException
from werkzeug.http import parse_accept_header

from newsletter import languages, localtime, texts
from newsletter.extensions import babel
from newsletter.languages import DEFAULT, LANGUAGES

log = logging.getLogger(__name__)

# Where the admin's language switch keeps the editor's choice.
ADMIN_KEY = "locale"
# The blueprints whose forms and JSON bodies may name a language with a `lang` field.
_READER_BLUEPRINTS = ("public", "api")


def accepted() -> str:
    """The browser's preferred language among ours (Accept-Language), else English."""
    return _best_of(request.headers.get("Accept-Language", ""))


@lru_cache(maxsize=256)
def _best_of(header: str) -> str:
    # Browsers send a few Accept-Language headers over and over: each is read once.
    best = parse_accept_header(header, LanguageAccept).best_match(tuple(LANGUAGES))
    return languages.known(best) or DEFAULT


def _posted_lang() -> object:
    """The `lang` field of a reader's form or JSON body (a signup box names its language)."""
    if request.method != "POST" or request.blueprint not in _READER_BLUEPRINTS:
        return None
    try:
        if request.is_json:
            data = request.get_json(silent=True)
            return data.get("lang") if isinstance(data, dict) else None
        return request.form.get("lang")
    except (HTTPException, RecursionError):
        return None


def select() -> str | None:
    """The request's language: named by the page or box, the reader's own, else the browser's.

    In the admin: the editor's choice from the language switch, else the browser's.
    """
    if not has_request_context():
        return None  # the worker and the command line: English unless a mail forces another
    if request.blueprint == "admin":
        return languages.known(session.get(ADMIN_KEY)) or accepted()
    for named in (request.args.get("lang"), _posted_lang()):
        found = languages.known(named)
        if found:
            return found
    return g.get("reader_locale") or accepted()


# Flask-Babel parses the selected tag into a Locale on every request; ours, parsed once.
_LOCALES = {code: Locale.parse(code) for code in LANGUAGES}


def _selected() -> Locale | None:
    chosen = select()
    return _LOCALES[chosen] if chosen in _LOCALES else None


def current() -> str:
    """The language this answer (or this mail, under `force_locale`) is written in."""
    return str(get_locale() or DEFAULT)


def use_reader(locale: str | None) -> None:
    """Answer in a reader's stored language, unless the page names another."""
    g.reader_locale = languages.known(locale)
    refresh()


# Where Flask-Babel keeps the language it chose, on `g`.
_BABEL_STATE = "_flask_babel"


def _forget() -> None:
    # Tests and `flask shell` share one app context between requests: so does `g`. A server
    # gives each request a `g` of its own, where Flask-Babel has chosen nothing yet to forget.
    g.pop("reader_locale", None)
    g.pop(texts.CACHE, None)
    if _BABEL_STATE in g:
        refresh()


def _as_text(value: object) -> object:
    # Flask-Babel's lazy texts call themselves markup (__html__): shown as text, escaped.
    return str(value) if isinstance(value, LazyString) else value


def missing_catalogues(app: Flask) -> list[str]:
    """Languages whose compiled catalogue (.mo) is in none of the translation folders."""
    with app.app_context():
        folders = [Path(p) for p in get_babel(app).translation_directories]
    return [
        lang
        for lang in LANGUAGES
        if lang != DEFAULT
        and not any((f / lang / "LC_MESSAGES" / "messages.mo").is_file() for f in folders)
    ]


def init_app(app: Flask) -> None:
    """Bind Flask-Babel, the template helpers, and the per-request reset."""
    babel.init_app(app, default_locale=DEFAULT, locale_selector=_selected)
    # {% trans %} blocks written over several lines are one sentence (babel.cfg trims too).
    app.jinja_env.policies["ext.i18n.trimmed"] = True
    app.jinja_env.filters["local"] = texts.local
    app.jinja_env.filters["in_zone"] = localtime.in_zone
    app.jinja_env.finalize = _as_text
    app.before_request(_forget)
    app.teardown_request(lambda _exc: _forget())

    @app.context_processor
    def _language() -> dict[str, object]:
        return {"current_locale": current(), "languages": LANGUAGES}

    missing = missing_catalogues(app)
    if missing:
        log.warning(
            "No compiled catalogue for %s: pages and mails in it show in English. "
            "Run `make translations` (or `pybabel compile -d newsletter/translations`).",
            ", ".join(missing),
        )

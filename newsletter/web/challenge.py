"""ALTCHA in requests: the challenges the widget fetches, and the check every signup passes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from flask import Flask, Response, current_app, jsonify, request
from flask_babel import lazy_gettext
from flask_cors.core import FLASK_CORS_EVALUATED

from newsletter import challenges
from newsletter.challenges import Verdict
from newsletter.extensions import db, limiter

log = logging.getLogger(__name__)

# The field a box (the widget's hidden input), the JSON body and the API carry the solution in.
FIELD = "altcha"
# How long a process trusts its copy of which newsletters ask for the proof of work.
CACHE_SECONDS = 10.0

MISSING = lazy_gettext(
    "This newsletter asks your browser to show it is not a robot: tick "
    "\u201cI\u2019m not a robot\u201d, wait a moment, then subscribe."
)
FAILED = lazy_gettext(
    "The check that you are not a robot has expired or did not work. Please tick "
    "\u201cI\u2019m not a robot\u201d again, then subscribe."
)


class _Asking:
    """The slugs that ask for the proof of work, as last read, and when to read them again."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.slugs: frozenset[str] = frozenset()
        self.expires = 0.0


def _state() -> _Asking:
    return current_app.extensions.setdefault("newsletter.altcha", _Asking())  # type: ignore[no-any-return]


def asking() -> frozenset[str]:
    """The open newsletters whose boxes ask for the proof of work (cached for a few seconds)."""
    state = _state()
    now = time.monotonic()
    if now >= state.expires:
        fresh = challenges.asking(db.session)
        with state.lock:
            state.slugs = fresh
            state.expires = now + CACHE_SECONDS
    return state.slugs


def forget() -> None:
    """Read which newsletters ask again on this process's next signup (an editor changed one)."""
    _state().expires = 0.0


def settings() -> challenges.Settings:
    """The challenges' settings from the configuration."""
    cfg = current_app.config
    return challenges.Settings(
        secret_key=str(cfg["SECRET_KEY"]),
        cost=int(cfg["ALTCHA_COST"]),
        work=int(cfg["ALTCHA_WORK"]),
        lifetime=int(cfg["ALTCHA_LIFETIME"]),
    )


def _first_use(key: str, seconds: int) -> bool:
    """Count a solved challenge in the rate limits' storage (Redis when configured)."""
    try:
        return int(limiter.limiter.storage.incr(key, seconds)) == 1
    except Exception:  # the storage's own errors (Redis away) have no common base class
        # The work itself was checked, and the per-IP limits still hold.
        log.warning("ALTCHA: the rate limit storage cannot be reached; replays are not checked")
        return True


def refusal(slugs: Iterable[str], payload: object) -> str | None:
    """Why a signup to these newsletters is refused for its proof of work, or None."""
    if not challenges.needed(asking(), slugs):
        return None
    verdict = challenges.verify(settings(), payload, _first_use)
    if verdict == Verdict.SOLVED:
        return None
    return str(MISSING if verdict == Verdict.MISSING else FAILED)


def challenge_response() -> Response:
    """A fresh challenge, readable by any page: it is public, short-lived and single-use."""
    response = jsonify(challenges.new_challenge(settings()))
    response.headers["Cache-Control"] = "no-store"
    response.headers["Access-Control-Allow-Origin"] = "*"
    # Answered for every origin here: the allowed-sites headers must not add a second one.
    setattr(response, FLASK_CORS_EVALUATED, True)
    return response


# The widget's files: a module script, which a page of another site may load only with CORS.
WIDGET_PATH = "/static/altcha/"


def _widget_cors(response: Response) -> Response:
    if request.path.startswith(WIDGET_PATH):
        response.headers["Access-Control-Allow-Origin"] = "*"
    return response


def init_app(app: Flask) -> None:
    """Let any page load the widget's files, as it loads embed.js."""
    app.after_request(_widget_cors)

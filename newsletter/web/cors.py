"""Which host sites may read our JSON answers (CORS, by Flask-CORS) and get readers sent back.

The allowed sites are NEWSLETTER_ALLOWED_ORIGINS and the sites admins list at /admin/sites.
Flask-CORS fixes its origins when it is bound to the app (it takes no callable), and the admins'
list changes while the app runs. So the asking site is checked here against the list of the moment
(read from the database at most every ALLOWED_ORIGINS_CACHE_SECONDS per process, and at once in the
process where an admin changed it), and Flask-CORS's own header logic (preflights, methods, headers,
max age) then answers that one site.
"""

from __future__ import annotations

import re
import threading
import time
from functools import lru_cache

from flask import Flask, Response, current_app, request
from flask_cors.core import serialize_options, set_cors_headers

from newsletter import origins
from newsletter.config import ConfigError
from newsletter.extensions import db

# The JSON API and the JSON answer of the signup boxes; nothing else is read across origins.
API_PREFIX = "/api/v1/"
SIGNUP_PATH = "/subscribe"
_OPTIONS = {
    "methods": ["GET", "HEAD", "POST", "OPTIONS"],
    # No Authorization: API tokens belong in programs on servers, never in a web page.
    "allow_headers": ["Content-Type", "Accept", "Accept-Language"],
    "expose_headers": [
        "Retry-After",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
    ],
    # Short: a site taken off the list stops being answered soon in browsers too.
    "max_age": 600,
    "supports_credentials": False,
    "send_wildcard": False,
    "always_send": False,
    "vary_header": True,
    "allow_private_network": False,
}


class _Stored:
    """The admins' list as last read, and when it is to be read again."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.origins: frozenset[str] = frozenset()
        self.expires = 0.0


def _state() -> _Stored:
    return current_app.extensions["newsletter.sites"]  # type: ignore[no-any-return]


def allowed_origins() -> frozenset[str]:
    """Every allowed origin: the setting's and the admins' list (cached for a few seconds)."""
    state = _state()
    now = time.monotonic()
    if now >= state.expires:
        fresh = origins.stored(db.session)
        with state.lock:
            state.origins = fresh
            state.expires = now + float(current_app.config["ALLOWED_ORIGINS_CACHE_SECONDS"])
    return _configured(tuple(current_app.config["ALLOWED_ORIGINS"])) | state.origins


@lru_cache(maxsize=8)
def _configured(values: tuple[str, ...]) -> frozenset[str]:
    return origins.configured(values)


def forget() -> None:
    """Read the admins' list again on the next request of this process."""
    _state().expires = 0.0


def is_allowed(origin: str) -> bool:
    """Whether this origin (as a browser sends it) is an allowed site."""
    try:
        return origins.normalise(origin) in allowed_origins()
    except origins.OriginError:
        return False


def return_url(text: object) -> str | None:
    """Where to send a reader back after a plain form post: only to an allowed site."""
    return origins.return_url(text, allowed_origins())


@lru_cache(maxsize=64)
def _cors_options(origin: str):  # type: ignore[no-untyped-def]
    # An exact, anchored pattern: Flask-CORS would read a bracketed IPv6 host as a regex.
    pattern = re.compile(re.escape(origin) + r"\Z", re.IGNORECASE)
    return serialize_options({**_OPTIONS, "origins": [pattern]})


def _covered(path: str) -> bool:
    return path.startswith(API_PREFIX) or path == SIGNUP_PATH


def _add_headers(response: Response) -> Response:
    if not _covered(request.path):
        return response
    # Whether the answer carries the CORS headers depends on the asking site.
    response.vary.add("Origin")
    origin = request.headers.get("Origin")
    if not origin or not is_allowed(origin):
        return response
    # Only the asking site is offered to Flask-CORS, already checked against the list.
    set_cors_headers(response, _cors_options(origins.normalise(origin)))
    if (
        request.method == "OPTIONS"
        and response.status_code == 200
        and "Access-Control-Allow-Methods" in response.headers
    ):
        # A preflight answer has no content to give.
        response.status_code = 204
        response.set_data(b"")
    return response


def register(app: Flask) -> None:
    """Check NEWSLETTER_ALLOWED_ORIGINS and answer cross-origin requests of allowed sites."""
    try:
        origins.check_configured(app.config["ALLOWED_ORIGINS"])
    except origins.OriginError as exc:
        raise ConfigError(f"NEWSLETTER_ALLOWED_ORIGINS: {exc.message}") from exc
    app.extensions["newsletter.sites"] = _Stored()
    app.after_request(_add_headers)

"""Error pages and JSON error bodies: a clear message and a 4xx, never a stack trace."""

from __future__ import annotations

import logging
from functools import lru_cache

from flask import Flask, Response, jsonify, render_template, request
from flask_babel import gettext as _
from flask_babel import lazy_gettext
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.datastructures import MIMEAccept
from werkzeug.exceptions import HTTPException, InternalServerError, ServiceUnavailable
from werkzeug.http import parse_accept_header

from newsletter.web import limits, problems

log = logging.getLogger(__name__)

MESSAGES = {
    400: lazy_gettext("The request could not be understood."),
    403: lazy_gettext("Your account does not have access to this page."),
    404: lazy_gettext("There is no page at this address."),
    405: lazy_gettext("This address does not accept that kind of request."),
    413: lazy_gettext("What was sent is too large."),
    429: lazy_gettext(
        "Too many requests from your network. Please wait a few minutes and try again."
    ),
    503: lazy_gettext("The service is briefly unavailable. Please try again in a minute."),
}
# Seconds a client is asked to wait when the database cannot be reached.
RETRY_AFTER = 30
# The titles of the error pages: werkzeug's names of the statuses, in the reader's language.
TITLES = {
    400: lazy_gettext("Bad Request"),
    403: lazy_gettext("Forbidden"),
    404: lazy_gettext("Not Found"),
    405: lazy_gettext("Method Not Allowed"),
    410: lazy_gettext("Gone"),
    413: lazy_gettext("Request Entity Too Large"),
    429: lazy_gettext("Too Many Requests"),
    500: lazy_gettext("Internal Server Error"),
    503: lazy_gettext("Service Unavailable"),
}


def wants_json() -> bool:
    """Answer in JSON: an API path, a JSON body, or a script that asked for JSON."""
    if request.path.startswith("/api/") or request.is_json:
        return True
    return _prefers_json(request.headers.get("Accept", ""))


@lru_cache(maxsize=256)
def _prefers_json(accept: str) -> bool:
    # Browsers and scripts send a few Accept headers over and over: each is read once.
    best = parse_accept_header(accept, MIMEAccept).best_match(["text/html", "application/json"])
    return best == "application/json"


CSRF_MESSAGE = lazy_gettext(
    "This form has expired or was sent from another site. Reload the page and try again."
)


def _reply(exc: HTTPException) -> tuple[Response | str, int]:
    code = exc.code or 500
    if isinstance(exc, CSRFError):
        message = str(CSRF_MESSAGE)
    elif code == 429 and getattr(getattr(exc, "limit", None), "error_message", None):
        # A limit that says why it was hit (sign-in throttling), in its own words.
        message = str(exc.description)
    else:
        known = MESSAGES.get(code)
        message = str(known) if known else exc.description or _("Something went wrong.")
    if wants_json():
        response = jsonify({"ok": False, "message": message})
        return response, code
    title = TITLES.get(code) or exc.name
    return render_template("public/message.html", title=title, text=message), code


def register(app: Flask) -> None:
    """Answer every HTTP error with our own page or JSON body."""

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        if problems.is_api_request():
            return problems.from_http_error(exc)
        response, code = _reply(exc)
        if code == 429:
            response = app.make_response((response, code))
            response.headers.update(limits.breach_headers())
        return response, code

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def _database_away(exc: Exception):  # type: ignore[no-untyped-def]
        # A restarted or unreachable database: nothing was taken, the client may try again.
        log.warning("database unavailable on %s %s: %s", request.method, request.path, exc)
        if problems.is_api_request():
            response = problems.from_http_error(ServiceUnavailable())
        else:
            response = _reply(ServiceUnavailable())
        response = app.make_response(response)
        response.headers["Retry-After"] = str(RETRY_AFTER)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        log.exception("unhandled error on %s %s", request.method, request.path)
        if problems.is_api_request():
            return problems.from_http_error(InternalServerError())
        return _reply(InternalServerError())

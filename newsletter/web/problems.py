"""Errors of the JSON API as RFC 9457 problem details (application/problem+json)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from flask import Response, current_app, json, request
from flask_babel import format_decimal, lazy_gettext
from flask_babel import gettext as _
from werkzeug.exceptions import HTTPException

from newsletter.web import limits

MEDIA_TYPE = "application/problem+json"
API_ROOT = "/api/v1"


@dataclass(frozen=True)
class ProblemType:
    """One kind of error: its name in the type URI, its status, title and explanation."""

    name: str
    status: int
    # Lazy texts, read in the language of the request.
    title_text: object
    explanation_text: object

    @property
    def title(self) -> str:
        return str(self.title_text)

    @property
    def explanation(self) -> str:
        return str(self.explanation_text)


_TYPES = (
    ProblemType(
        "invalid-fields",
        422,
        lazy_gettext("Some fields are not valid"),
        lazy_gettext(
            "The request was understood, but one or more of its fields break the rules. The "
            "errors member lists each field at fault with a message fit to show a person. Nothing "
            "was stored."
        ),
    ),
    ProblemType(
        "not-json",
        400,
        lazy_gettext("The body is not a JSON object"),
        lazy_gettext(
            "The call takes a JSON object, sent with Content-Type: application/json. The body "
            "was missing, was not JSON, or was JSON of another kind (a list, a string, a number)."
        ),
    ),
    ProblemType(
        "bad-request",
        400,
        lazy_gettext("The request could not be understood"),
        lazy_gettext("Something in the request, other than its body, could not be read."),
    ),
    ProblemType(
        "unauthorized",
        401,
        lazy_gettext("An API token is needed"),
        lazy_gettext(
            "Send a live API token as Authorization: Bearer <token>. The WWW-Authenticate "
            'header says error="invalid_token" when a token was sent but is not valid or was '
            "revoked. Admins make and revoke tokens at /admin/tokens."
        ),
    ),
    ProblemType(
        "forbidden",
        403,
        lazy_gettext("This token may not do that"),
        lazy_gettext(
            "The token is valid but does not allow this call. Every live token may use every items "
            "call today; clients should still treat 403 as final, not retry it."
        ),
    ),
    ProblemType(
        "not-found",
        404,
        lazy_gettext("There is no such API call"),
        lazy_gettext(
            "Nothing is at this address. Every call is described at /api/v1/openapi.json."
        ),
    ),
    ProblemType(
        "method-not-allowed",
        405,
        lazy_gettext("This call does not take that method"),
        lazy_gettext(
            "The address exists but not with this HTTP method; the Allow header lists the ones "
            "it takes."
        ),
    ),
    ProblemType(
        "too-large",
        413,
        lazy_gettext("The request is too large"),
        lazy_gettext(
            "The body is larger than the service accepts. Signups and items are small: a few "
            "kilobytes at most."
        ),
    ),
    ProblemType(
        "rate-limited",
        429,
        lazy_gettext("Too many requests"),
        lazy_gettext(
            "Too many requests came from this network address. Wait the number of seconds the "
            "Retry-After header gives before trying again."
        ),
    ),
    ProblemType(
        "server-error",
        500,
        lazy_gettext("Something went wrong on our side"),
        lazy_gettext(
            "The service failed to answer. The error is logged; trying again later may work."
        ),
    ),
)
TYPES: Mapping[str, ProblemType] = {t.name: t for t in _TYPES}
# The type of an HTTP error raised outside the views; a body that is not JSON is named by them.
_BY_STATUS = {t.status: t for t in _TYPES if t.name != "not-json"}


@dataclass(frozen=True)
class FieldError:
    """A field at fault: its name, where it was (body or query) and what is wrong."""

    field: str
    message: str
    location: str = "body"

    def as_json(self) -> dict[str, str]:
        return {"field": self.field, "in": self.location, "message": self.message}


def is_api_request() -> bool:
    """Whether this request is for the JSON API, whose errors are problem details."""
    return request.path == API_ROOT or request.path.startswith(API_ROOT + "/")


def type_uri(name: str) -> str:
    """The stable URI of a problem type; it resolves to a page that explains it."""
    return f"{current_app.config['BASE_URL']}{API_ROOT}/problems/{name}"


def problem(
    name: str,
    detail: str,
    errors: Iterable[FieldError] = (),
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A problem+json response of a known type."""
    kind = TYPES[name]
    body = {
        "type": type_uri(name),
        "title": kind.title,
        "status": kind.status,
        "detail": detail,
        "errors": [error.as_json() for error in errors],
    }
    response = Response(json.dumps(body), status=kind.status, mimetype=MEDIA_TYPE)
    response.headers.update(headers or {})
    return response


def invalid(errors: Iterable[FieldError]) -> Response:
    """422 naming every field at fault."""
    found = list(errors)
    names = ", ".join(dict.fromkeys(error.field for error in found))
    return problem("invalid-fields", _("Check these fields: %(names)s.", names=names), found)


# Headers of an HTTP error worth keeping in the problem's answer.
_KEPT_HEADERS = (
    "Allow",
    "WWW-Authenticate",
    "Retry-After",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
)


def _detail(exc: HTTPException, kind: ProblemType) -> str:
    code = exc.code
    if code == 404:
        return _("There is no API call at %(path)s.", path=request.path[:200])
    if code == 405:
        allowed = getattr(exc, "valid_methods", None)
        if allowed:
            methods = ", ".join(sorted(allowed))
            return _("%(path)s takes %(methods)s.", path=request.path[:200], methods=methods)
    if code == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        if limit:
            size = format_decimal(int(limit))
            return _("The body may be at most %(size)s bytes.", size=size)
    if code == 429:
        return _("Too many requests from your network. Please wait a minute and try again.")
    return kind.explanation


def from_http_error(exc: HTTPException) -> Response:
    """The problem answer for an HTTP error raised while serving an API call."""
    code = exc.code or 500
    kind = _BY_STATUS.get(code)
    headers: dict[str, str] = {}
    sources = [exc.get_headers()]
    if code == 429:
        sources.append(list(limits.breach_headers().items()))
    for source in sources:
        for name, value in source:
            if name in _KEPT_HEADERS:
                headers[name] = value
    if kind is None:
        # A status with no type of its own: RFC 9457's about:blank, titled by the status.
        body = {
            "type": "about:blank",
            "title": exc.name,
            "status": code,
            "detail": exc.description or exc.name,
            "errors": [],
        }
        response = Response(json.dumps(body), status=code, mimetype=MEDIA_TYPE)
        response.headers.update(headers)
        return response
    return problem(kind.name, _detail(exc, kind), headers=headers)

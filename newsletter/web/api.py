"""The JSON API for sites that build their own signup forms and for programs that add items.

Its contract is the OpenAPI document at /api/v1/openapi.json (newsletter/web/openapi.py); every
error is an RFC 9457 problem (newsletter/web/problems.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request
from flask_babel import gettext as _
from flask_babel import lazy_gettext

from newsletter import api_tokens, challenges, frequencies
from newsletter import subscriptions as subs
from newsletter.addresses import InvalidEmail, normalize_email
from newsletter.digests import items
from newsletter.extensions import csrf, db
from newsletter.newsletters import UnknownNewsletter, by_slug, open_newsletters
from newsletter.texts import local
from newsletter.web import challenge, openapi, signup
from newsletter.web.problems import TYPES, FieldError, invalid, problem

bp = Blueprint("api", __name__, url_prefix="/api/v1")
# No cookies authorise anything here: signups are open, items need a bearer token.
csrf.exempt(bp)

MAX_LISTS = 20
MAX_SLUG = 64
MAX_SOURCE = 100
MAX_HONEYPOT = 1000
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LIMIT = re.compile(r"[0-9]{1,6}")
_LIST_SLUGS = lazy_gettext('List the newsletters by their slugs, such as ["daily"].')


def _not_json() -> Response:
    return problem("not-json", _("Send a JSON object with Content-Type: application/json."))


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """This API's OpenAPI 3.1 description."""
    return jsonify(openapi.document(current_app.config["BASE_URL"]))


@bp.get("/problems/<name>")
def problem_type(name: str) -> str:
    """The page a problem's type URI leads to."""
    kind = TYPES.get(name)
    if kind is None:
        abort(404)
    return render_template(
        "public/message.html", title=f"{kind.status}: {kind.title}", text=kind.explanation
    )


@bp.get("/newsletters")
def newsletters() -> Response:
    """The lists a reader can join."""
    return jsonify(
        {
            "newsletters": [
                {
                    "slug": n.slug,
                    "name": local(n, "name"),
                    "description": local(n, "description"),
                    "cadence": n.cadence,
                    "altcha": n.altcha,
                    "frequencies": list(frequencies.offered(n)),
                    "default_frequency": frequencies.default(n),
                }
                for n in open_newsletters(db.session)
            ]
        }
    )


def _optional_text(data: dict[str, Any], name: str, label: str, limit: int) -> FieldError | None:
    value = data.get(name, "")
    if not isinstance(value, str):
        return FieldError(name, _("The %(label)s must be text.", label=label))
    if len(value) > limit:
        return FieldError(
            name, _("The %(label)s is longer than %(n)d characters.", label=label, n=limit)
        )
    return None


def _slugs(value: object) -> list[str] | FieldError:
    """The slugs of a signup, or what is wrong with them."""
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        return FieldError("newsletters", str(_LIST_SLUGS))
    for slug in value:
        if len(slug) > MAX_SLUG or _CONTROL.search(slug):
            return FieldError(
                "newsletters", _("We have no open newsletter %(slug)r.", slug=slug[:MAX_SLUG])
            )
    if len(value) > MAX_LISTS:
        return FieldError("newsletters", _("Choose at most %(n)d newsletters.", n=MAX_LISTS))
    wanted = list(dict.fromkeys(s.strip() for s in value if s.strip()))
    if not wanted:
        return FieldError("newsletters", str(subs.NoNewsletterChosen.message))
    known = {row.slug for row in signup.open_lists(wanted)}
    for slug in wanted:
        if slug not in known:
            return FieldError(
                "newsletters", _("We have no open newsletter %(slug)r.", slug=slug[:MAX_SLUG])
            )
    return wanted


def _signup_errors(data: dict[str, Any]) -> list[FieldError]:
    """Every field of a signup that breaks the rules."""
    errors = []
    email = data.get("email")
    try:
        if not isinstance(email, str):
            raise InvalidEmail()
        normalize_email(email)
    except InvalidEmail as exc:
        errors.append(FieldError("email", exc.message))
    slugs = _slugs(data.get("newsletters"))
    if isinstance(slugs, FieldError):
        errors.append(slugs)
    wrong_language = signup.unknown_language(data.get("lang"))
    if wrong_language:
        errors.append(FieldError("lang", wrong_language))
    frequency = data.get("frequency")
    if frequency is not None and frequency not in frequencies.FREQUENCIES:
        errors.append(FieldError("frequency", signup.unknown_frequency()))
    for name, label, limit in (
        ("source", "source", MAX_SOURCE),
        (signup.HONEYPOT, f"{signup.HONEYPOT} field", MAX_HONEYPOT),
        (challenge.FIELD, "ALTCHA solution", challenges.MAX_PAYLOAD),
    ):
        error = _optional_text(data, name, label, limit)
        if error:
            errors.append(error)
    return errors


@bp.post("/subscriptions")
@signup.rate_limit
def subscriptions() -> Response | tuple[Response, int]:
    """Sign an address up: {"email": ..., "newsletters": [slug, ...], "source": ...}.

    The answer is the same whether the address is new, waiting, confirmed or gone.
    """
    data = signup.json_body()
    if data is None:
        return _not_json()
    errors = _signup_errors(data)
    if errors:
        return invalid(errors)
    reply = signup.signup(signup.fields(data, default_source="api"))
    if not reply.ok:
        field = "newsletters" if reply.field == "newsletter" else reply.field or "email"
        return invalid([FieldError(field, reply.message)])
    return jsonify(reply.as_json()), 202


@bp.get("/challenge")
def altcha_challenge() -> Response:
    """A proof-of-work challenge for the ALTCHA widget of a box that asks for one."""
    return challenge.challenge_response()


def _unauthorised(message: str, error: str | None) -> Response:
    challenge = 'Bearer realm="newsletter"'
    if error:
        challenge += f', error="{error}"'
    return problem("unauthorized", message, headers={"WWW-Authenticate": challenge})


def token_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Let the call through only with a live API token in `Authorization: Bearer …`."""

    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        scheme, _space, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _unauthorised(_("Send an API token: Authorization: Bearer <token>."), None)
        if api_tokens.authenticate(db.session, token.strip()) is None:
            message = _("This API token is not valid or was revoked.")
            return _unauthorised(message, "invalid_token")
        return view(*args, **kwargs)

    return wrapped


def _published_at(value: object) -> object:
    try:
        return items.clean_published_at(value)
    except OverflowError as exc:
        # A moment whose UTC time falls outside years 1 to 9999.
        raise items.ItemError(_("The publication time is out of range."), "published_at") from exc


def _item_newsletters(value: object) -> object:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise items.ItemError(_("List the newsletters by their slugs."), "newsletters")
    for slug in value:
        if _CONTROL.search(slug):
            raise items.ItemError(
                _("There is no open newsletter %(slug)r.", slug=slug[:64]), "newsletters"
            )
    return items.open_newsletters(db.session, value)


def _flag(value: object, field: str) -> object:
    """A yes-or-no field: true, false, or absent."""
    if value is not None and not isinstance(value, bool):
        raise items.ItemError(_("Give true or false."), field)
    return value


def _item_errors(data: dict[str, Any]) -> list[FieldError]:
    """Every field of an item that breaks the rules (add_item stops at the first)."""
    url = data.get("url")
    checks: list[tuple[str, Callable[[], object]]] = [
        ("title", lambda: items.clean_title(data.get("title"))),
        ("url", lambda: items.clean_url(url)),
        ("summary", lambda: items.clean_summary(data.get("summary"))),
        ("published_at", lambda: _published_at(data.get("published_at"))),
        ("guid", lambda: items.clean_guid(data.get("guid"), url if isinstance(url, str) else "")),
        ("newsletters", lambda: _item_newsletters(data.get("newsletters"))),
        ("pick", lambda: _flag(data.get("pick"), "pick")),
        ("alert", lambda: _flag(data.get("alert"), "alert")),
    ]
    errors = []
    for field, check in checks:
        try:
            check()
        except items.ItemError as exc:
            errors.append(FieldError(exc.field or field, exc.message))
    return errors


@bp.post("/items")
@token_required
def items_add() -> Response | tuple[Response, int]:
    """Add a news item: {"title", "url", "summary", "published_at", "guid", "newsletters",
    "pick", "alert"}; with "alert": true it goes out at once to the readers who chose alerts."""
    data = signup.json_body()
    if data is None:
        return _not_json()
    errors = _item_errors(data)
    if errors:
        return invalid(errors)
    try:
        item, created = items.add_item(
            db.session,
            title=data.get("title"),
            url=data.get("url"),
            summary=data.get("summary"),
            published_at=data.get("published_at"),
            guid=data.get("guid"),
            newsletters=data.get("newsletters"),
            source="api",
            pick=data.get("pick"),
            alert=bool(_flag(data.get("alert"), "alert")),
        )
    except items.ItemError as exc:
        return invalid([FieldError(exc.field or "item", exc.message)])
    return jsonify({"ok": True, "created": created, "item": items.as_json(item)}), (
        201 if created else 200
    )


@bp.get("/items")
@token_required
def items_list() -> Response:
    """The newest items, of one newsletter with ?newsletter=SLUG; at most ?limit= (200)."""
    errors = []
    raw_limit = request.args.get("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        if _LIMIT.fullmatch(raw_limit) and 1 <= int(raw_limit) <= MAX_LIMIT:
            limit = int(raw_limit)
        else:
            message = _("The limit is a whole number from 1 to %(n)d.", n=MAX_LIMIT)
            errors.append(FieldError("limit", message, "query"))
    slug = request.args.get("newsletter", "").strip()
    newsletter_id = None
    if slug:
        if not _CONTROL.search(slug):
            try:
                newsletter_id = by_slug(db.session, slug).id
            except UnknownNewsletter:
                newsletter_id = None
        if newsletter_id is None:
            message = _("There is no newsletter %(slug)r.", slug=slug[:64])
            errors.append(FieldError("newsletter", message, "query"))
    if errors:
        return invalid(errors)
    found = db.session.scalars(items.items_query(newsletter_id).limit(limit))
    return jsonify({"ok": True, "items": [items.as_json(item) for item in found]})

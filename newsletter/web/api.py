"""The JSON API for sites that build their own signup forms."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, Response, jsonify, request

from newsletter import api_tokens, newsletters
from newsletter.digests import items
from newsletter.extensions import csrf, db
from newsletter.web import signup

bp = Blueprint("api", __name__, url_prefix="/api/v1")
# No cookies authorise anything here: signups are open, items need a bearer token.
csrf.exempt(bp)


bp.after_request(signup.add_cors_headers)


@bp.get("/newsletters")
def newsletter_list() -> Response:
    """The lists a reader can join."""
    return jsonify(
        {
            "newsletters": [
                {
                    "slug": n.slug,
                    "name": n.name,
                    "description": n.description,
                    "cadence": n.cadence,
                }
                for n in newsletters.open_newsletters(db.session)
            ]
        }
    )


@bp.route("/subscriptions", methods=["OPTIONS"])
def subscriptions_preflight() -> Response:
    """CORS preflight for a JSON signup from a host site."""
    return Response(status=204)


@bp.post("/subscriptions")
@signup.rate_limit
def subscriptions() -> tuple[Response, int]:
    """Sign an address up: {"email": ..., "newsletters": [slug, ...], "source": ...}."""
    data = signup.json_body()
    if data is None:
        return jsonify({"ok": False, "message": "Send a JSON object."}), 400
    reply = signup.signup(signup.fields(data, default_source="api"))
    return jsonify(reply.as_json()), 202 if reply.ok else reply.status


def _unauthorised(message: str, error: str | None) -> tuple[Response, int]:
    response = jsonify({"ok": False, "message": message})
    challenge = 'Bearer realm="newsletter"'
    if error:
        challenge += f', error="{error}"'
    response.headers["WWW-Authenticate"] = challenge
    return response, 401


def token_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Let the call through only with a live API token in `Authorization: Bearer …`."""

    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _unauthorised("Send an API token: Authorization: Bearer <token>.", None)
        if api_tokens.authenticate(db.session, token.strip()) is None:
            return _unauthorised("This API token is not valid or was revoked.", "invalid_token")
        return view(*args, **kwargs)

    return wrapped


def _invalid(message: str, field: str | None, status: int = 422) -> tuple[Response, int]:
    return jsonify({"ok": False, "message": message, "field": field}), status


@bp.post("/items")
@token_required
def items_add() -> tuple[Response, int]:
    """Add a news item: {"title", "url", "summary", "published_at", "guid", "newsletters"}."""
    data = signup.json_body()
    if data is None:
        return _invalid("Send a JSON object.", None, 400)
    try:
        item, created = items.add_item(
            db.session,
            title=data.get("title"),
            url=data.get("url"),
            summary=data.get("summary"),
            published_at=data.get("published_at"),
            guid=data.get("guid"),
            newsletters=data.get("newsletters", data.get("newsletter")),
            source="api",
        )
    except items.ItemError as exc:
        return _invalid(exc.message, exc.field)
    return jsonify({"ok": True, "created": created, "item": items.as_json(item)}), (
        201 if created else 200
    )


@bp.get("/items")
@token_required
def items_list() -> tuple[Response, int]:
    """The newest items, of one newsletter with ?newsletter=SLUG; at most ?limit= (200)."""
    limit = min(max(request.args.get("limit", 50, type=int), 1), 200)
    slug = request.args.get("newsletter", "").strip()
    newsletter_id = None
    if slug:
        try:
            newsletter_id = newsletters.by_slug(db.session, slug).id
        except newsletters.UnknownNewsletter as exc:
            return _invalid(exc.message, "newsletter")
    found = db.session.scalars(items.items_query(newsletter_id).limit(limit))
    return jsonify({"ok": True, "items": [items.as_json(item) for item in found]}), 200

"""The JSON API for sites that build their own signup forms."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from newsletter.extensions import csrf
from newsletter.web import public, signup

bp = Blueprint("api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)


bp.after_request(signup.add_cors_headers)


@bp.get("/newsletters")
def newsletters() -> Response:
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
                for n in public.active_newsletters()
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

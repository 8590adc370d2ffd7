"""Reader-facing pages: signup boxes, confirm, unsubscribe, preferences."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    render_template,
    request,
)
from sqlalchemy import select
from werkzeug.datastructures import MultiDict

from newsletter import subscriptions as subs
from newsletter import tokens
from newsletter.extensions import csrf, db, limiter
from newsletter.models import (
    DEFAULT_THANKS,
    Item,
    Newsletter,
    Subscriber,
    Subscription,
    SubscriptionStatus,
)

bp = Blueprint("public", __name__)
# Reader pages are authorised by the signed token in their URL, and the signup boxes are
# posted from other sites' pages: a session-bound CSRF token would only break them.
csrf.exempt(bp)

HONEYPOT = "leave_blank"
SUCCESS_TITLE = "Successfully subscribed"


def subscribe_limit() -> str:
    """The per-IP limit on signups, from configuration."""
    return str(current_app.config["SUBSCRIBE_RATE_LIMIT"])


signup_rate_limit = limiter.shared_limit(subscribe_limit, scope="subscribe", methods=["POST"])


def active_newsletters() -> list[Newsletter]:
    """The lists a reader can join, in the site's order."""
    return list(
        db.session.scalars(
            select(Newsletter)
            .where(Newsletter.archived.is_(False))
            .order_by(Newsletter.position, Newsletter.id)
        )
    )


def origin(source: str | None = None) -> subs.Origin:
    """Who is asking, for the consent trail."""
    return subs.Origin(
        source=(source or request.endpoint or "web")[:100],
        ip=request.remote_addr,
        user_agent=request.headers.get("User-Agent"),
    )


def confirmation_limit() -> subs.ConfirmationLimit:
    cfg = current_app.config
    return subs.ConfirmationLimit(
        count=int(cfg["CONFIRMATIONS_PER_ADDRESS"]),
        window=timedelta(seconds=int(cfg["CONFIRMATION_WINDOW"])),
    )


@dataclass
class SignupReply:
    """What any signup form or API call answers."""

    status: int
    message: str
    field: str | None = None
    title: str = SUCCESS_TITLE

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


def _thanks(slugs: list[str]) -> SignupReply:
    first = db.session.execute(subs.SIGNUP_NEWSLETTERS, {"slugs": slugs}).first()
    return SignupReply(200, first.thanks_text if first else DEFAULT_THANKS)


def signup(email: str, slugs: list[str], honeypot: str, source: str | None) -> SignupReply:
    """Run a signup from any form or API call and say what the reader should see."""
    if honeypot:
        # Bots get the normal reply, so they learn nothing; nothing is stored.
        return _thanks(slugs)
    try:
        result = subs.subscribe(
            db.session,
            email,
            slugs,
            origin(source),
            limit=confirmation_limit(),
            check_deliverability=bool(current_app.config["CHECK_DELIVERABILITY"]),
        )
    except subs.InvalidEmail as exc:
        return SignupReply(422, exc.message, "email")
    except (subs.NoNewsletterChosen, subs.UnknownNewsletter) as exc:
        return SignupReply(422, exc.message, "newsletter")
    return SignupReply(200, result.thanks_text)


def signup_fields(
    data: Mapping[str, Any], default_source: str | None = None
) -> tuple[str, list[str], str, str | None]:
    """Email, newsletter slugs, honeypot and source from a form or a JSON object."""
    if isinstance(data, MultiDict):
        raw_slugs: object = data.getlist("newsletter") or data.getlist("newsletters")
    else:
        raw_slugs = data.get("newsletters", data.get("newsletter", []))
    if isinstance(raw_slugs, str):
        raw_slugs = [raw_slugs]
    if not isinstance(raw_slugs, list):
        raw_slugs = []
    slugs = [s[:64] for s in raw_slugs if isinstance(s, str)][:20]

    def text(name: str) -> str:
        value = data.get(name)
        return value if isinstance(value, str) else ""

    return text("email"), slugs, text(HONEYPOT), text("source")[:100] or default_source


def _allowed_origin() -> str | None:
    origin = request.headers.get("Origin")
    allowed = current_app.config["ALLOWED_ORIGINS"]
    if origin and ("*" in allowed or origin in allowed):
        return origin
    return None


def add_cors_headers(response: Response) -> Response:
    """Let the host sites named in NEWSLETTER_ALLOWED_ORIGINS read our answers."""
    origin = _allowed_origin()
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type, Accept"
        response.headers["Access-Control-Max-Age"] = "86400"
        response.vary.add("Origin")
    return response


def wants_json() -> bool:
    """A script asked (fetch with Accept: application/json, or a JSON body)."""
    if request.is_json:
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


@bp.get("/")
def home() -> str:
    """The demo article page with one signup box per newsletter."""
    items = db.session.scalars(select(Item).order_by(Item.published_at.desc()).limit(10)).all()
    return render_template("public/home.html", newsletters=active_newsletters(), items=items)


@bp.after_request
def _signup_cors(response: Response) -> Response:
    # The embed script posts the boxes from the host site's own origin.
    if request.endpoint == "public.subscribe":
        add_cors_headers(response)
    return response


@bp.post("/subscribe")
@signup_rate_limit
def subscribe() -> Response | tuple[str, int]:
    """The target of every signup box; answers HTML, or JSON to scripts."""
    if request.is_json:
        data = request.get_json(silent=True)
        fields = signup_fields(data if isinstance(data, dict) else {})
    else:
        fields = signup_fields(request.form)
    reply = signup(*fields)
    if wants_json():
        response = jsonify(reply.as_json())
        response.status_code = reply.status
        return response
    if reply.ok:
        return render_template("public/thanks.html", reply=reply), reply.status
    email, slugs = fields[0], fields[1]
    newsletters = active_newsletters()
    return (
        render_template(
            "public/signup.html",
            newsletters=newsletters,
            chosen=[n for n in newsletters if n.slug in slugs],
            reply=reply,
            email=email,
        ),
        reply.status,
    )


def _token_error(exc: Exception) -> tuple[str, int]:
    """The page for a link that cannot be used."""
    if isinstance(exc, tokens.ExpiredToken):
        return render_template("public/link_expired.html", token=request.view_args["token"]), 410
    if isinstance(exc, subs.LinkNoLongerValid):
        return (
            render_template("public/link_error.html", reason="used", newsletters=[]),
            410,
        )
    return render_template("public/link_error.html", reason="broken"), 400


def _confirm_payload(token: str) -> object:
    return tokens.loads(tokens.CONFIRM, token, max_age=int(current_app.config["CONFIRM_MAX_AGE"]))


@bp.get("/confirm/<token>")
def confirm(token: str) -> str | tuple[str, int]:
    """Show what the link confirms, with a button: fetching a link confirms nothing."""
    try:
        subscriber, linked = subs.signup_subscriptions(db.session, _confirm_payload(token))
    except (tokens.TokenError, subs.LinkNoLongerValid) as exc:
        return _token_error(exc)
    return render_template("public/confirm.html", subscriber=subscriber, subscriptions=linked)


@bp.post("/confirm/<token>")
def confirm_post(token: str) -> str | tuple[str, int]:
    """Confirm every list of the signup."""
    try:
        result = subs.confirm(db.session, _confirm_payload(token), origin("confirm"))
    except (tokens.TokenError, subs.LinkNoLongerValid) as exc:
        return _token_error(exc)
    return render_template(
        "public/confirmed.html",
        result=result,
        preferences_token=_preferences_token(result.subscriber),
    )


def _preferences_token(subscriber: Subscriber) -> str:
    return tokens.dumps(tokens.PREFERENCES, tokens.reader_payload(subscriber))


@bp.post("/confirm/<token>/resend")
def confirm_resend(token: str) -> str | tuple[str, int]:
    """Send a fresh confirmation link in place of an expired one."""
    try:
        payload = _confirm_payload(token)
    except tokens.ExpiredToken as exc:
        payload = exc.payload
    except tokens.TokenError as exc:
        return _token_error(exc)
    try:
        pending = subs.resend_confirmation(
            db.session, payload, origin("confirm-resend"), confirmation_limit()
        )
    except subs.TooManyConfirmations as exc:
        return render_template("public/message.html", title="Please wait", text=exc.message), 429
    except subs.LinkNoLongerValid as exc:
        return _token_error(exc)
    return render_template("public/resent.html", subscriptions=pending)


def _unsubscribe_page(subscription: Subscription, done: bool) -> str:
    return render_template(
        "public/unsubscribe.html",
        subscription=subscription,
        done=done,
        preferences_token=_preferences_token(subscription.subscriber),
    )


@bp.get("/unsubscribe/<token>")
def unsubscribe(token: str) -> str | tuple[str, int]:
    """Ask before leaving: a GET (a link scanner, a prefetch) changes nothing."""
    try:
        payload = tokens.loads(tokens.UNSUBSCRIBE, token)
        subscription = subs.list_subscription(db.session, payload)
    except (tokens.TokenError, subs.LinkNoLongerValid) as exc:
        return _token_error(exc)
    return _unsubscribe_page(subscription, subscription.status == SubscriptionStatus.UNSUBSCRIBED)


@bp.post("/unsubscribe/<token>")
@limiter.exempt
def unsubscribe_post(token: str) -> str | tuple[str, int]:
    """Leave at once: the RFC 8058 one-click POST from a mail client, or the page's button."""
    try:
        payload = tokens.loads(tokens.UNSUBSCRIBE, token)
        subscription = subs.list_subscription(db.session, payload)
    except (tokens.TokenError, subs.LinkNoLongerValid) as exc:
        return _token_error(exc)
    source = "one-click" if "List-Unsubscribe" in request.form else "unsubscribe-page"
    subs.unsubscribe(db.session, subscription, origin(source))
    return _unsubscribe_page(subscription, True)


@bp.route("/preferences/<token>", methods=["GET", "POST"])
def preferences(token: str) -> str | tuple[str, int]:
    """Every list with the reader's state; change them, or leave all."""
    try:
        payload = tokens.loads(tokens.PREFERENCES, token)
        subscriber = subs.reader_from_payload(db.session, payload)
    except (tokens.TokenError, subs.LinkNoLongerValid) as exc:
        return _token_error(exc)
    saved = None
    if request.method == "POST":
        if request.form.get("action") == "leave-all":
            wanted: set[int] = set()
        else:
            wanted = {int(v) for v in request.form.getlist("newsletter") if v.isdigit()}
        joined, left = subs.update_preferences(db.session, subscriber, wanted, origin())
        saved = {"joined": joined, "left": left}
    states = {s.newsletter_id: s for s in subscriber.subscriptions}
    return render_template(
        "public/preferences.html",
        subscriber=subscriber,
        newsletters=active_newsletters(),
        states=states,
        saved=saved,
    )

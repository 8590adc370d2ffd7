"""Provider webhooks for returned mail and complaints: Amazon SES (through SNS), Postmark,
and a generic JSON form signed with a shared secret.

Each is on only when configured: SES when NEWSLETTER_SES_TOPIC_ARNS lists the topics we
subscribed, Postmark and the generic form when NEWSLETTER_BOUNCE_WEBHOOK_SECRET is set.
A request whose signature or credentials do not match gets 403 and stores nothing; an event
seen before changes nothing.
"""

from __future__ import annotations

import http.client
import logging
from functools import cache
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, jsonify, request

from newsletter.bounces import ingest, webhooks
from newsletter.extensions import csrf, db
from newsletter.links import Links

log = logging.getLogger(__name__)

bp = Blueprint("hooks", __name__, url_prefix="/hooks")
# Providers authenticate by signature or credentials, never by a browser session.
csrf.exempt(bp)
# Postmark sends the user name it was given in the webhook URL's credentials.
POSTMARK_USER = "newsletter"


@cache
def _verifier(topics: tuple[str, ...]) -> webhooks.SnsVerifier:
    """One verifier per set of topics, keeping the certificates it fetched."""
    return webhooks.SnsVerifier(topics=topics)


def _confirm_subscription(url: str) -> None:
    """Visit an SNS SubscribeURL (checked to be on an SNS host), as SNS asks; no redirects."""
    parts = urlsplit(url)
    connection = http.client.HTTPSConnection(parts.hostname or "", parts.port or 443, timeout=10)
    try:
        connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        answer = connection.getresponse()
        answer.read(64 * 1024)
        if answer.status != 200:
            raise OSError(f"SNS answered {answer.status}")
    finally:
        connection.close()


def _events(provider: str, body: bytes) -> list[webhooks.Event]:
    cfg = current_app.config
    secret = cfg.get("BOUNCE_WEBHOOK_SECRET") or ""
    if provider == "ses" and cfg.get("SES_TOPIC_ARNS"):
        result = webhooks.ses(
            body,
            _verifier(tuple(cfg["SES_TOPIC_ARNS"])),
            message_type=request.headers.get("x-amz-sns-message-type"),
        )
        if result.subscribe_url is not None:
            try:
                _confirm_subscription(result.subscribe_url)
            except OSError as exc:
                message = f"The subscription could not be confirmed: {exc}"
                raise webhooks.Unavailable(message) from exc
            log.info("SNS subscription confirmed")
        return list(result.events)
    if provider == "postmark" and secret:
        return webhooks.postmark(
            body,
            authorization=request.headers.get("Authorization"),
            username=POSTMARK_USER,
            password=secret,
        )
    if provider == "generic" and secret:
        return webhooks.generic(
            body, signature=request.headers.get("X-Newsletter-Signature"), secret=secret
        )
    abort(404)


@bp.post("/bounces/<provider>")
def bounces(provider: str) -> tuple[Response, int]:
    """Record a provider's bounce and complaint notifications."""
    body = request.get_data(cache=False)
    try:
        events = _events(provider, body)
    except webhooks.WebhookRefused as exc:
        return jsonify({"ok": False, "message": exc.message}), exc.status
    cfg = current_app.config
    counts = ingest.ingest_events(
        db.session, events, Links.from_config(cfg), ingest.Rules.from_config(cfg)
    )
    return jsonify({"ok": True, "events": dict(counts)}), 200

"""Security headers on every response: CSP with per-request nonces, framing, caching, HSTS."""

from __future__ import annotations

import secrets
from functools import lru_cache

from flask import Flask, Response, current_app, g, request

from newsletter import site

# Pages showing one person's data: a shared computer's browser cache must not keep them.
_PERSONAL_PUBLIC = {
    "public.confirm",
    "public.confirm_post",
    "public.unsubscribe",
    "public.unsubscribe_post",
    "public.preferences",
}
# The digest's HTML as a reader's mail client shows it: framed by the admin's preview page.
MAIL_PREVIEW = "admin.digest_preview_html"
# A list's edition on the web: the mail's HTML (its inline styles), no script at all.
ARCHIVE_EDITION = "archive.edition"
# The development mailbox shows mails (their inline styles) in a frame of its own page.
_MAIL_PAGES = {"mailbox.show"}
HSTS = "max-age=31536000"


def csp_nonce() -> str:
    """This request's nonce, for a <script> or <style> element written into a page."""
    if "csp_nonce" not in g:
        g.csp_nonce = secrets.token_urlsafe(16)
    return str(g.csp_nonce)


def policy(nonce: str | None, endpoint: str | None, image_origin: str | None = None) -> str:
    """The Content-Security-Policy of one response; `image_origin`: the site's logo's;
    `nonce`: the one its page's own <script> and <style> elements carry, if it wrote any."""
    if endpoint == MAIL_PREVIEW:
        # A mail: inline styles as mail clients render them, no script, images from anywhere.
        return (
            "default-src 'none'; style-src 'unsafe-inline'; img-src https: http: data:; "
            "font-src https:; frame-ancestors 'self'; base-uri 'none'; form-action 'none'; sandbox"
        )
    images = f"'self' data: {image_origin}" if image_origin else "'self' data:"
    if endpoint == ARCHIVE_EDITION:
        return (
            f"default-src 'none'; style-src 'unsafe-inline'; img-src {images}; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
    own = f"'self' 'nonce-{nonce}'" if nonce else "'self'"
    style = "'self' 'unsafe-inline'" if endpoint in _MAIL_PAGES else own
    return (
        f"default-src 'self'; script-src {own}; style-src {style}; "
        f"img-src {images}; connect-src 'self'; frame-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


@lru_cache(maxsize=512)
def _without_nonce(endpoint: str | None, image_origin: str | None) -> str:
    # The same few policies over and over (one per endpoint and logo): written once each.
    return policy(None, endpoint, image_origin)


def _new_nonce() -> None:
    # A new nonce for every request, also where one app context serves several (tests).
    g.pop("csp_nonce", None)


def _headers(response: Response) -> Response:
    endpoint = request.endpoint
    headers = response.headers
    # The names set already, in one pass: asking Headers for an absent name raises and
    # catches an error each time.
    present = {name.lower() for name in headers.keys()}
    if "content-security-policy" not in present:
        # Only pages show the logo: a JSON answer or a file need not read the settings.
        logo = site.current().image_origin if response.mimetype == "text/html" else None
        # A nonce only where the page wrote one into an element (a page kept from an
        # earlier answer has none): no other inline script or style runs.
        nonce = g.get("csp_nonce")
        csp = policy(nonce, endpoint, logo) if nonce else _without_nonce(endpoint, logo)
        headers.add("Content-Security-Policy", csp)
    for name, value in (
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "same-origin"),
        ("X-Frame-Options", "SAMEORIGIN" if endpoint == MAIL_PREVIEW else "DENY"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
    ):
        if name.lower() not in present:
            headers.add(name, value)
    https = str(current_app.config["BASE_URL"]).startswith("https://")
    if https and "strict-transport-security" not in present:
        headers.add("Strict-Transport-Security", HSTS)
    if endpoint and (endpoint.startswith("admin.") or endpoint in _PERSONAL_PUBLIC):
        headers["Cache-Control"] = "no-store"
        headers.pop("Expires", None)
    return response


def init_app(app: Flask) -> None:
    """Add the headers to every response and the nonce to every template."""
    app.before_request(_new_nonce)
    app.after_request(_headers)
    app.jinja_env.globals["csp_nonce"] = csp_nonce

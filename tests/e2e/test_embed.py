"""A signup box pasted on another site: one signup per press, inline reply only when allowed."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from flask import Flask
from playwright.sync_api import Page, expect
from sqlalchemy import func, select
from werkzeug.serving import make_server

from newsletter.extensions import db
from newsletter.models import ConsentEvent, OutboxMessage

from e2e.browsing import applied

HOST_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Host site</title></head>
<body><h1>A host site's article</h1>
<form method="post" action="{service}/subscribe" novalidate data-newsletter-box>
  <label for="e">Enter your email to subscribe</label>
  <input class="nl-email" type="email" id="e" name="email">
  <input type="hidden" name="newsletter" value="explaining-ukraine">
  <input type="text" name="leave_blank" hidden>
  <p class="nl-error" role="alert" hidden></p>
  <button type="submit">Subscribe</button>
</form>
<script src="{service}/static/embed.js"></script></body></html>"""


@pytest.fixture
def host_site(live_app: Flask) -> Iterator[str]:
    """A page on another origin (another port) carrying the box, as a site developer pastes it."""
    html = HOST_PAGE.format(service=live_app.config["BASE_URL"]).encode()

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [html]

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        server = make_server("127.0.0.1", port, app, fd=listener.fileno())
        thread = threading.Thread(target=server.serve_forever, name="e2e-host-site")
        thread.start()
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            server.shutdown()
            thread.join(timeout=10)


def _counts(app: Flask) -> tuple[int, int]:
    with app.app_context():
        signups = db.session.scalar(
            select(func.count()).select_from(ConsentEvent).where(ConsentEvent.action == "signup")
        )
        mails = db.session.scalar(select(func.count()).select_from(OutboxMessage))
        db.session.remove()
    return signups, mails


@pytest.mark.parametrize("allowed", [False, True], ids=["origin-not-listed", "origin-listed"])
def test_box_on_another_site_signs_up_once(page: Page, live_app: Flask, host_site: str, allowed):
    host_origin = host_site.rstrip("/")
    live_app.config["ALLOWED_ORIGINS"] = [host_origin] if allowed else []
    page.goto(host_site)
    page.fill("input[name=email]", "reader@example.com")
    page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_text("Successfully subscribed")).to_be_visible()
    if allowed:
        # The reply was read across origins and shown in the host page.
        expect(page).to_have_url(host_site)
    else:
        # The browser refused the script's request before it was sent; the form posted itself.
        expect(page).to_have_url(f"{live_app.config['BASE_URL']}/subscribe")
    applied(live_app)
    assert _counts(live_app) == (1, 1)

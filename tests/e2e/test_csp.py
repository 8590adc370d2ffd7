"""The production Content-Security-Policy in a real browser: nothing of ours is refused."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from flask import Flask
from playwright.sync_api import ConsoleMessage, Page, expect
from sqlalchemy import select
from werkzeug.serving import make_server

from newsletter.digests import states
from newsletter.extensions import db
from newsletter.models import (
    DigestStatus,
    Newsletter,
    Subscriber,
    Subscription,
    SubscriptionStatus,
)

from factories import PASSWORD, make_admin

# Recorded inside each page: the browser fires this event for every refusal the policy makes.
WATCH = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__violations.push(e.violatedDirective + " " + (e.blockedURI || "inline"));
});
"""


class Refusals:
    """What the browser refused on the pages a test visits, from the console and the events."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[str] = []
        page.add_init_script(WATCH)
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            self.console.append(message.text)

    def check(self) -> None:
        events = self.page.evaluate("window.__violations || []")
        assert self.console == [] and events == [], (self.console, events)


@pytest.fixture
def refusals(page: Page) -> Refusals:
    return Refusals(page)


def test_the_home_page_and_its_boxes_work_under_the_policy(page: Page, refusals, live_app):
    response = page.goto("/")
    assert response is not None
    policy = response.headers["content-security-policy"]
    assert "'unsafe-inline'" not in policy.split("script-src", 1)[1].split(";", 1)[0]
    box = page.locator("form[data-newsletter-box]").first
    box.locator("input[name=email]").fill("reader@example.com")
    box.get_by_role("button").click()
    # embed.js showed the reply in place: the script ran and its request was allowed.
    expect(page.get_by_text("Successfully subscribed")).to_be_visible()
    refusals.check()


def _reader_and_digest(app: Flask) -> int:
    with app.app_context():
        newsletter = db.session.scalar(select(Newsletter).order_by(Newsletter.id))
        reader = Subscriber(email="reader@example.com", email_key="reader@example.com")
        db.session.add(reader)
        db.session.flush()
        db.session.add(
            Subscription(
                subscriber_id=reader.id,
                newsletter_id=newsletter.id,
                status=SubscriptionStatus.CONFIRMED,
            )
        )
        db.session.commit()
        make_admin()
        digest = states.compose(db.session, newsletter)
        digest_id = digest.id
        db.session.remove()
    return digest_id


def test_the_admin_works_under_the_policy(page: Page, refusals, live_app):
    digest_id = _reader_and_digest(live_app)
    page.goto("/admin/login")
    page.fill("input[name=email]", "editor@news.example.org")
    page.fill("input[name=password]", PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("link", name="Dashboard")).to_be_visible()
    for path in ("/admin/", "/admin/newsletters", "/admin/items", "/admin/subscribers"):
        page.goto(path)
    # The draft's page runs digest.js (reordering arrows).
    page.goto(f"/admin/digests/{digest_id}")
    expect(page.locator("button.move").first).to_be_visible()
    # The preview frames the mail from its own address; the mail's inline styles are its own.
    page.goto(f"/admin/digests/{digest_id}/preview")
    frame = page.frame_locator("iframe.digest-preview")
    expect(frame.locator("body")).to_contain_text("Unsubscribe")
    # Sending: the progress page's bar widths come in a style element with the nonce.
    with live_app.app_context():
        from newsletter.models import Digest

        states.start(db.session, db.session.get(Digest, digest_id))
        db.session.remove()
    page.goto(f"/admin/digests/{digest_id}")
    bar = page.locator("[data-bar=sent]")
    expect(bar).to_be_attached()
    width = bar.evaluate("el => getComputedStyle(el.parentElement).width")
    assert width != "auto"
    refusals.check()


def test_the_archive_works_under_its_policies(page: Page, refusals, live_app):
    """The list's page under the site's policy; an edition, the mail's HTML, under its own."""
    with live_app.app_context():
        newsletter = db.session.scalar(select(Newsletter).where(Newsletter.slug == "daily"))
        digest = states.compose(db.session, newsletter, intro="Good morning.")
        states.start(db.session, digest)
        digest.status = DigestStatus.SENT
        db.session.commit()
        db.session.remove()
    page.goto("/archive/daily")
    edition = page.locator("ol.archive a").first
    expect(edition).to_be_visible()
    edition.click()
    expect(page.get_by_text("Good morning.")).to_be_visible()
    # The mail's styles apply: its <style> element and inline styles are allowed.
    sheet = page.locator("table.sheet")
    assert sheet.evaluate("el => getComputedStyle(el).backgroundColor") == "rgb(255, 255, 255)"
    assert sheet.evaluate("el => getComputedStyle(el).maxWidth") == "600px"
    refusals.check()


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
def strict_host(live_app: Flask) -> Iterator[str]:
    """A site on another origin with a strict policy of its own that lets our script in."""
    service = live_app.config["BASE_URL"]
    html = HOST_PAGE.format(service=service).encode()
    policy = (
        f"default-src 'none'; script-src {service}; connect-src {service}; "
        f"form-action {service}; style-src 'self'"
    )

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        start_response(
            "200 OK",
            [("Content-Type", "text/html; charset=utf-8"), ("Content-Security-Policy", policy)],
        )
        return [html]

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        server = make_server("127.0.0.1", port, app, fd=listener.fileno())
        thread = threading.Thread(target=server.serve_forever, name="e2e-strict-host")
        thread.start()
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            server.shutdown()
            thread.join(timeout=10)


def test_the_embed_script_works_on_a_host_page_with_a_strict_policy(
    page: Page, refusals, live_app, strict_host
):
    live_app.config["ALLOWED_ORIGINS"] = [strict_host.rstrip("/")]
    page.goto(strict_host)
    page.fill("input[name=email]", "reader@example.com")
    page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_text("Successfully subscribed")).to_be_visible()
    expect(page).to_have_url(strict_host)
    refusals.check()


def test_the_proof_of_work_widget_works_under_the_policy(page: Page, refusals, live_app):
    live_app.config["ALTCHA_WORK"] = 200
    page.goto("/")
    box = page.locator("#box-editors-picks")
    expect(box.get_by_text("I'm not a robot")).to_be_visible()
    box.locator("input[name=email]").fill("reader@example.com")
    box.get_by_role("button").click()
    expect(box.get_by_text("Successfully subscribed")).to_be_visible()
    refusals.check()

"""A box on another site, in a real browser: readers come back only to sites admins listed."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from flask import Flask
from playwright.sync_api import Browser, Page, expect
from werkzeug.serving import make_server

from newsletter.extensions import db
from newsletter.models import AllowedOrigin

HOST_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Host article</title></head><body><h1>Moldova's Sandu advances to run-off</h1>
<form method="post" action="{service}/subscribe" data-newsletter-box>
  <label for="e">Enter your email to subscribe</label>
  <input class="nl-email" type="email" id="e" name="email">
  <input type="hidden" name="newsletter" value="explaining-ukraine">
  <input type="hidden" name="return_to" value="{page}?subscribed=1">
  <p class="nl-error" role="alert" hidden></p>
  <button type="submit">Subscribe</button>
</form>
<script src="{service}/static/embed.js"></script></body></html>"""


@pytest.fixture
def host_article(live_app: Flask) -> Iterator[str]:
    """An article on another origin (another port) with a box that asks to come back."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        page = f"http://127.0.0.1:{listener.getsockname()[1]}/article"
        html = HOST_PAGE.format(service=live_app.config["BASE_URL"], page=page).encode()

        def app(environ, start_response):  # type: ignore[no-untyped-def]
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [html]

        server = make_server("127.0.0.1", listener.getsockname()[1], app, fd=listener.fileno())
        thread = threading.Thread(target=server.serve_forever, name="e2e-host-article")
        thread.start()
        try:
            yield page
        finally:
            server.shutdown()
            thread.join(timeout=10)


def _list_site(app: Flask, origin: str) -> None:
    """As an admin does at /admin/sites: a row, read by the web app on its next look."""
    with app.app_context():
        db.session.add(AllowedOrigin(origin=origin, note="e2e"))
        db.session.commit()
        db.session.remove()
    app.config["ALLOWED_ORIGINS_CACHE_SECONDS"] = 0


@pytest.fixture
def no_script_page(browser: Browser, live_app: Flask) -> Iterator[Page]:
    """A tab with JavaScript off: the box is a plain form."""
    context = browser.new_context(java_script_enabled=False)
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def test_a_listed_site_gets_its_reader_back(no_script_page, live_app, host_article):
    _list_site(live_app, host_article.rsplit("/", 1)[0])
    no_script_page.goto(host_article)
    no_script_page.fill("input[name=email]", "reader@example.com")
    no_script_page.get_by_role("button", name="Subscribe").click()
    expect(no_script_page).to_have_url(f"{host_article}?subscribed=1")
    expect(no_script_page.get_by_role("heading", level=1)).to_have_text(
        "Moldova's Sandu advances to run-off"
    )


def test_a_site_not_listed_gets_our_thank_you_page(no_script_page, live_app, host_article):
    no_script_page.goto(host_article)
    no_script_page.fill("input[name=email]", "reader@example.com")
    no_script_page.get_by_role("button", name="Subscribe").click()
    expect(no_script_page).to_have_url(f"{live_app.config['BASE_URL']}/subscribe")
    expect(no_script_page.get_by_text("Successfully subscribed")).to_be_visible()


def test_a_site_listed_in_the_admin_gets_the_reply_in_place(page, live_app, host_article):
    _list_site(live_app, host_article.rsplit("/", 1)[0])
    page.goto(host_article)
    page.fill("input[name=email]", "reader@example.com")
    page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_text("Successfully subscribed")).to_be_visible()
    expect(page).to_have_url(host_article)

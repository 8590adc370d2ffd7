"""What the browser tests share: host sites on other ports, the dev mailbox, keyboard steps, axe,
reflow and screenshots."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from axe_playwright_python.sync_playwright import Axe
from flask import Flask
from playwright.sync_api import Locator, Page, expect
from sqlalchemy import func, select
from werkzeug.serving import make_server

from newsletter.extensions import db
from newsletter.models import ConsentEvent, QueuedSignup, Subscriber, Subscription
from newsletter.newsletters import by_slug
from newsletter.web.admin import embed

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
_AXE = Axe()
# axe's impacts that fail a page; "moderate" and "minor" ones are left to judgement.
BLOCKING = ("serious", "critical")


def screenshot(page: Page, name: str) -> None:
    """Keep the whole page as the reader saw it at this step."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


@contextmanager
def host_site(html: str) -> Iterator[str]:
    """A page on another origin (its own port), as a site that pasted our snippets serves it."""
    body = html.encode()

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [body]

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        server = make_server("127.0.0.1", port, app, threaded=True, fd=listener.fileno())
        thread = threading.Thread(target=server.serve_forever, name="e2e-host")
        thread.start()
        try:
            yield f"http://127.0.0.1:{port}/article"
        finally:
            server.shutdown()
            thread.join(timeout=10)


def snippets(app: Flask, boxes: list[tuple[list[str], str]]) -> list[str]:
    """The admin's snippets for these boxes: (newsletter slugs, language) each."""
    with app.test_request_context():
        codes = []
        for slugs, lang in boxes:
            chosen = [by_slug(db.session, slug) for slug in slugs]
            codes.append(embed.snippet(chosen, lang).code)
        db.session.remove()
    return codes


def host_article(codes: list[str], lang: str = "en") -> str:
    """A bare article page (no style of its own) carrying the boxes between its paragraphs."""
    parts = []
    for number, code in enumerate(codes, start=1):
        parts.append(f"<p>Paragraph {number} of the article.</p>\n{code}")
    body = "\n".join(parts)
    return (
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>2 drones shot down over Moscow, Smolensk oblasts, Russia claims</title></head>"
        "<body><main><h1>2 drones shot down over Moscow, Smolensk oblasts, Russia claims</h1>"
        f"{body}</main></body></html>"
    )


def mail_link(page: Page, to: str, subject: str, seconds: float = 10.0) -> Locator:
    """The dev mailbox's link to the newest mail with this subject to this reader."""
    deadline = time.monotonic() + seconds
    page.goto("/_mailbox/")
    link = page.locator("table.mailbox tr", has_text=to).get_by_role("link", name=subject)
    while link.count() == 0:
        if time.monotonic() > deadline:
            pytest.fail(f"no mail {subject!r} to {to} in the mailbox after {seconds} s")
        page.wait_for_timeout(200)
        page.reload()
    return link.first


def open_mail(page: Page, to: str, subject: str) -> None:
    """Open a mail from the dev mailbox, as the reader opens it in their mail client."""
    mail_link(page, to, subject).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(subject)


def tab_to(page: Page, target: Locator, presses: int = 60, backwards: bool = False) -> None:
    """Press Tab (or Shift+Tab) until the target has the focus, and check the focus shows."""
    key = "Shift+Tab" if backwards else "Tab"
    for _ in range(presses):
        page.keyboard.press(key)
        if target.evaluate("el => el === document.activeElement"):
            assert focus_visible(target), "the focused element shows no focus indicator"
            return
    pytest.fail(f"{target} never got the focus after {presses} presses of {key}")


def focus_visible(target: Locator) -> bool:
    """Whether the focused element is drawn with an outline or a ring a sighted user sees."""
    return bool(
        target.evaluate(
            """el => {
              const s = getComputedStyle(el);
              const outline = s.outlineStyle !== "none" && parseFloat(s.outlineWidth) > 0;
              return el.matches(":focus-visible") && (outline || s.boxShadow !== "none");
            }"""
        )
    )


def check_axe(page: Page, name: str) -> None:
    """axe-core on the page as it is now: no serious or critical violation."""
    results = _AXE.run(page)
    blocking = [v for v in results.response["violations"] if v["impact"] in BLOCKING]
    if blocking:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / f"axe-{name}.txt").write_text(results.generate_report())
    assert not blocking, f"{name}: " + "; ".join(
        f"{v['id']} ({v['impact']}) at {[n['target'] for n in v['nodes']][:3]}" for v in blocking
    )


def no_horizontal_scroll(page: Page, name: str) -> None:
    """The page fits its viewport's width: nothing to scroll sideways."""
    problem = sideways(page, name)
    if problem:
        pytest.fail(problem)


def sideways(page: Page, name: str) -> str | None:
    """What makes the page scroll sideways, or None when it fits its viewport's width."""
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    if widths[0] > widths[1]:
        # The innermost elements that stick out, to say what to fix.
        wide = page.evaluate(
            """width => [...document.querySelectorAll("body *")]
              .filter(el => el.getBoundingClientRect().right > width + 1
                || el.scrollWidth > el.clientWidth + 1
                  && getComputedStyle(el).overflowX === "visible")
              .filter(el => {
                for (let up = el.parentElement; up; up = up.parentElement) {
                  if (getComputedStyle(up).overflowX !== "visible") return false;
                }
                return true;
              })
              .filter(el => ![...el.children].some(
                c => c.getBoundingClientRect().right > width + 1))
              .slice(0, 5)
              .map(el => el.tagName.toLowerCase() + "." + el.className + " "
                + Math.round(el.getBoundingClientRect().right))""",
            widths[1],
        )
        return f"{name} scrolls sideways: {widths[0]} px in {widths[1]} px: {wide}"
    return None


def applied(app: Flask, within: float = 10.0) -> None:
    """Wait until the worker has applied every queued signup, as it does within a second."""
    deadline = time.monotonic() + within
    with app.app_context():
        while db.session.scalar(select(func.count()).select_from(QueuedSignup)):
            db.session.remove()
            assert time.monotonic() < deadline, "queued signups not applied in time"
            time.sleep(0.1)
        db.session.remove()


def counts(app: Flask, email: str | None = None) -> tuple[int, int]:
    """Readers and signups stored (of one address, when given), once the worker has applied
    the queued ones."""
    applied(app)
    with app.app_context():
        readers = select(func.count()).select_from(Subscriber)
        signups = select(func.count()).select_from(ConsentEvent).join(Subscription)
        signups = signups.join(Subscriber).where(ConsentEvent.action == "signup")
        if email:
            readers = readers.where(Subscriber.email == email)
            signups = signups.where(Subscriber.email == email)
        found = (db.session.scalar(readers) or 0, db.session.scalar(signups) or 0)
        db.session.remove()
    return found


def reader_locale(app: Flask, email: str) -> str | None:
    """The language kept with a reader, once the worker has applied the queued signups."""
    applied(app)
    with app.app_context():
        locale = db.session.scalar(select(Subscriber.locale).where(Subscriber.email == email))
        db.session.remove()
    return locale


def confirm_link(page: Page) -> Locator:
    """The confirmation link in the mail open in the mailbox."""
    return page.locator("ul.links a[href*='/confirm/']")


URL_PATH = re.compile(r"^https?://[^/]+(/.*)$")

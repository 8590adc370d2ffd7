"""A digest in a real browser: compose, reorder with the arrows, send, watch the bar fill."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flask import Flask
from playwright.sync_api import Page, expect
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter import worker
from newsletter.extensions import db
from newsletter.mail.transport import MemoryTransport
from newsletter.models import (
    Digest,
    DigestStatus,
    Newsletter,
    Subscriber,
    Subscription,
    SubscriptionStatus,
)

from factories import PASSWORD, make_admin, sender

SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
READERS = 40
# Slow enough for a poll every 2 s to see the bar part-way.
RATE = 8.0


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


@contextmanager
def _sending_digests(app: Flask, transport: MemoryTransport) -> Iterator[None]:
    """Run a digest worker, throttled, as `newsletter worker` does."""
    with app.app_context():
        digests = sender(transport, rate=RATE, batch_size=5)
    process = worker.Worker(
        lambda: Session(db.engine),
        [("digest sending", digests)],
        transport,
        worker.Settings(poll_interval=0.1),
    )
    stop = process.stop

    def work() -> None:
        with app.app_context():
            process.run()

    thread = threading.Thread(target=work, name="e2e-digests")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def test_digest_is_sent_while_the_bar_fills(page: Page, live_app: Flask) -> None:
    with live_app.app_context():
        make_admin("writer@news.example.org", "editor")
        daily = db.session.scalar(select(Newsletter).where(Newsletter.slug == "daily"))
        assert daily is not None
        for n in range(READERS):
            reader = Subscriber(email=f"reader{n}@example.com", email_key=f"reader{n}@example.com")
            db.session.add(
                Subscription(
                    subscriber=reader, newsletter=daily, status=SubscriptionStatus.CONFIRMED
                )
            )
        db.session.commit()

    page.goto("/admin/login")
    page.get_by_label("Email").fill("writer@news.example.org")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("navigation", name="Admin").get_by_role("link", name="Digests").click()
    page.get_by_role("button", name="New digest of Daily Briefing").click()

    items = page.locator("ol[data-reorder] > li")
    expect(items.first).to_be_visible()
    first, second = (
        items.nth(0).locator("strong").inner_text(),
        items.nth(1).locator("strong").inner_text(),
    )
    items.nth(1).get_by_role("button", name=f"Move up: {second}").click()
    expect(items.nth(0).locator("strong")).to_have_text(second)
    expect(items.nth(0).locator('input[name^="position-"]')).to_have_value("1")
    expect(items.nth(1).locator('input[name^="position-"]')).to_have_value("2")
    page.get_by_label("Subject").fill("Today's briefing")
    screenshot(page, "digest-01-edit")
    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, "digest-01-edit-phone")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_text("Saved.")).to_be_visible()
    expect(items.nth(0).locator("strong")).to_have_text(second)
    expect(items.nth(1).locator("strong")).to_have_text(first)

    page.get_by_role("button", name="Save and preview").click()
    expect(page.locator('iframe[sandbox=""]')).to_be_visible()
    frame = page.frame_locator("iframe.digest-preview")
    expect(frame.get_by_text(second).first).to_be_visible()
    screenshot(page, "digest-02-preview")
    page.get_by_role("link", name="Back to the digest").click()

    transport = MemoryTransport()
    with _sending_digests(live_app, transport):
        page.get_by_role("button", name=f"Send now to {READERS} confirmed readers").click()
        # Nothing goes until the editor confirms on the page that names the list and readers.
        expect(page.get_by_role("heading", name="Send this digest now?")).to_be_visible()
        screenshot(page, "digest-03-confirm")
        page.get_by_role("button", name=f"Yes, send it now to {READERS} readers").click()
        bar = page.get_by_role("progressbar")
        expect(bar).to_be_visible()
        seen: list[int] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            value = int(bar.get_attribute("aria-valuenow") or 0)
            if not seen or seen[-1] != value:
                seen.append(value)
                if 0 < value < 100 and len(seen) == 2:
                    screenshot(page, "digest-04-sending")
            if value == 100:
                break
            page.wait_for_timeout(100)
        expect(bar).to_have_attribute("aria-valuenow", "100")
        expect(page.get_by_role("status").filter(has_text="Sent")).to_be_visible()
    screenshot(page, "digest-05-sent")

    assert any(0 < value < 100 for value in seen), seen
    assert seen == sorted(seen), seen
    assert len(transport.messages) == READERS
    assert {m["Subject"] for m in transport.messages} == {"Today's briefing"}
    with live_app.app_context():
        digest = db.session.scalar(select(Digest))
        assert digest is not None and digest.status == DigestStatus.SENT
        assert digest.sent_count == READERS

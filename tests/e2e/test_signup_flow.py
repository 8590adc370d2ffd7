"""The signup flow in a real browser: signup box, confirmation mail, confirm page."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Locator, Page, expect
from sqlalchemy import func, select

from newsletter.extensions import db
from newsletter.models import Subscriber, Subscription, SubscriptionStatus

SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
EMAIL = "reader@example.com"
THANKS = "Thank you for signing up for this newsletter. We\u2019ve sent you a confirmation email."
SUBJECT = "Please confirm your subscription to Daily Briefing"


def screenshot(page: Page, name: str) -> None:
    """Keep the whole page as the reader saw it at this step."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


def wait_for_mail(page: Page, link: Locator, seconds: float = 10.0) -> None:
    """Reload the mailbox until the worker has written the mail the link points to."""
    deadline = time.monotonic() + seconds
    page.goto("/_mailbox/")
    while link.count() == 0:
        if time.monotonic() > deadline:
            pytest.fail(f"no mail {SUBJECT!r} to {EMAIL} in the mailbox after {seconds} s")
        page.wait_for_timeout(200)
        page.reload()


def test_signup_and_confirm(page: Page, live_app: Flask) -> None:
    page.goto("/")
    box = page.locator("form[data-newsletter-box]").first
    expect(box.get_by_role("heading", name="Daily Briefing")).to_be_visible()
    screenshot(page, "01-home")

    email = box.locator(".nl-email")
    email.fill("not-an-address")
    box.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_text("Please, enter correct email address")).to_be_visible()
    expect(email).to_have_attribute("aria-invalid", "true")
    screenshot(page, "02-invalid-address")

    email.fill(EMAIL)
    box.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_text(THANKS)).to_be_visible()
    expect(page.get_by_text("Successfully subscribed")).to_be_visible()
    screenshot(page, "03-subscribed")

    mail = page.locator("table.mailbox tr", has_text=EMAIL).get_by_role("link", name=SUBJECT)
    wait_for_mail(page, mail)
    expect(mail).to_have_count(1)
    screenshot(page, "04-mailbox")

    mail.click()
    expect(page.get_by_role("heading", name=SUBJECT)).to_be_visible()
    site = re.escape(live_app.config["BASE_URL"])
    confirm_link = page.locator("ul.links a[href*='/confirm/']")
    expect(confirm_link).to_have_count(1)
    expect(confirm_link).to_have_attribute("href", re.compile(rf"^{site}/confirm/[^/?#]+$"))
    screenshot(page, "05-confirmation-mail")

    confirm_link.click()
    expect(page).to_have_url(re.compile(r"/confirm/[^/?#]+$"))
    expect(page.get_by_role("heading", name="Confirm your subscription")).to_be_visible()
    expect(page.get_by_role("listitem").filter(has_text="Daily Briefing")).to_be_visible()
    screenshot(page, "06-confirm-page")

    page.get_by_role("button", name="Confirm subscription").click()
    expect(page.get_by_role("heading", name="Subscription confirmed")).to_be_visible()
    expect(page.get_by_role("listitem").filter(has_text="Daily Briefing")).to_be_visible()
    screenshot(page, "07-confirmed")

    with live_app.app_context():
        # The bad address stored nothing; the good one is one confirmed subscription.
        assert db.session.scalar(select(func.count(Subscriber.id))) == 1
        subscription = db.session.scalars(
            select(Subscription).join(Subscriber).where(Subscriber.email == EMAIL)
        ).one()
        assert subscription.newsletter.slug == "daily"
        assert subscription.status == SubscriptionStatus.CONFIRMED
        assert subscription.confirmed_at is not None

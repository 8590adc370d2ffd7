"""A reader chooses how often: weekly in a box, confirmed; the weekly edition, not the daily,
reaches them; its "View in browser" opens the archive; then one combined mail on the
preferences page."""

from __future__ import annotations

import re

from flask import Flask
from playwright.sync_api import Page, expect
from sqlalchemy import select

from newsletter import worker
from newsletter.digests import states
from newsletter.extensions import db
from newsletter.models import ConsentEvent, Item, Subscriber, Subscription
from newsletter.newsletters import by_slug
from tests.e2e.browsing import applied, confirm_link, mail_link, open_mail, screenshot

EMAIL = "weekly.reader@example.com"
WEEKLY = "The week in Ukraine"
DAILY = "Tonight in Ukraine"


def _send_both_editions(app: Flask) -> None:
    """The editor sends the list's daily and weekly editions; a worker sends them off."""
    with app.app_context():
        daily = by_slug(db.session, "daily")
        items = list(db.session.scalars(select(Item).order_by(Item.published_at.desc())))
        for subject, frequency in ((WEEKLY, "weekly"), (DAILY, "daily")):
            digest = states.compose(
                db.session, daily, subject=subject, items=items[:2], frequency=frequency
            )
            states.start(db.session, digest)
        settings = worker.Settings(poll_interval=0.1)
        sending = worker.build(app.config, lambda: db.session, settings, kinds=["digest sending"])
        sending.run(drain=True)
        db.session.remove()


def _reader(app: Flask) -> tuple[str | None, bool, list[str]]:
    with app.app_context():
        subscription = db.session.scalars(
            select(Subscription).join(Subscriber).where(Subscriber.email == EMAIL)
        ).one()
        actions = db.session.scalars(
            select(ConsentEvent.action)
            .where(ConsentEvent.subscription_id == subscription.id)
            .order_by(ConsentEvent.id)
        ).all()
        found = subscription.frequency, subscription.subscriber.combined, list(actions)
        db.session.remove()
    return found


def test_weekly_in_a_box_then_one_combined_mail(page: Page, live_app: Flask) -> None:
    page.goto("/")
    box = page.locator("#box-article")
    how_often = box.get_by_label("How often")
    expect(how_often).to_have_value("daily")  # the demo list's preselected choice
    how_often.select_option(label="Weekly")
    box.get_by_label("Enter your email to subscribe").fill(EMAIL)
    box.get_by_role("button", name="Subscribe").click()
    expect(box.get_by_role("status")).to_contain_text("Successfully subscribed")
    screenshot(page, "frequency-01-weekly-chosen")
    applied(live_app)

    open_mail(page, EMAIL, "Please confirm your subscription to Daily Briefing")
    confirm_link(page).click()
    page.get_by_role("button", name="Confirm subscription").click()
    expect(page.get_by_role("heading", name="Subscription confirmed")).to_be_visible()
    assert _reader(live_app)[0] == "weekly"

    # Only the weekly edition reaches a weekly reader.
    _send_both_editions(live_app)
    mail_link(page, EMAIL, WEEKLY)
    expect(page.locator("table.mailbox tr", has_text=EMAIL).filter(has_text=DAILY)).to_have_count(0)
    open_mail(page, EMAIL, WEEKLY)
    screenshot(page, "frequency-02-weekly-edition")

    # "View in browser": the edition on the web, with nobody's personal links.
    page.get_by_role("link", name="View in browser").first.click()
    expect(page).to_have_url(re.compile(r"/archive/daily/\d+-\d{4}-\d{2}-\d{2}$"))
    expect(page.get_by_text(WEEKLY).first).to_be_visible()
    hrefs = page.locator("a").evaluate_all("links => links.map(a => a.href)")
    assert not [h for h in hrefs if "/unsubscribe/" in h or "/preferences/" in h]
    page.get_by_role("link", name="All editions").click()
    expect(page.get_by_role("link", name=WEEKLY)).to_be_visible()
    expect(page.get_by_role("link", name=DAILY)).to_be_visible()
    screenshot(page, "frequency-03-archive")

    # The preferences page, from the mail: one combined mail for all the lists.
    open_mail(page, EMAIL, WEEKLY)
    page.locator("a[href*='/preferences/']").first.click()
    expect(page.get_by_role("heading", name="Your newsletters")).to_be_visible()
    combined = page.get_by_role(
        "checkbox", name="One combined mail per edition for all my newsletters"
    )
    expect(combined).not_to_be_checked()
    combined.check()
    page.get_by_role("button", name="Save my choices").click()
    expect(page.get_by_role("status")).to_contain_text(
        "You will get one combined mail per edition for all your newsletters."
    )
    screenshot(page, "frequency-04-combined")

    frequency, is_combined, actions = _reader(live_app)
    assert (frequency, is_combined) == ("weekly", True)
    assert actions[-1] == "combined_changed"

"""Every admin page and the development mailbox on a phone: 390 px wide, no sideways scroll."""

from __future__ import annotations

import re
from pathlib import Path

from flask import Flask
from playwright.sync_api import Browser, Page
from sqlalchemy import select

from newsletter import accounts
from newsletter.digests import states
from newsletter.extensions import db
from newsletter.models import (
    AdminUser,
    ConsentAction,
    ConsentEvent,
    ImportJob,
    ImportMode,
    Item,
    JobStatus,
    Newsletter,
    Role,
    Subscriber,
    Subscription,
    SubscriptionStatus,
)

from factories import PASSWORD, make_admin

SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots" / "phone"
PHONE = {"width": 390, "height": 844}
# Pages that answer something other than HTML: not laid out by the browser.
NOT_PAGES = {
    "admin.digest_progress",
    "admin.digest_preview_html",
    "admin.import_report",
    "admin.subscriber_data",
    "admin.subscribers_export",
    "mailbox.raw",
}


def _fill(app: Flask) -> dict[str, object]:
    """A reader, a digest on its way, an import done: each kind of page has something to show."""
    with app.app_context():
        admin = make_admin()
        newsletter = db.session.scalars(select(Newsletter).order_by(Newsletter.id)).first()
        assert newsletter is not None
        reader = Subscriber(
            email="olena.kovalenko@example.com", email_key="olena.kovalenko@example.com"
        )
        db.session.add(reader)
        subscription = Subscription(
            subscriber=reader,
            newsletter=newsletter,
            status=SubscriptionStatus.CONFIRMED,
            source="the box under an article with a long name",
        )
        db.session.add(
            ConsentEvent(
                subscription=subscription,
                action=ConsentAction.SIGNUP,
                ip="2001:db8:85a3::8a2e:370:7334",
                user_agent="Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) "
                "AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
                source="the box under an article with a long name",
                text_shown="Enter your email to subscribe to the Daily Briefing, the day's "
                "main stories every morning",
            )
        )
        db.session.commit()
        digest = states.compose(db.session, newsletter)
        states.start(db.session, digest)
        item = db.session.scalars(select(Item)).first()
        assert item is not None
        job = ImportJob(
            newsletter=newsletter,
            admin_user_id=admin.id,
            filename="subscribers-from-the-old-system-2024-11.csv",
            mode=ImportMode.CONFIRM,
            status=JobStatus.DONE,
            rows_read=1200,
            added=1150,
            rejected=50,
        )
        db.session.add(job)
        db.session.commit()
        draft = states.compose(db.session, newsletter, items=[item])
        # An account waiting for its owner to choose a password, with its link.
        newcomer = accounts.create_admin(
            db.session, "new.editor.with.a.long.address@news.example.org", None, Role.EDITOR
        )
        return {
            "draft_id": draft.id,
            "account_id": newcomer.id,
            "token": accounts.password_token(newcomer, app.config["SECRET_KEY"]),
            "newsletter_id": newsletter.id,
            "digest_id": digest.id,
            "subscriber_id": reader.id,
            "item_id": item.id,
            "job_id": job.id,
        }


def _paths(app: Flask, ids: dict[str, object]) -> list[tuple[str, str]]:
    """(endpoint, path) of every admin and mailbox page, from the app's own URL map."""
    found = []
    for rule in app.url_map.iter_rules():
        endpoint = rule.endpoint
        if "GET" not in (rule.methods or ()) or endpoint in NOT_PAGES:
            continue
        if not endpoint.startswith(("admin.", "mailbox.")):
            continue
        missing = set(rule.arguments) - set(ids)
        assert not missing, f"{rule.rule}: give the test a {missing} to open it with"
        path = rule.rule
        for name in rule.arguments:
            path = re.sub(rf"<(?:\w+:)?{name}>", str(ids[name]), path)
        found.append((endpoint, path))
    return sorted(found)


def _sideways(page: Page) -> int:
    """How many pixels the page is wider than the screen."""
    return int(
        page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    )


def test_admin_pages_and_the_mailbox_fit_a_phone(browser: Browser, live_app: Flask) -> None:
    ids = _fill(live_app)
    context = browser.new_context(base_url=live_app.config["BASE_URL"], viewport=PHONE)
    context.set_default_timeout(10_000)
    page = context.new_page()
    try:
        page.goto("/admin/login")
        assert _sideways(page) <= 0
        page.fill("input[name=email]", "editor@news.example.org")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/admin/")
        # A confirmation mail in the mailbox, for its pages.
        page.goto("/")
        page.locator("form[data-newsletter-box] input[type=email]").first.fill(
            "mykola.shevchenko@example.com"
        )
        page.locator("form[data-newsletter-box] button[type=submit]").first.click()
        page.wait_for_timeout(500)
        page.goto("/_mailbox/")
        names = page.locator("a[href^='/_mailbox/']").evaluate_all(
            "links => links.map(a => a.getAttribute('href').split('/')[2]).filter(Boolean)"
        )
        ids["name"] = names[0] if names else "none"
        too_wide = []
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        draft = ids["draft_id"]
        # A draft's pages besides the URL map's: its edit form and the questions asked first.
        asked = [
            ("draft.edit", f"/admin/digests/{draft}"),
            ("draft.confirm_send", f"/admin/digests/{draft}/send"),
            ("draft.confirm_schedule", f"/admin/digests/{draft}/schedule?when=2030-07-01T09:30"),
            ("draft.cancel", f"/admin/digests/{draft}/cancel"),
        ]
        for endpoint, path in _paths(live_app, ids) + asked:
            response = page.goto(path)
            assert response is not None and response.status == 200, (path, response)
            page.screenshot(path=SCREENSHOTS / f"{endpoint}.png", full_page=True)
            if (extra := _sideways(page)) > 0:
                too_wide.append(f"{path}: {extra} px too wide")
        assert too_wide == [], "\n".join(too_wide)
    finally:
        context.close()
        with live_app.app_context():
            db.session.remove()
            assert db.session.scalar(select(AdminUser.id)) is not None

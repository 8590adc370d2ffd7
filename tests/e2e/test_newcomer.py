"""A newcomer's first hour, in a real browser against the instance `make run` starts: a reader
signs up on the demo page, the README's command makes an admin, who signs in, brands the site,
composes a digest, previews it, sends a test, confirms the send and watches it finish.

Every admin page on the way is also looked at 390 px wide and must not scroll sideways; the
screenshots at both widths go under artifacts/screenshots/newcomer/.
"""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Browser, Page, expect

from dev_instance import first_five_minutes, mail_with, mails, make_run, text_of, wait

SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots" / "newcomer"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
ADMIN = "you@example.org"  # the README's create-admin command names this address
PASSWORD = "correct horse battery staple"
READER = "olena@example.com"
SITE = "Kyiv Evening Post"
ADDRESS = "1 Khreshchatyk St, Kyiv 01001, Ukraine"


def look(page: Page, name: str, *, admin: bool = True) -> None:
    """Screenshots at desktop and phone widths; an admin page must fit the phone."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)
    page.set_viewport_size(PHONE)
    try:
        page.screenshot(path=SCREENSHOTS / f"{name}-390.png", full_page=True)
        if admin:
            wide = page.evaluate("document.documentElement.scrollWidth")
            assert wide <= PHONE["width"], f"{name} scrolls sideways at 390 px: {wide} px wide"
    finally:
        page.set_viewport_size(DESKTOP)


def test_a_newcomer_brands_the_site_and_sends_a_digest(browser: Browser, tmp_path: Path) -> None:
    blocks = first_five_minutes()
    with make_run(tmp_path) as demo:
        context = browser.new_context(base_url=demo.base, viewport=DESKTOP)
        context.set_default_timeout(20_000)
        page = context.new_page()
        try:
            # A reader signs up in the Daily Briefing box of the demo page and confirms.
            page.goto("/")
            box = page.locator("form.nl-box").filter(
                has=page.locator('input[name="newsletter"][value="daily"]')
            )
            box.get_by_label(re.compile("email", re.I)).first.fill(READER)
            box.get_by_role("button").first.click()
            expect(page.get_by_text("We’ve sent you a confirmation email")).to_be_visible()
            confirmation = wait("the confirmation", lambda: mail_with(demo.outbox, "onfirm"))
            link = re.search(rf"{re.escape(demo.base)}/confirm/\S+", text_of(confirmation))
            assert link is not None
            page.goto(link.group(0))
            page.get_by_role("button", name=re.compile("Confirm")).click()
            expect(page.get_by_role("heading", name=re.compile("confirmed"))).to_be_visible()

            # The admin account, with the README's command in a second terminal.
            created = demo.run(blocks[1], input=f"{PASSWORD}\n" * 2, timeout=60)
            assert created.returncode == 0, created.stdout + created.stderr

            page.goto("/admin")
            page.get_by_label("Email").fill(ADMIN)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            nav = page.get_by_role("navigation", name="Admin")
            expect(nav).to_be_visible()
            look(page, "01-dashboard")

            # The brand: every public page and mail carries it from now on.
            nav.get_by_role("link", name="Site settings").click()
            page.get_by_label("Site name").fill(SITE)
            page.get_by_label("Accent colour").fill("#8a1538")
            page.get_by_label("Postal address of the publisher").fill(ADDRESS)
            look(page, "02-site-settings")
            page.get_by_role("button", name="Save the settings").click()
            expect(page.get_by_text(SITE).first).to_be_visible()
            page.goto("/")
            expect(page.get_by_role("banner").get_by_text(SITE).first).to_be_visible()
            look(page, "03-home-branded", admin=False)

            # A digest of the Daily Briefing: compose, preview, a test to me.
            page.goto("/admin")
            nav.get_by_role("link", name="Digests").click()
            page.get_by_role("button", name="New digest of Daily Briefing").click()
            page.get_by_label("Subject").fill("Evening briefing")
            look(page, "04-digest-edit")
            page.get_by_role("button", name="Save and preview").click()
            frame = page.frame_locator("iframe.digest-preview")
            expect(frame.get_by_text(ADDRESS).first).to_be_attached()
            look(page, "05-digest-preview")
            page.get_by_role("link", name="Back to the digest").click()
            page.get_by_role("button", name=f"Save and send a test to me ({ADMIN})").click()
            test_copy = wait(
                "the test copy",
                lambda: next((m for m in mails(demo.outbox) if str(m["To"]) == ADMIN), None),
            )
            assert "Evening briefing" in str(test_copy["Subject"])

            # Send now asks first, naming the list, its readers, the subject and the time.
            page.get_by_role("button", name="Send now to 1 confirmed reader").click()
            expect(page.get_by_role("heading", name="Send this digest now?")).to_be_visible()
            sheet = page.locator(".confirm-send")
            expect(sheet).to_contain_text("Daily Briefing")
            expect(sheet).to_contain_text("Evening briefing")
            expect(sheet.locator('[data-figure="readers"]')).to_have_text("1")
            look(page, "06-confirm-send")
            page.get_by_role("button", name="Yes, send it now to 1 reader").click()
            status = page.get_by_role("status").filter(has_text="Sent")
            expect(status).to_be_visible(timeout=120_000)
            look(page, "07-digest-sent")
        finally:
            context.close()

        # The reader's digest carries the brand: the site's name and the publisher's address.
        digest = next(
            m
            for m in mails(demo.outbox)
            if str(m["To"]) == READER and "Evening briefing" in str(m["Subject"])
        )
        body = text_of(digest)
        assert SITE in body and ADDRESS in body
        assert "127.0.0.1" not in body.split(ADDRESS)[-1]

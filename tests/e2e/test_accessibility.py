"""Accessibility in a real browser: axe-core on every page type, the reader's whole journey by
keyboard alone, and every page usable at 200 % zoom and 320 px wide."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select

from newsletter.digests import items, states
from newsletter.extensions import db
from newsletter.imports.jobs import create_job
from newsletter.models import (
    DigestStatus,
    ImportMode,
    Newsletter,
    Subscriber,
    SuppressionReason,
)
from newsletter.suppression import suppress

from e2e.browsing import (
    check_axe,
    host_article,
    host_site,
    mail_link,
    no_horizontal_scroll,
    screenshot,
    sideways,
    snippets,
    tab_to,
)
from factories import PASSWORD, make_admin

EMAIL = "reader@example.com"


def _keyboard_open(page: Page, link: str) -> None:
    """Tab to a link (its name, or a CSS selector) and follow it with Enter."""
    found = page.locator(link) if link.startswith("ul.") else page.get_by_role("link", name=link)
    tab_to(page, found.first)
    page.keyboard.press("Enter")


def test_the_readers_journey_by_keyboard_alone(page: Page, live_app: Flask) -> None:
    """Signup, confirm, preferences and unsubscribe with Tab, Space and Enter; axe on each page."""
    page.goto("/")
    check_axe(page, "home")
    box = page.locator("#box-article")
    email = box.get_by_label("Enter your email to subscribe")
    tab_to(page, email)
    page.keyboard.type(EMAIL)
    page.keyboard.press("Enter")
    done = box.get_by_role("status")
    expect(done).to_contain_text("Successfully subscribed")
    expect(done).to_be_focused()
    check_axe(page, "home-thanks")
    screenshot(page, "a11y-01-keyboard-thanks")

    # The mail client: here the development mailbox.
    mail_link(page, EMAIL, "Please confirm your subscription to Daily Briefing")
    check_axe(page, "mailbox")
    _keyboard_open(page, "Please confirm your subscription to Daily Briefing")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Please confirm")
    check_axe(page, "mailbox-message")
    _keyboard_open(page, "ul.links a[href*='/confirm/']")

    expect(page.get_by_role("heading", name="Confirm your subscription")).to_be_visible()
    check_axe(page, "confirm")
    tab_to(page, page.get_by_role("button", name="Confirm subscription"))
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Subscription confirmed")).to_be_visible()
    check_axe(page, "confirmed")
    _keyboard_open(page, "Manage your newsletters")

    expect(page.get_by_role("heading", name="Your newsletters")).to_be_visible()
    check_axe(page, "preferences")
    extra = page.get_by_role("checkbox", name="Under Occupation")
    tab_to(page, extra)
    page.keyboard.press("Space")
    expect(extra).to_be_checked()
    tab_to(page, page.get_by_role("button", name="Save my choices"))
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("Your choices are saved.")
    check_axe(page, "preferences-saved")
    screenshot(page, "a11y-02-keyboard-preferences")

    mail_link(page, EMAIL, "Welcome to Daily Briefing")
    _keyboard_open(page, "Welcome to Daily Briefing")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Welcome to Daily Briefing")
    _keyboard_open(page, "ul.links a[href*='/unsubscribe/']")
    expect(page.get_by_role("heading", name="Unsubscribe")).to_be_visible()
    check_axe(page, "unsubscribe")
    tab_to(page, page.get_by_role("button", name="Unsubscribe"))
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="You are unsubscribed")).to_be_visible()
    check_axe(page, "unsubscribed")
    screenshot(page, "a11y-03-keyboard-unsubscribed")


def test_the_other_public_pages_pass_axe(page: Page, live_app: Flask) -> None:
    """The pages a reader meets when something is wrong, and the plain form's answers."""
    page.goto("/")
    # The box as a browser without our script posts it.
    page.locator("#box-article").evaluate("f => f.removeAttribute('data-newsletter-box')")
    page.locator("#box-article input[name=email]").fill("not-an-address")
    page.locator("#box-article button").click()
    expect(page.locator(".nl-error")).to_have_text("Please, enter correct email address")
    check_axe(page, "signup-error")
    page.locator("form.nl-box").evaluate("f => f.removeAttribute('data-newsletter-box')")
    page.locator("form.nl-box input[name=email]").fill(EMAIL)
    page.locator("form.nl-box button").click()
    expect(page.get_by_text("Successfully subscribed")).to_be_visible()
    check_axe(page, "thanks")

    page.goto("/confirm/not-a-token")
    check_axe(page, "link-broken")
    mail_link(page, EMAIL, "Please confirm your subscription to Daily Briefing").click()
    address = page.locator("ul.links a[href*='/confirm/']").get_attribute("href")
    assert address
    live_app.config["CONFIRM_MAX_AGE"] = -1
    page.goto(address)
    check_axe(page, "link-expired")
    page.get_by_role("button").first.click()
    check_axe(page, "confirmation-sent-again")
    page.goto("/no-such-page")
    check_axe(page, "not-found")
    page.goto("/api/v1/problems/not-json")
    check_axe(page, "problem-type")
    page.goto("/?lang=uk")
    check_axe(page, "home-uk")


def _sent_edition(app: Flask) -> None:
    """A sent edition of the Daily Briefing, and a list whose archive is for its readers."""
    with app.app_context():
        newsletter = db.session.scalar(select(Newsletter).where(Newsletter.slug == "daily"))
        digest = states.compose(db.session, newsletter, intro="Good morning.")
        states.start(db.session, digest)
        digest.status = DigestStatus.SENT
        private = db.session.scalar(select(Newsletter).where(Newsletter.slug != "daily"))
        private.archive_public = False
        db.session.commit()
        db.session.remove()


def test_the_archive_pages_pass_axe(page: Page, live_app: Flask) -> None:
    """A list's archive, an edition's web version, and the page of an archive for readers."""
    _sent_edition(live_app)
    page.goto("/")
    _keyboard_open(page, "Daily Briefing: the archive")
    expect(page.get_by_role("heading", level=1)).to_have_text("Daily Briefing: the archive")
    check_axe(page, "archive")
    page.locator("ol.archive a").first.click()
    expect(page.get_by_text("This is the web version of an edition")).to_be_visible()
    check_axe(page, "archive-edition")
    screenshot(page, "a11y-08-archive-edition")
    page.goto("/archive/daily?lang=uk")
    check_axe(page, "archive-uk")
    with live_app.app_context():
        private = db.session.scalar(select(Newsletter).where(Newsletter.archive_public.is_(False)))
        slug = private.slug
        db.session.remove()
    response = page.goto(f"/archive/{slug}")
    assert response is not None and response.status == 403
    check_axe(page, "archive-readers-only")


def _admin_rows(app: Flask) -> dict[str, int]:
    """An account, an item, a draft digest, a reader, an import and a suppression."""
    with app.app_context():
        make_admin()
        newsletter = db.session.scalar(select(Newsletter).order_by(Newsletter.id))
        item, _ = items.add_item(
            db.session,
            title="Moldova's Sandu advances to presidential run-off",
            url="https://news.example/news/moldova-sandu-run-off-2",
            newsletters=[newsletter.slug],
            source="admin",
        )
        reader = Subscriber(email=EMAIL, email_key=EMAIL)
        db.session.add(reader)
        db.session.commit()
        digest = states.compose(db.session, newsletter)
        job = create_job(db.session, newsletter.slug, "readers.csv", ImportMode.CONSENTED, "form")
        suppress(db.session, "gone@example.com", SuppressionReason.BOUNCED)
        db.session.commit()
        found = {
            "newsletter": newsletter.id,
            "item": item.id,
            "digest": digest.id,
            "reader": reader.id,
            "job": job.id,
        }
        db.session.remove()
    return found


@pytest.fixture
def admin_page(page: Page, live_app: Flask) -> Iterator[tuple[Page, dict[str, int]]]:
    """A signed-in admin's tab, and the ids of rows every admin page type can show."""
    rows = _admin_rows(live_app)
    page.goto("/admin/login")
    check_axe(page, "admin-login")
    page.fill("input[name=email]", "editor@news.example.org")
    page.fill("input[name=password]", PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("link", name="Dashboard")).to_be_visible()
    yield page, rows


def admin_paths(rows: dict[str, int]) -> list[str]:
    """One address of each admin page type."""
    return [
        "/admin/",
        "/admin/newsletters",
        f"/admin/newsletters/{rows['newsletter']}",
        f"/admin/newsletters/{rows['newsletter']}/edit",
        "/admin/newsletters/new",
        "/admin/embed",
        "/admin/items",
        "/admin/items/new",
        f"/admin/items/{rows['item']}/edit",
        "/admin/digests",
        f"/admin/digests/{rows['digest']}",
        f"/admin/digests/{rows['digest']}/preview",
        "/admin/subscribers",
        f"/admin/subscribers/{rows['reader']}",
        "/admin/suppressions",
        "/admin/imports",
        f"/admin/imports/{rows['job']}",
        "/admin/tokens",
        "/admin/sites",
        "/admin/password",
    ]


def test_every_admin_page_type_passes_axe(admin_page) -> None:  # type: ignore[no-untyped-def]
    page, rows = admin_page
    for path in admin_paths(rows):
        response = page.goto(path)
        assert response is not None and response.status == 200, path
        check_axe(page, "admin" + path.replace("/", "-"))
    # The snippet's live preview is a page of its own: the box as a host page shows it.
    page.goto(f"/admin/newsletters/{rows['newsletter']}")
    preview = page.frame_locator("iframe.embed-preview")
    expect(preview.get_by_role("button", name="Subscribe")).to_be_visible()
    screenshot(page, "a11y-04-admin-snippet")


def test_boxes_on_a_host_page_pass_axe(page: Page, live_app: Flask) -> None:
    codes = snippets(live_app, [(["daily"], "en"), (["editors-picks"], "en"), (["daily"], "uk")])
    live_app.config["ALLOWED_ORIGINS"] = []
    with host_site(host_article(codes)) as url:
        page.goto(url)
        expect(page.get_by_text("I'm not a robot")).to_be_visible()
        check_axe(page, "host-boxes")
        box = page.locator("form[data-newsletter-box]").first
        box.get_by_label("Enter your email to subscribe").fill("nope")
        box.evaluate("f => f.setAttribute('action', f.action)")  # unchanged: the same box
        live_app.config["ALLOWED_ORIGINS"] = [url.rsplit("/", 1)[0]]
        box.get_by_role("button", name="Subscribe").click()
        expect(box.locator(".nl-error")).to_be_visible()
        check_axe(page, "host-boxes-error")


# Reflow: 1280 px at 200 % zoom is a 640 px wide page; 320 px is WCAG's narrowest.
WIDTHS = [(640, 400), (320, 640)]


@pytest.mark.parametrize(("width", "height"), WIDTHS, ids=["zoom-200", "width-320"])
def test_pages_fit_narrow_screens(browser: Browser, live_app: Flask, width: int, height: int):
    rows = _admin_rows(live_app)
    context = browser.new_context(
        base_url=live_app.config["BASE_URL"], viewport={"width": width, "height": height}
    )
    context.set_default_timeout(10_000)
    try:
        page = context.new_page()
        codes = snippets(live_app, [(["daily"], "en"), (["daily", "editors-picks"], "uk")])
        with host_site(host_article(codes)) as url:
            page.goto(url)
            expect(page.get_by_text("Я не робот")).to_be_visible()
            no_horizontal_scroll(page, "host page")
            screenshot(page, f"a11y-05-host-{width}px")
        _sent_edition(live_app)
        edition = page.goto("/archive/daily")
        assert edition is not None and edition.status == 200
        page.locator("ol.archive a").first.click()
        expect(page.get_by_text("This is the web version of an edition")).to_be_visible()
        no_horizontal_scroll(page, "an edition's web version")
        for path in ("/", "/?lang=uk", "/confirm/not-a-token", "/_mailbox/", "/archive/daily"):
            page.goto(path)
            no_horizontal_scroll(page, path)
        page.goto("/")
        screenshot(page, f"a11y-06-home-{width}px")
        page.goto("/admin/login")
        no_horizontal_scroll(page, "/admin/login")
        page.fill("input[name=email]", "editor@news.example.org")
        page.fill("input[name=password]", PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        problems = []
        for path in admin_paths(rows):
            page.goto(path)
            problems.append(sideways(page, path))
        assert not any(problems), "\n".join(p for p in problems if p)
        page.goto("/admin/embed")
        screenshot(page, f"a11y-07-admin-embed-{width}px")
    finally:
        context.close()

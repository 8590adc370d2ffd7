"""Nine signup boxes pasted on another site's article, as the newsroom's page has them: each
answers on its own, in place where the site is allowed, and as a plain form everywhere else."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from flask import Flask
from playwright.sync_api import Browser, Page, expect

from e2e.browsing import (
    confirm_link,
    counts,
    host_article,
    host_site,
    open_mail,
    reader_locale,
    screenshot,
    snippets,
)

# The boxes of the page: (newsletters, language). Editors' Picks asks for the proof of work
# (the demo's setting); the last box is the second one pasted again.
NINE = [
    (["daily"], "en"),
    (["explaining-ukraine"], "en"),
    (["occupied-territories"], "en"),
    (["editors-picks"], "en"),
    (["daily", "explaining-ukraine", "occupied-territories"], "en"),
    (["daily"], "uk"),
    (["explaining-ukraine"], "uk"),
    (["daily", "occupied-territories"], "uk"),
    (["explaining-ukraine"], "en"),
]
BAD = "Please, enter correct email address"
THANKS = "Thank you for signing up for this newsletter. We\u2019ve sent you a confirmation email."


@pytest.fixture
def article(live_app: Flask) -> Iterator[str]:
    """The host site's article with the nine boxes, on a port of its own."""
    # Light proof of work: the real widget solves it, in a fraction of a second.
    live_app.config["ALTCHA_WORK"] = 500
    with host_site(host_article(snippets(live_app, NINE))) as url:
        yield url


def allow(app: Flask, url: str) -> None:
    """List the host site, as an admin does."""
    app.config["ALLOWED_ORIGINS"] = [url.rsplit("/", 1)[0]]


@pytest.fixture
def no_script(browser: Browser, live_app: Flask) -> Iterator[Page]:
    """A tab with JavaScript off."""
    context = browser.new_context(java_script_enabled=False, base_url=live_app.config["BASE_URL"])
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def boxes(page: Page):  # type: ignore[no-untyped-def]
    return page.locator("form[data-newsletter-box]")


def test_nine_boxes_answer_in_place_on_an_allowed_site(page: Page, live_app, article):
    allow(live_app, article)
    page.goto(article)
    expect(boxes(page)).to_have_count(9)
    # The same snippet pasted twice: every id on the page is still one element's.
    ids = page.evaluate("() => [...document.querySelectorAll('[id]')].map(e => e.id)")
    assert len(ids) == len(set(ids))
    screenshot(page, "boxes-01-nine-boxes")

    second = boxes(page).nth(1)
    email = second.get_by_label("Enter your email to subscribe")
    # A screen reader reads the required note with the field (the star alone it skips).
    expect(email).to_have_accessible_description("* indicates required")
    email.fill("not-an-address")
    second.evaluate(
        """box => {
          window.disabledWhileSending = false;
          const button = box.querySelector("button");
          new MutationObserver(() => { if (button.disabled) window.disabledWhileSending = true; })
            .observe(button, {attributes: true});
        }"""
    )
    second.get_by_role("button", name="Subscribe").click()
    error = second.locator(".nl-error")
    expect(error).to_have_text(BAD)
    expect(email).to_have_attribute("aria-invalid", "true")
    error_id = error.get_attribute("id")
    expect(email).to_have_attribute("aria-describedby", re.compile(rf"\b{error_id}\b"))
    expect(email).to_be_focused()
    expect(email).to_have_accessible_description(re.compile(rf"indicates required {BAD}$"))
    assert page.evaluate("window.disabledWhileSending") is True
    expect(second.get_by_role("button", name="Subscribe")).to_be_enabled()
    # The other boxes know nothing of it, and nothing is stored.
    expect(page.locator(".nl-error:visible")).to_have_count(1)
    assert counts(live_app) == (0, 0)
    screenshot(page, "boxes-02-bad-address")

    email.fill("reader@example.com")
    second.get_by_role("button", name="Subscribe").click()
    done = second.get_by_role("status")
    expect(done).to_contain_text("Successfully subscribed")
    expect(done).to_contain_text(THANKS)
    expect(done).to_be_focused()
    expect(email).to_be_hidden()
    expect(page).to_have_url(article)
    # The first box and the same box pasted again still wait for readers.
    expect(boxes(page).nth(0).get_by_role("button", name="Subscribe")).to_be_visible()
    expect(boxes(page).nth(8).get_by_label("Enter your email to subscribe")).to_be_visible()
    assert counts(live_app, "reader@example.com") == (1, 1)
    screenshot(page, "boxes-03-thanks-in-place")

    # The proof of work: the real widget solves the challenge before the box is sent.
    picks = boxes(page).nth(3)
    expect(picks.get_by_text("I'm not a robot")).to_be_visible()
    picks.get_by_label("Enter your email to subscribe").fill("picks@example.com")
    picks.get_by_role("button", name="Subscribe").click()
    expect(picks.get_by_role("status")).to_contain_text("Successfully subscribed")
    assert counts(live_app, "picks@example.com") == (1, 1)
    screenshot(page, "boxes-04-altcha-solved")

    open_mail(page, "reader@example.com", "Please confirm your subscription to Explaining Ukraine")
    confirm_link(page).click()
    expect(page.get_by_role("heading", name="Confirm your subscription")).to_be_visible()
    page.get_by_role("button", name="Confirm subscription").click()
    expect(page.get_by_role("heading", name="Subscription confirmed")).to_be_visible()
    screenshot(page, "boxes-05-confirmed")


def test_the_ukrainian_box_through_to_the_welcome_mail(page: Page, live_app, article):
    allow(live_app, article)
    page.goto(article)
    box = boxes(page).nth(5)
    expect(box.get_by_role("heading")).to_have_text("Щоденний огляд")
    box.get_by_label("Введіть свою електронну адресу").fill("chytach@example.com")
    box.get_by_role("button", name="Підписатися").click()
    expect(box.get_by_role("status")).to_contain_text("Підписку оформлено")
    screenshot(page, "boxes-06-ukrainian-thanks")
    assert reader_locale(live_app, "chytach@example.com") == "uk"

    open_mail(page, "chytach@example.com", "Підтвердьте підписку на розсилку «Щоденний огляд»")
    confirm_link(page).click()
    expect(page.locator("html")).to_have_attribute("lang", "uk")
    page.get_by_role("button", name="Підтвердити підписку").click()
    expect(page.get_by_role("heading", name="Підписку підтверджено")).to_be_visible()
    open_mail(page, "chytach@example.com", "Вітаємо в розсилці «Щоденний огляд»")
    screenshot(page, "boxes-07-ukrainian-welcome")


def test_a_site_not_listed_gets_plain_posts_that_sign_up_once(page: Page, live_app, article):
    page.goto(article)
    first = boxes(page).nth(0)
    first.get_by_label("Enter your email to subscribe").fill("reader@example.com")
    first.get_by_role("button", name="Subscribe").click()
    # The browser would not let the script read our answer: the form posted itself.
    expect(page).to_have_url(f"{live_app.config['BASE_URL']}/subscribe")
    expect(page.get_by_text("Successfully subscribed")).to_be_visible()
    assert counts(live_app, "reader@example.com") == (1, 1)

    # The proof of work is solved there too, and carried by the plain post.
    page.goto(article)
    picks = boxes(page).nth(3)
    picks.get_by_label("Enter your email to subscribe").fill("picks@example.com")
    picks.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_text("Successfully subscribed")).to_be_visible()
    expect(page).to_have_url(f"{live_app.config['BASE_URL']}/subscribe")
    assert counts(live_app, "picks@example.com") == (1, 1)


def test_an_unreachable_service_falls_back_to_the_plain_post(page: Page, live_app, article):
    allow(live_app, article)

    def offline_for_scripts(route):  # type: ignore[no-untyped-def]
        if "application/json" in (route.request.headers.get("content-type") or ""):
            route.abort("internetdisconnected")
        else:
            route.continue_()

    page.route(f"{live_app.config['BASE_URL']}/subscribe", offline_for_scripts)
    page.goto(article)
    box = boxes(page).nth(0)
    box.get_by_label("Enter your email to subscribe").fill("reader@example.com")
    box.get_by_role("button", name="Subscribe").click()
    expect(page).to_have_url(f"{live_app.config['BASE_URL']}/subscribe")
    expect(page.get_by_text("Successfully subscribed")).to_be_visible()
    assert counts(live_app, "reader@example.com") == (1, 1)


def test_too_many_signups_ask_to_try_again_in_a_minute(page: Page, live_app, article):
    allow(live_app, article)
    live_app.config["SUBSCRIBE_RATE_LIMIT"] = "1 per minute"
    page.goto(article)
    first, second = boxes(page).nth(0), boxes(page).nth(2)
    first.get_by_label("Enter your email to subscribe").fill("reader@example.com")
    first.get_by_role("button", name="Subscribe").click()
    expect(first.get_by_role("status")).to_contain_text("Successfully subscribed")
    second.get_by_label("Enter your email to subscribe").fill("other@example.com")
    second.get_by_role("button", name="Subscribe").click()
    alert = second.get_by_role("alert")
    expect(alert).to_have_text(re.compile("Please try again in a minute"))
    expect(second.get_by_role("button", name="Subscribe")).to_be_enabled()
    assert counts(live_app, "other@example.com") == (0, 0)
    screenshot(page, "boxes-08-try-again-in-a-minute")


def test_with_javascript_off_the_boxes_are_plain_forms(no_script: Page, live_app, article):
    allow(live_app, article)
    page = no_script
    page.goto(article)
    box = boxes(page).nth(1)
    box.get_by_label("Enter your email to subscribe").fill("not-an-address")
    box.get_by_role("button", name="Subscribe").click()
    # Our page, with the box again: the message under the field, which has the focus.
    expect(page).to_have_url(f"{live_app.config['BASE_URL']}/subscribe")
    retry = page.locator("form[data-newsletter-box]")
    email = retry.get_by_label("Enter your email to subscribe")
    expect(retry.locator(".nl-error")).to_have_text(BAD)
    expect(email).to_have_attribute("aria-invalid", "true")
    expect(email).to_be_focused()
    assert counts(live_app) == (0, 0)
    screenshot(page, "boxes-09-no-script-bad-address")

    email.fill("reader@example.com")
    retry.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_text(THANKS)).to_be_visible()
    assert counts(live_app, "reader@example.com") == (1, 1)

    # The box asking for the proof of work says why it cannot work without JavaScript.
    page.goto(article)
    expect(boxes(page).nth(3).get_by_text("needs JavaScript")).to_be_visible()

    open_mail(page, "reader@example.com", "Please confirm your subscription to Explaining Ukraine")
    confirm_link(page).click()
    page.get_by_role("button", name="Confirm subscription").click()
    expect(page.get_by_role("heading", name="Subscription confirmed")).to_be_visible()
    screenshot(page, "boxes-10-no-script-confirmed")

"""Leaving a list: RFC 8058 one-click POST, the page with a button, and the preferences page."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from newsletter.models import ConsentEvent

from factories import links, signup, statuses


@pytest.fixture
def welcome(client, mailbox, newsletters):  # type: ignore[no-untyped-def]
    """A confirmed reader of two lists and the welcome mail of the first.

    Confirmed one at a time: a welcome about one list carries that list's headers."""
    welcomes = []
    for slug in ("daily", "culture"):
        signup(client, "reader@example.com", slug)
        (link,) = links(mailbox.deliver()[0], "/confirm/")
        client.post(link)
        welcomes += mailbox.deliver()
    return next(m for m in welcomes if m["Subject"] == "Welcome to Daily Briefing")


def one_click_url(mail) -> str:  # type: ignore[no-untyped-def]
    header = mail["List-Unsubscribe"]
    url = header.split(",")[0].strip().strip("<>")
    return url.removeprefix("https://news.example.org")


def test_one_click_post_unsubscribes_at_once(client, db, welcome):
    response = client.post(
        one_click_url(welcome),
        data="List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200
    assert "You are unsubscribed" in response.get_data(as_text=True)
    assert statuses(db) == {"daily": "unsubscribed", "culture": "confirmed"}
    event = db.session.scalars(
        select(ConsentEvent).where(ConsentEvent.action == "unsubscribed")
    ).one()
    assert event.source == "one-click"


def test_one_click_needs_no_cookie_or_csrf_token(app, db, welcome):
    fresh_client = app.test_client(use_cookies=False)
    response = fresh_client.post(one_click_url(welcome), data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert statuses(db)["daily"] == "unsubscribed"


def test_get_shows_a_button_and_changes_nothing(client, db, welcome):
    response = client.get(one_click_url(welcome))
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "Stop sending <strong>Daily Briefing</strong>" in page
    assert '<button class="nl-button" type="submit">Unsubscribe</button>' in page
    assert "/preferences/" in page
    assert statuses(db)["daily"] == "confirmed"


def test_the_link_in_the_body_works_like_the_header(client, db, welcome):
    (body_link,) = links(welcome, "/unsubscribe/")
    assert client.post(body_link).status_code == 200
    assert statuses(db)["daily"] == "unsubscribed"


def test_unsubscribing_twice_is_harmless(client, db, welcome):
    url = one_click_url(welcome)
    assert client.post(url).status_code == 200
    assert client.post(url).status_code == 200
    events = db.session.scalars(
        select(ConsentEvent).where(ConsentEvent.action == "unsubscribed")
    ).all()
    assert len(events) == 1


def test_unsubscribe_links_never_expire(app, client, db, welcome):
    app.config["CONFIRM_MAX_AGE"] = -1
    assert client.post(one_click_url(welcome)).status_code == 200
    assert statuses(db)["daily"] == "unsubscribed"


def test_tampered_unsubscribe_link_is_a_400_page(client, db, welcome):
    response = client.post(one_click_url(welcome)[:-4] + "AAAA")
    assert response.status_code == 400
    assert statuses(db)["daily"] == "confirmed"


def test_resubscribing_goes_through_double_opt_in(client, db, mailbox, welcome):
    client.post(one_click_url(welcome))
    signup(client, "reader@example.com", "daily")
    assert statuses(db)["daily"] == "pending"
    (mail,) = mailbox.deliver()
    assert mail["Subject"] == "Please confirm your subscription to Daily Briefing"


def test_mailto_is_advertised_only_when_configured(app, client, mailbox, newsletters):
    app.config["UNSUBSCRIBE_MAILTO"] = "unsubscribe@news.example.org"
    signup(client, "reader@example.com", "daily")
    (link,) = links(mailbox.deliver()[0], "/confirm/")
    client.post(link)
    (mail,) = mailbox.deliver()
    targets = [t.strip() for t in mail["List-Unsubscribe"].split(",")]
    assert targets[0].startswith("<https://news.example.org/unsubscribe/")
    assert re.fullmatch(
        r"<mailto:unsubscribe\+u[0-9]+x[0-9]+-[a-z2-7]{16}@news\.example\.org\?subject=unsubscribe>",
        targets[1],
    )

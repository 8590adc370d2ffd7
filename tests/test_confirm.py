"""The confirmation link: GET asks, POST confirms; used, tampered and expired links."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update

from newsletter import subscriptions
from newsletter.models import ConsentEvent, Subscription, SubscriptionStatus

from factories import app_links, links, signup, statuses, text_part


@pytest.fixture
def confirm_link(client, mailbox, newsletters) -> str:
    """A reader signed up to two lists; the path of the link in their mail."""
    signup(client, "reader@example.com", "daily", "explaining-ukraine")
    (mail,) = mailbox.deliver()
    (link,) = links(mail, "/confirm/")
    return link


def test_get_shows_a_button_and_confirms_nothing(client, db, confirm_link):
    response = client.get(confirm_link)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "Confirm subscription" in page
    assert "Daily Briefing" in page and "Explaining Ukraine with Kate Tsurkan" in page
    assert set(statuses(db).values()) == {"pending"}


def test_post_confirms_every_list_of_the_signup(client, db, mailbox, confirm_link):
    response = client.post(confirm_link)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "Subscriptions confirmed" in page  # two lists: the plural
    assert "Daily Briefing" in page and "Explaining Ukraine with Kate Tsurkan" in page
    assert "/preferences/" in page
    assert statuses(db) == {"daily": "confirmed", "explaining-ukraine": "confirmed"}
    confirmed = db.session.scalars(
        select(ConsentEvent).where(ConsentEvent.action == "confirmed")
    ).all()
    assert len(confirmed) == 2 and all(e.ip == "127.0.0.1" for e in confirmed)


def test_confirming_several_lists_sends_one_welcome_naming_them(client, mailbox, confirm_link):
    client.post(confirm_link)
    (welcome,) = mailbox.deliver()
    assert (
        welcome["Subject"] == "Welcome to Daily Briefing and Explaining Ukraine with Kate Tsurkan"
    )
    assert len(links(welcome, "/unsubscribe/")) == 2


def test_confirming_one_list_sends_a_welcome_with_list_headers(client, mailbox, newsletters):
    signup(client, "reader@example.com", "daily")
    (link,) = links(mailbox.deliver()[0], "/confirm/")
    client.post(link)
    (daily,) = mailbox.deliver()
    assert daily["Subject"] == "Welcome to Daily Briefing"
    assert daily["From"] == "Daily Desk <daily@news.example.org>"
    assert daily["List-Id"] == "Daily Briefing <daily.news.example.org>"
    assert daily["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = daily["List-Unsubscribe"]
    assert unsubscribe.startswith("<https://news.example.org/unsubscribe/")
    assert "mailto:" not in unsubscribe
    # Mail clients read the header raw: it must stand on the wire as a plain <URL>.
    raw = daily.as_bytes()
    assert b"\r\nList-Unsubscribe: <https://news.example.org/unsubscribe/" in raw
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw
    assert links(daily, "/preferences/") and links(daily, "/unsubscribe/")


def test_welcome_can_be_turned_off(client, db, mailbox, newsletters):
    newsletters[0].welcome_enabled = False
    db.session.commit()
    signup(client, "reader@example.com", "daily")
    (link,) = links(mailbox.deliver()[0], "/confirm/")
    client.post(link)
    assert mailbox.deliver() == []


def test_second_click_says_already_confirmed(client, db, mailbox, confirm_link):
    client.post(confirm_link)
    mailbox.deliver()
    for again in (client.post(confirm_link), client.get(confirm_link)):
        assert again.status_code == 200
        page = again.get_data(as_text=True)
        assert "Already confirmed" in page
        assert "<button" not in page
    assert mailbox.deliver() == []  # no second welcome


def test_link_is_dead_after_unsubscribe(client, db, confirm_link):
    for subscription in db.session.scalars(select(Subscription)):
        subscription.status = SubscriptionStatus.UNSUBSCRIBED
        subscription.nonce = "changed"
    db.session.commit()
    for response in (client.post(confirm_link), client.get(confirm_link)):
        assert response.status_code == 410
        page = response.get_data(as_text=True)
        assert "This link is no longer valid" in page and "<button" not in page
    assert set(statuses(db).values()) == {"unsubscribed"}


def test_old_link_cannot_confirm_a_later_signup(client, db, mailbox, confirm_link):
    """Unsubscribe, sign up again: only the new mail's link confirms."""
    for subscription in db.session.scalars(select(Subscription)):
        subscription.status = SubscriptionStatus.UNSUBSCRIBED
    db.session.commit()
    signup(client, "reader@example.com", "daily")
    (new_mail,) = mailbox.deliver()
    assert client.post(confirm_link).status_code == 410
    assert statuses(db)["daily"] == "pending"
    (new_link,) = links(new_mail, "/confirm/")
    assert client.post(new_link).status_code == 200
    assert statuses(db)["daily"] == "confirmed"


@pytest.mark.parametrize(
    "mangle",
    [lambda t: t[:-3] + "abc", lambda t: t[:20], lambda t: "x" + t, lambda t: "garbage"],
    ids=["signature", "truncated", "prefixed", "garbage"],
)
def test_tampered_link_gets_a_400_page(client, db, confirm_link, mangle):
    token = confirm_link.removeprefix("/confirm/")
    for method in (client.get, client.post):
        response = method("/confirm/" + mangle(token))
        assert response.status_code == 400
        page = response.get_data(as_text=True)
        assert "This link is broken" in page
        assert "Traceback" not in page
    assert set(statuses(db).values()) == {"pending"}


def test_expired_link_offers_a_fresh_one(app, client, db, mailbox, confirm_link):
    app.config["CONFIRM_MAX_AGE"] = -1
    response = client.get(confirm_link)
    assert response.status_code == 410
    assert "This confirmation link has expired" in response.get_data(as_text=True)
    assert client.post(confirm_link).status_code == 410
    assert set(statuses(db).values()) == {"pending"}

    resent = client.post(confirm_link + "/resend")
    assert resent.status_code == 200
    assert "New confirmation email sent" in resent.get_data(as_text=True)
    (mail,) = mailbox.deliver()
    assert "Daily Briefing" in text_part(mail)
    app.config["CONFIRM_MAX_AGE"] = 3600
    (fresh,) = links(mail, "/confirm/")
    assert client.post(fresh).status_code == 200
    assert set(statuses(db).values()) == {"confirmed"}


def test_resend_respects_the_per_address_limit(app, client, mailbox, confirm_link):
    app.config["CONFIRM_MAX_AGE"] = -1
    app.config["CONFIRMATIONS_PER_ADDRESS"] = 1
    response = client.post(confirm_link + "/resend")
    assert response.status_code == 429
    assert "several confirmation emails" in response.get_data(as_text=True)
    assert mailbox.deliver() == []


def test_rotated_secret_key_keeps_old_links_working(app, client, db, confirm_link):
    app.config["SECRET_KEY_FALLBACKS"] = [app.config["SECRET_KEY"]]
    app.config["SECRET_KEY"] = "a-brand-new-secret"
    assert client.post(confirm_link).status_code == 200
    assert set(statuses(db).values()) == {"confirmed"}


def test_link_signed_with_an_unknown_key_is_refused(app, client, db, confirm_link):
    app.config["SECRET_KEY"] = "a-brand-new-secret"
    assert client.post(confirm_link).status_code == 400


def test_two_clicks_at_once_confirm_once_and_send_one_welcome(app, db, mailbox, confirm_link):
    """The second click read "pending" before the first one wrote "confirmed"."""
    token = confirm_link.rsplit("/", 1)[1]
    link = app_links().read_confirm(token, max_age=3600)
    origin = subscriptions.Origin("confirm")
    stale = subscriptions.confirmation_preview(db.session, link)
    assert len(stale.confirmed) == 2
    with db.engine.begin() as other:  # the first click, in another connection
        other.execute(
            update(Subscription).values(status=SubscriptionStatus.CONFIRMED, nonce="next")
        )

    result = subscriptions.confirm(db.session, link, origin)

    assert result.confirmed == [] and len(result.already) == 2
    assert mailbox.deliver() == []
    events = select(func.count()).where(ConsentEvent.action == "confirmed")
    assert db.session.scalar(events) == 0

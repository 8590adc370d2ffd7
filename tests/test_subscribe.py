"""Signing up through the boxes: validation, storage, the one confirmation mail, no enumeration."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from newsletter.models import (
    ConsentEvent,
    OutboxMessage,
    Subscriber,
    Subscription,
    SubscriptionStatus,
)

from factories import apply_signups, links, signup, text_part

THANKS = "Thank you for signing up for this newsletter. We\u2019ve sent you a confirmation email."
THANKS_SEVERAL = (
    "Thank you for signing up for these newsletters. We\u2019ve sent you one confirmation email "
    "for all of them."
)


def count(db, model) -> int:  # type: ignore[no-untyped-def]
    return db.session.scalar(select(func.count()).select_from(model))


def test_good_address_is_thanked_stored_and_mailed_once(client, db, mailbox, newsletters):
    response = signup(client, "Reader@Example.COM", "daily", "culture")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "Successfully subscribed" in page
    # Two lists: the thanks in the plural.
    assert THANKS_SEVERAL.replace("\u2019", "&#39;") in page or THANKS_SEVERAL in page

    subscriber = db.session.scalars(select(Subscriber)).one()
    assert subscriber.email == "Reader@example.com"
    statuses = {s.newsletter.slug: s.status for s in subscriber.subscriptions}
    assert statuses == {"daily": "pending", "culture": "pending"}

    mails = mailbox.deliver()
    assert len(mails) == 1
    mail = mails[0]
    assert mail["To"] == "Reader@example.com"
    assert "Daily Briefing" in text_part(mail) and "Culture" in text_part(mail)
    assert len(links(mail, "/confirm/")) == 1


@pytest.mark.parametrize(
    "email",
    [
        "",
        "not-an-address",
        "reader@",
        "@example.com",
        "a b@example.com",
        "reader@example.com\r\nBcc: victim@example.com",
        "x" * 250 + "@example.com",
        "j\u00f6s\u00e9@example.com",
        "reader\x00@example.com",
    ],
    ids=[
        "empty",
        "no-at",
        "no-domain",
        "no-local",
        "space",
        "header-injection",
        "too-long",
        "non-ascii-local-part",
        "nul",
    ],
)
def test_bad_address_rerenders_box_with_message_and_stores_nothing(client, db, newsletters, email):
    response = signup(client, email, "daily")
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert "Please, enter correct email address" in page
    assert 'name="email"' in page and "* indicates required" in page
    assert count(db, Subscriber) == 0
    assert count(db, OutboxMessage) == 0


def test_missing_newsletter_is_refused(client, db, newsletters):
    response = signup(client, "reader@example.com")
    assert response.status_code == 422
    assert "Please, choose at least one newsletter." in response.get_data(as_text=True)
    assert count(db, Subscriber) == 0


def test_unknown_newsletter_is_refused(client, db, newsletters):
    response = signup(client, "reader@example.com", "daily", "no-such-list")
    assert response.status_code == 422
    assert "We have no newsletter by that name." in response.get_data(as_text=True)
    assert count(db, Subscriber) == 0 and count(db, Subscription) == 0


def test_archived_newsletter_takes_no_signups(client, db, newsletters):
    newsletters[2].archived = True
    db.session.commit()
    assert signup(client, "reader@example.com", "culture").status_code == 422
    assert count(db, Subscription) == 0


def test_case_variants_are_one_subscriber(client, db, mailbox, newsletters):
    signup(client, "Reader@Example.COM", "daily")
    signup(client, "reader@example.com", "culture")
    assert count(db, Subscriber) == 1
    assert count(db, Subscription) == 2


def test_reply_is_identical_for_new_pending_and_confirmed(client, db, mailbox, newsletters):
    new = signup(client, "reader@example.com", "daily")
    assert len(mailbox.deliver()) == 1
    pending = signup(client, "reader@example.com", "daily")
    assert len(mailbox.deliver()) == 1
    subscription = db.session.scalars(select(Subscription)).one()
    subscription.status = SubscriptionStatus.CONFIRMED
    db.session.commit()
    confirmed = signup(client, "reader@example.com", "daily")
    assert mailbox.deliver() == []
    bodies = {r.get_data() for r in (new, pending, confirmed)}
    assert {r.status_code for r in (new, pending, confirmed)} == {200}
    assert len(bodies) == 1


def test_json_reply_for_scripts(client, db, newsletters):
    response = client.post(
        "/subscribe",
        data={"email": "bad", "newsletter": "daily"},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 422
    assert response.json == {
        "ok": False,
        "message": "Please, enter correct email address",
        "field": "email",
    }
    response = client.post(
        "/subscribe", json={"email": "reader@example.com", "newsletter": ["daily"]}
    )
    assert response.status_code == 200
    assert response.json["ok"] is True and response.json["title"] == "Successfully subscribed"


def test_honeypot_gets_thanks_and_stores_nothing(client, db, mailbox, newsletters):
    response = signup(client, "bot@example.com", "daily", leave_blank="http://spam.example")
    assert response.status_code == 200
    assert "Successfully subscribed" in response.get_data(as_text=True)
    assert count(db, Subscriber) == 0
    assert mailbox.deliver() == []


def test_consent_trail_records_the_signup(client, db, newsletters):
    client.post(
        "/subscribe",
        data={"email": "reader@example.com", "newsletter": "daily", "source": "article-box"},
        headers={"User-Agent": "TestBrowser/1.0"},
    )
    apply_signups()
    events = db.session.scalars(select(ConsentEvent).order_by(ConsentEvent.id)).all()
    assert [e.action for e in events] == ["signup", "confirmation_sent"]
    signup_event = events[0]
    assert signup_event.ip == "127.0.0.1"
    assert signup_event.user_agent == "TestBrowser/1.0"
    assert signup_event.source == "article-box"
    assert "Enter your email to subscribe" in signup_event.text_shown
    assert "Daily Briefing" in signup_event.text_shown


def test_resubscribe_after_unsubscribe_needs_confirmation_again(client, db, mailbox, newsletters):
    signup(client, "reader@example.com", "daily")
    assert len(mailbox.deliver()) == 1
    subscription = db.session.scalars(select(Subscription)).one()
    subscription.status = SubscriptionStatus.UNSUBSCRIBED
    db.session.commit()
    signup(client, "reader@example.com", "daily")
    db.session.refresh(subscription)
    assert subscription.status == "pending"
    assert len(mailbox.deliver()) == 1


def test_internationalised_domain_is_mailed_in_ascii_form(client, db, mailbox, newsletters):
    assert signup(client, "Reader@B\u00fccher.DE", "daily").status_code == 200
    assert db.session.scalars(select(Subscriber.email)).one() == "Reader@b\u00fccher.de"
    (mail,) = mailbox.deliver()
    assert b"\r\nTo: Reader@xn--bcher-kva.de\r\n" in mail.as_bytes()

"""The preferences page: every list with its state; change them or leave all."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from newsletter.models import ConsentEvent, MailKind, Newsletter, OutboxMessage, Subscription

from factories import links, signup, statuses


@pytest.fixture
def prefs_link(client, mailbox, newsletters) -> str:
    signup(client, "reader@example.com", "daily")
    (link,) = links(mailbox.deliver()[0], "/confirm/")
    client.post(link)
    (welcome,) = mailbox.deliver()
    (prefs,) = links(welcome, "/preferences/")
    return prefs


def newsletter_ids(db) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return dict(db.session.execute(select(Newsletter.slug, Newsletter.id)).all())


def test_page_lists_every_newsletter_with_state(client, prefs_link):
    response = client.get(prefs_link)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "reader@example.com" in page
    for name in ("Daily Briefing", "Explaining Ukraine with Kate Tsurkan", "Culture"):
        assert name in page
    assert "subscribed" in page and "not subscribed" in page


def test_choosing_lists_confirms_them_at_once_and_drops_the_rest(
    client, db, mailbox, newsletters, prefs_link
):
    ids = newsletter_ids(db)
    response = client.post(
        prefs_link, data={"newsletter": [ids["culture"], ids["explaining-ukraine"]]}
    )
    assert response.status_code == 200
    assert "Your choices are saved." in response.get_data(as_text=True)
    assert statuses(db) == {
        "daily": "unsubscribed",
        "culture": "confirmed",
        "explaining-ukraine": "confirmed",
    }
    # No confirmation mail: the link proved the address. Each new list says welcome.
    # One welcome naming both lists joined.
    subjects = [m["Subject"] for m in mailbox.deliver()]
    assert subjects == ["Welcome to Explaining Ukraine with Kate Tsurkan and Culture"]


def test_leave_all(client, db, newsletters, prefs_link):
    ids = list(newsletter_ids(db).values())
    response = client.post(prefs_link, data={"newsletter": ids, "action": "leave-all"})
    assert response.status_code == 200
    assert set(statuses(db).values()) == {"unsubscribed"}


def test_ignores_junk_ids(client, db, prefs_link):
    junk = ["abc", "99999", "-1", "\u00b2", "9" * 5000]
    response = client.post(prefs_link, data={"newsletter": junk})
    assert response.status_code == 200
    assert statuses(db) == {"daily": "unsubscribed"}


def test_tampered_preferences_link(client):
    response = client.get("/preferences/not-a-token")
    assert response.status_code == 400
    assert "This link is broken" in response.get_data(as_text=True)


def test_saving_leaves_a_list_waiting_for_confirmation_alone(client, db, mailbox, prefs_link):
    signup(client, "reader@example.com", "culture")
    (mail,) = mailbox.deliver()
    ids = newsletter_ids(db)
    client.post(prefs_link, data={"newsletter": [ids["daily"]]})
    assert statuses(db) == {"daily": "confirmed", "culture": "pending"}
    # Its confirmation link still works.
    (link,) = links(mail, "/confirm/")
    assert client.post(link).status_code == 200
    assert statuses(db)["culture"] == "confirmed"


def test_leave_all_also_cancels_waiting_lists(client, db, mailbox, prefs_link):
    signup(client, "reader@example.com", "culture")
    client.post(prefs_link, data={"action": "leave-all"})
    assert statuses(db) == {"daily": "unsubscribed", "culture": "unsubscribed"}


@pytest.mark.parametrize("state", ["bounced", "complained"])
def test_bounced_and_complained_lists_cannot_be_rejoined(client, db, prefs_link, state):
    subscription = db.session.scalars(select(Subscription)).one()
    subscription.status = state
    db.session.commit()
    page = client.get(prefs_link).get_data(as_text=True)
    assert f'name="newsletter" value="{subscription.newsletter_id}" disabled' in page
    client.post(prefs_link, data={"newsletter": list(newsletter_ids(db).values())})
    assert statuses(db)["daily"] == state


def test_joining_on_the_page_records_what_the_reader_did(client, db, prefs_link):
    from newsletter.models import ConsentEvent

    client.post(prefs_link, data={"newsletter": list(newsletter_ids(db).values())})
    culture = db.session.scalars(
        select(Subscription).join(Subscription.newsletter).where(Newsletter.slug == "culture")
    ).one()
    events = db.session.scalars(
        select(ConsentEvent).where(ConsentEvent.subscription_id == culture.id)
    ).all()
    assert [e.action for e in events] == ["signup", "confirmed"]
    assert all("preferences page" in e.text_shown for e in events)
    assert culture.source == "public.preferences"


def test_ticking_a_list_on_and_off_sends_its_welcome_once_a_day(
    client, db, mailbox, newsletters, prefs_link
):
    ids = newsletter_ids(db)
    # Nine changes: within the link's limit of ten an hour.
    for _ in range(4):
        client.post(prefs_link, data={"newsletter": [ids["daily"], ids["culture"]]})
        client.post(prefs_link, data={"newsletter": [ids["daily"]]})
    client.post(prefs_link, data={"newsletter": [ids["daily"], ids["culture"]]})
    assert statuses(db)["culture"] == "confirmed"
    welcomes = [m["Subject"] for m in mailbox.deliver()]
    assert welcomes == ["Welcome to Culture"]
    queued = select(func.count()).where(OutboxMessage.kind == MailKind.WELCOME)
    assert db.session.scalar(queued) == 2  # Daily Briefing's, at its confirmation, and this one
    # Each change is still in the consent trail: five joins and four departures.
    culture = db.session.scalars(
        select(Subscription).where(Subscription.newsletter_id == ids["culture"])
    ).one()
    actions = [
        e.action
        for e in db.session.scalars(
            select(ConsentEvent)
            .where(ConsentEvent.subscription_id == culture.id)
            .order_by(ConsentEvent.id)
        )
    ]
    assert actions == ["signup", "confirmed", "unsubscribed"] * 4 + ["signup", "confirmed"]


def test_changes_through_one_link_are_limited_wherever_they_come_from(
    client, db, newsletters, prefs_link
):
    ids = newsletter_ids(db)
    answers = [
        client.post(
            prefs_link,
            data={"newsletter": [ids["daily"]]},
            environ_base={"REMOTE_ADDR": f"198.51.100.{n}"},
        ).status_code
        for n in range(11)
    ]
    assert answers == [200] * 10 + [429]
    # Reading the page stays possible.
    assert client.get(prefs_link).status_code == 200


def test_the_page_is_limited_per_ip(client, prefs_link):
    answers = [client.get(prefs_link).status_code for _ in range(31)]
    assert answers == [200] * 30 + [429]
    # Another network is not held up by it.
    other = client.get(prefs_link, environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert other.status_code == 200

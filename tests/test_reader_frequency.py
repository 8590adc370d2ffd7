"""The reader's choice of how often: in a signup box, the API, the embed snippet and the
preferences page, with one combined mail per edition; every change in the consent trail."""

from __future__ import annotations

import html
import re

import pytest
from sqlalchemy import func, select

from newsletter.extensions import db as _db
from newsletter.models import (
    ConsentAction,
    ConsentEvent,
    MailKind,
    OutboxMessage,
    QueuedSignup,
    Subscriber,
    Subscription,
    SubscriptionStatus,
)

from factories import apply_signups, links, make_newsletter, sign_in, signup


@pytest.fixture
def desk(app):  # type: ignore[no-untyped-def]
    """A daily list whose readers may choose alerts, daily or weekly; weekly preselected."""
    return make_newsletter(
        "desk",
        "Kyiv Desk",
        cadence="daily",
        frequencies="alert,daily,weekly",
        default_frequency="weekly",
    )


def _subscription(email: str = "reader@example.com") -> Subscription:
    _db.session.expire_all()
    return _db.session.scalars(
        select(Subscription).join(Subscriber).where(Subscriber.email == email)
    ).one()


def _events(action: ConsentAction) -> list[ConsentEvent]:
    _db.session.expire_all()
    return list(
        _db.session.scalars(
            select(ConsentEvent).where(ConsentEvent.action == action).order_by(ConsentEvent.id)
        )
    )


def _nothing_stored() -> bool:
    _db.session.expire_all()
    queued = _db.session.scalar(select(func.count(QueuedSignup.id)))
    return queued == 0 and _db.session.scalar(select(func.count(Subscription.id))) == 0


def test_the_box_offers_the_choice_with_the_default_preselected(client, desk):
    page = client.get("/").get_data(as_text=True)
    box = page[page.index('id="box-article"') :]
    box = box[: box.index("</form>")]
    assert '<select class="nl-frequency" id="box-article-frequency" name="frequency">' in box
    assert '<option value="weekly" selected>Weekly</option>' in box
    assert '<option value="alert">As it happens</option>' in box
    assert '<option value="daily">Daily</option>' in box


def test_a_box_of_a_list_offering_no_choice_has_no_select(client, newsletters):
    assert 'name="frequency"' not in client.get("/").get_data(as_text=True)


def test_signing_up_with_a_frequency_stores_it_in_the_consent_trail(client, db, mailbox, desk):
    response = signup(client, "reader@example.com", "desk", frequency="alert")
    assert response.status_code == 200
    subscription = _subscription()
    assert subscription.frequency == "alert"
    assert subscription.status == SubscriptionStatus.PENDING
    (event,) = _events(ConsentAction.SIGNUP)
    assert event.text_shown.endswith("[how often: alert]")
    # Confirming keeps the choice.
    (link,) = links(mailbox.deliver()[0], "/confirm/")
    client.post(link)
    assert _subscription().frequency == "alert"


def test_without_a_choice_the_lists_default_applies(client, db, desk, newsletters):
    signup(client, "reader@example.com", "desk", "culture")
    db.session.expire_all()
    chosen = {s.newsletter.slug: s.frequency for s in db.session.scalars(select(Subscription))}
    assert chosen == {"desk": "weekly", "culture": None}


@pytest.mark.parametrize(
    ("frequency", "message"),
    [
        ("hourly", "Choose how often: as it happens (alert), daily or weekly."),
        ("monthly", "Choose how often: as it happens (alert), daily or weekly."),
    ],
)
def test_an_unknown_frequency_is_refused_and_nothing_stored(client, desk, frequency, message):
    response = signup(client, "reader@example.com", "desk", frequency=frequency)
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    assert _nothing_stored()


def test_a_box_shown_again_keeps_the_readers_choice(client, desk):
    response = signup(client, "not-an-address", "desk", frequency="daily")
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert '<option value="daily" selected>Daily</option>' in page
    assert '<option value="weekly">Weekly</option>' in page
    assert _nothing_stored()


def test_a_frequency_the_list_does_not_offer_is_refused(client, desk, newsletters):
    weekly_only = make_newsletter("weekly-only", "Weekly Only", frequencies="daily,weekly")
    response = signup(client, "reader@example.com", weekly_only.slug, frequency="alert")
    assert response.status_code == 422
    page = html.unescape(response.get_data(as_text=True))
    assert "Weekly Only is not sent as it happens: choose daily, weekly." in page
    # Two lists in one box: the choice must be one both offer.
    response = signup(client, "reader@example.com", "desk", "culture", frequency="daily")
    assert response.status_code == 422
    assert "Culture offers no choice of how often." in response.get_data(as_text=True)
    assert _nothing_stored()


def test_a_subscribed_reader_choosing_again_changes_their_frequency(client, db, mailbox, desk):
    signup(client, "reader@example.com", "desk", frequency="daily")
    (link,) = links(mailbox.deliver()[0], "/confirm/")
    client.post(link)
    mailbox.deliver()
    signup(client, "reader@example.com", "desk", frequency="weekly")
    subscription = _subscription()
    assert (subscription.status, subscription.frequency) == (SubscriptionStatus.CONFIRMED, "weekly")
    (event,) = _events(ConsentAction.FREQUENCY_CHANGED)
    assert event.text_shown.endswith("[how often: weekly]")
    assert mailbox.deliver() == []  # no new confirmation for a confirmed reader
    # The same choice again changes nothing, and a box without a choice keeps theirs.
    signup(client, "reader@example.com", "desk", frequency="weekly")
    signup(client, "reader@example.com", "desk")
    assert _subscription().frequency == "weekly"
    assert len(_events(ConsentAction.FREQUENCY_CHANGED)) == 1


def test_a_choice_the_list_stopped_offering_while_queued_gets_the_default(client, db, desk):
    signup(client, "reader@example.com", "desk", frequency="alert", apply=False)
    desk.frequencies = "daily,weekly"
    db.session.commit()
    apply_signups()
    assert _subscription().frequency == "weekly"


def test_the_api_takes_a_frequency(client, db, desk):
    listed = client.get("/api/v1/newsletters").get_json()["newsletters"]
    assert listed[0]["frequencies"] == ["alert", "daily", "weekly"]
    assert listed[0]["default_frequency"] == "weekly"
    body = {"email": "reader@example.com", "newsletters": ["desk"], "frequency": "daily"}
    assert client.post("/api/v1/subscriptions", json=body).status_code == 202
    apply_signups()
    assert _subscription().frequency == "daily"


@pytest.mark.parametrize("frequency", ["hourly", 7, ["daily"]])
def test_the_api_refuses_an_unknown_frequency(client, db, desk, frequency):
    body = {"email": "reader@example.com", "newsletters": ["desk"], "frequency": frequency}
    response = client.post("/api/v1/subscriptions", json=body)
    assert response.status_code == 422
    (error,) = response.get_json()["errors"]
    assert error["field"] == "frequency"
    assert "Choose how often" in error["message"]
    assert _nothing_stored()


def test_the_api_refuses_a_frequency_the_list_does_not_offer(client, db, newsletters):
    body = {"email": "reader@example.com", "newsletters": ["daily"], "frequency": "weekly"}
    response = client.post("/api/v1/subscriptions", json=body)
    assert response.status_code == 422
    (error,) = response.get_json()["errors"]
    assert error == {
        "field": "frequency",
        "in": "body",
        "message": "Daily Briefing offers no choice of how often.",
    }
    assert _nothing_stored()


def test_the_embed_snippet_can_let_readers_choose(client, db, admin, desk):
    sign_in(client)
    plain = client.get(f"/admin/newsletters/{desk.id}").get_data(as_text=True)
    assert "Let readers choose how often" in plain
    assert "name=&#34;frequency&#34;" not in plain
    page = client.get(f"/admin/newsletters/{desk.id}?frequency=1").get_data(as_text=True)
    code = html.unescape(re.search(r'<code id="snippet-code">(.*?)</code>', page, re.S).group(1))
    assert re.search(r'<select class="nl-frequency" id="nl-desk-[0-9a-f]{4}-frequency"', code)
    assert '<option value="weekly" selected>Weekly</option>' in code
    several = client.get("/admin/embed?newsletter=desk&frequency=1").get_data(as_text=True)
    assert "name=&#34;frequency&#34;" in several
    # What the snippet's box posts is a signup with that choice.
    response = signup(client, "reader@example.com", "desk", frequency="daily", source="embed-desk")
    assert response.status_code == 200
    assert _subscription().frequency == "daily"


# The preferences page.


@pytest.fixture
def prefs_link(client, mailbox, desk, newsletters) -> str:  # type: ignore[no-untyped-def]
    signup(client, "reader@example.com", "desk")
    signup(client, "reader@example.com", "culture")
    messages = mailbox.deliver()
    for message in messages:
        for link in links(message, "/confirm/"):
            client.post(link)
    welcome = mailbox.deliver()[0]
    (prefs,) = links(welcome, "/preferences/")
    return prefs


def test_the_preferences_page_offers_how_often_and_one_combined_mail(client, desk, prefs_link):
    page = client.get(prefs_link).get_data(as_text=True)
    assert f'<select name="frequency-{desk.id}">' in page
    assert '<option value="weekly" selected>Weekly</option>' in page
    assert page.count('<select name="frequency-') == 1  # Culture offers no choice
    assert "One combined mail per edition for all my newsletters" in page
    assert 'name="combined" value="1">' in page  # not ticked


def _save(client, prefs_link, db, **extra):  # type: ignore[no-untyped-def]
    ids = [s.newsletter_id for s in db.session.scalars(select(Subscription))]
    return client.post(prefs_link, data={"newsletter": ids, "action": "save", **extra})


def test_changing_how_often_is_a_consent_event(client, db, desk, prefs_link):
    response = _save(client, prefs_link, db, **{f"frequency-{desk.id}": "alert"})
    assert response.status_code == 200
    assert "How often you hear from Kyiv Desk is changed." in response.get_data(as_text=True)
    desk_subscription = db.session.scalars(
        select(Subscription).where(Subscription.newsletter_id == desk.id)
    ).one()
    db.session.refresh(desk_subscription)
    assert desk_subscription.frequency == "alert"
    (event,) = _events(ConsentAction.FREQUENCY_CHANGED)
    assert event.subscription_id == desk_subscription.id
    assert event.text_shown == (
        "Kyiv Desk: chose on the preferences page how often: As it happens [Save my choices]"
    )
    # Saving the page again as shown changes nothing and records nothing.
    _save(client, prefs_link, db, **{f"frequency-{desk.id}": "alert"})
    assert len(_events(ConsentAction.FREQUENCY_CHANGED)) == 1


def test_a_frequency_the_list_does_not_offer_changes_nothing(client, db, desk, prefs_link):
    desk_subscription = db.session.scalars(
        select(Subscription).where(Subscription.newsletter_id == desk.id)
    ).one()
    response = _save(client, prefs_link, db, **{f"frequency-{desk.id}": "monthly"})
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert "Kyiv Desk cannot be sent that often" in page and "Nothing was changed." in page
    db.session.refresh(desk_subscription)
    assert desk_subscription.frequency == "weekly"
    assert _events(ConsentAction.FREQUENCY_CHANGED) == []


def test_one_combined_mail_is_chosen_and_unchosen_with_consent_events(client, db, prefs_link):
    response = _save(client, prefs_link, db, combined="1")
    assert "You will get one combined mail per edition for all your newsletters." in (
        response.get_data(as_text=True)
    )
    db.session.expire_all()
    reader = db.session.scalars(select(Subscriber)).one()
    assert reader.combined
    events = _events(ConsentAction.COMBINED_CHANGED)
    assert len(events) == 2  # one on each of the reader's lists
    assert {e.text_shown for e in events} == {
        "One combined mail per edition for all my newsletters: "
        "ticked on the preferences page [Save my choices]"
    }
    assert 'name="combined" value="1" checked>' in client.get(prefs_link).get_data(as_text=True)
    response = _save(client, prefs_link, db)
    assert "You will get each newsletter in a mail of its own." in response.get_data(as_text=True)
    db.session.expire_all()
    assert not db.session.scalars(select(Subscriber)).one().combined
    assert len(_events(ConsentAction.COMBINED_CHANGED)) == 4
    # No welcome mail again for lists the reader kept.
    welcomes = select(func.count(OutboxMessage.id)).where(OutboxMessage.kind == MailKind.WELCOME)
    assert db.session.scalar(welcomes) == 2

"""Editions by frequency: the editor's settings, their schedules, and who each edition reaches."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from newsletter import frequencies
from newsletter.digests import cadence, states
from newsletter.extensions import db as _db
from newsletter.models import (
    AutoDigest,
    Delivery,
    Digest,
    DigestStatus,
    Edition,
    Item,
    Newsletter,
    utcnow,
)

from factories import add_item, add_reader, csrf_token, make_newsletter, sign_in

BASE_FORM = {
    "name": "Kyiv Desk",
    "slug": "kyiv",
    "cadence": "daily",
    "prompt_text": "Your email",
    "button_text": "Subscribe",
    "thanks_text": "Thanks!",
    "send_time": "07:00",
    "timezone": "Europe/Kyiv",
    "auto_digest": "send",
}


def _reader(news, email, frequency=None):  # type: ignore[no-untyped-def]
    subscriber = add_reader(_db, news, email)
    subscriber.subscriptions[0].frequency = frequency
    _db.session.commit()
    return subscriber.subscriptions[0].id


def _recipients(db, digest):  # type: ignore[no-untyped-def]
    rows = select(Delivery.subscription_id).where(Delivery.digest_id == digest.id)
    return set(db.session.scalars(rows))


def test_the_editor_offers_frequencies_with_a_default_and_schedules_each_edition(client, db, admin):
    sign_in(client)
    form = {
        **BASE_FORM,
        "csrf_token": csrf_token(client, "/admin/newsletters/new"),
        "frequencies": ["alert", "daily", "weekly"],
        "default_frequency": "weekly",
        "weekly_max_items": "5",
        "weekly_send_time": "09:30",
        "weekly_timezone": "Europe/Kyiv",
        "weekly_send_weekday": "4",
        "weekly_auto_digest": "draft",
    }
    assert client.post("/admin/newsletters/new", data=form).status_code == 302
    news = db.session.scalars(select(Newsletter)).one()
    assert news.frequencies == "alert,daily,weekly"
    assert news.default_frequency == "weekly"
    assert news.weekly_max_items == 5
    weekly = next(e for e in news.editions if e.frequency == "weekly")
    assert (weekly.send_time, weekly.send_weekday, weekly.auto_digest) == ("09:30", 4, "draft")
    # Its next run is the next Friday at 09:30 in Kyiv.
    local = weekly.next_digest_at.astimezone(cadence.zone("Europe/Kyiv"))
    assert (local.weekday(), local.strftime("%H:%M")) == (4, "09:30")
    # The daily edition is the cadence's: it keeps the list's own schedule, no second run.
    daily = next(e for e in news.editions if e.frequency == "daily")
    assert daily.next_digest_at is None
    assert news.next_digest_at is not None

    page = client.get(f"/admin/newsletters/{news.id}").get_data(as_text=True)
    assert "As it happens, Daily, Weekly" in page and "Weekly preselected" in page
    assert "Weekly edition" in page and "Fridays at 09:30 (Europe/Kyiv)" in page
    edit = client.get(f"/admin/newsletters/{news.id}/edit").get_data(as_text=True)
    for n, frequency in enumerate(("alert", "daily", "weekly")):
        checkbox = f'id="frequencies-{n}" name="frequencies" type="checkbox" value="{frequency}"'
        assert f'<input checked class="checks" {checkbox}>' in edit
    assert '<option selected value="weekly">Weekly' in edit  # the default
    assert 'name="weekly_send_time" required type="text" value="09:30"' in edit


def test_a_default_the_list_does_not_offer_is_refused_and_nothing_stored(client, db, admin):
    sign_in(client)
    form = {
        **BASE_FORM,
        "csrf_token": csrf_token(client, "/admin/newsletters/new"),
        "frequencies": ["daily"],
        "default_frequency": "weekly",
    }
    response = client.post("/admin/newsletters/new", data=form)
    assert response.status_code == 422
    assert "The preselected choice must be one of those the list offers." in response.get_data(
        as_text=True
    )
    form["default_frequency"] = "hourly"
    assert client.post("/admin/newsletters/new", data=form).status_code == 422
    form.update(default_frequency="", frequencies=["hourly"])
    assert client.post("/admin/newsletters/new", data=form).status_code == 422
    assert db.session.scalars(select(Newsletter)).all() == []


def test_daily_and_weekly_readers_get_only_their_edition(db):
    news = make_newsletter(
        "desk", cadence="daily", frequencies="daily,weekly", auto_digest=AutoDigest.SEND
    )
    news.editions.append(Edition(frequency="weekly", auto_digest=AutoDigest.SEND))
    legacy = _reader(news, "legacy@example.com")
    daily = _reader(news, "daily@example.com", "daily")
    weekly = _reader(news, "weekly@example.com", "weekly")
    add_item(db, news, "Budget passed")
    due = utcnow() - timedelta(minutes=1)
    news.next_digest_at = due
    news.editions[0].next_digest_at = due
    db.session.commit()

    made = cadence.run_due(db.session)
    by_edition = {d.frequency: d for d in made}
    assert set(by_edition) == {"daily", "weekly"}
    assert all(d.automatic and d.status == DigestStatus.SENDING for d in made)
    assert _recipients(db, by_edition["daily"]) == {legacy, daily}
    assert _recipients(db, by_edition["weekly"]) == {weekly}
    # Each run moved on; a second worker finds nothing due.
    assert cadence.run_due(db.session) == []
    db.session.refresh(news.editions[0])
    assert news.editions[0].next_digest_at > utcnow()


def test_the_weekly_edition_takes_the_weeks_picks_first_capped(db):
    news = make_newsletter("desk", cadence="daily", frequencies="daily,weekly", weekly_max_items=3)
    add_item(db, news, "Too old", hours_ago=8 * 24, pick=True)
    for n in range(4):
        add_item(db, news, f"Story {n}", hours_ago=n + 1)
    add_item(db, news, "Monday pick", hours_ago=5 * 24, pick=True)
    add_item(db, news, "Tuesday pick", hours_ago=4 * 24, pick=True)

    digest = states.compose(db.session, news, frequency="weekly")
    assert [i.title for i in digest.items] == ["Tuesday pick", "Monday pick", "Story 0"]
    assert digest.frequency == "weekly"
    # The daily edition is unaffected by picks and by the weekly cap.
    daily = states.compose(db.session, news, frequency="daily")
    assert [i.title for i in daily.items][:2] == ["Story 0", "Story 1"]
    assert len(daily.items) == 7


def test_an_edition_takes_what_is_new_since_its_own_last_digest(db):
    news = make_newsletter("desk", cadence="daily", frequencies="daily,weekly")
    _reader(news, "weekly@example.com", "weekly")
    add_item(db, news, "Monday")
    weekly = states.compose(db.session, news, frequency="weekly")
    states.start(db.session, weekly)
    # The weekly edition went out; the daily one has not, so its items are still new to it.
    assert [i.title for i in states.new_items(db.session, news, frequency="daily")] == ["Monday"]
    assert states.new_items(db.session, news, frequency="weekly") == []


def test_an_edition_no_longer_offered_does_not_run(db):
    news = make_newsletter("desk", cadence="daily", frequencies="weekly")
    news.editions.append(Edition(frequency="weekly", auto_digest=AutoDigest.DRAFT))
    db.session.commit()
    cadence.plan(news)
    assert news.editions[0].next_digest_at is not None
    news.frequencies = ""
    news.editions[0].next_digest_at = utcnow() - timedelta(minutes=1)
    db.session.commit()
    add_item(db, news, "Story")
    assert cadence.run_due(db.session) == []
    db.session.refresh(news.editions[0])
    assert news.editions[0].next_digest_at is None


def test_the_compose_form_offers_the_editions_and_the_digest_names_its_readers(client, db, admin):
    news = make_newsletter("desk", name="Desk", cadence="daily", frequencies="alert,weekly")
    plain = make_newsletter("plain", name="Plain", cadence="weekly")
    _reader(news, "legacy@example.com")
    _reader(news, "weekly@example.com", "weekly")
    _reader(news, "other@example.com", "weekly")
    add_item(db, news, "Story")
    add_item(db, plain, "Other story")
    sign_in(client)
    page = client.get("/admin/digests").get_data(as_text=True)
    assert '<option value="daily" selected>Daily edition</option>' in page
    assert '<option value="weekly">Weekly edition</option>' in page
    assert '<option value="">Every reader</option>' in page
    # A list offering no choice has no select: its digests go to every reader.
    assert page.count('name="frequency"') == 1

    token = csrf_token(client, "/admin/digests")
    made = client.post(
        "/admin/digests/new",
        data={"csrf_token": token, "newsletter": news.id, "frequency": "weekly"},
    )
    assert made.status_code == 302
    digest = db.session.scalars(select(Digest)).one()
    assert digest.frequency == "weekly"
    page = client.get(made.headers["Location"]).get_data(as_text=True)
    assert "Weekly edition: 2 readers as of now" in page

    refused = client.post(
        "/admin/digests/new",
        data={"csrf_token": token, "newsletter": news.id, "frequency": "monthly"},
    )
    assert refused.status_code == 302
    assert "Desk has no such edition." in client.get(refused.headers["Location"]).get_data(
        as_text=True
    )
    client.post("/admin/digests/new", data={"csrf_token": token, "newsletter": plain.id})
    assert (
        db.session.scalars(select(Digest).where(Digest.newsletter_id == plain.id)).one().frequency
        is None
    )


def test_an_item_is_marked_a_pick_in_the_admin_and_the_api(client, db, admin, app):
    from newsletter import api_tokens

    make_newsletter("desk", name="Desk")
    sign_in(client)
    form = {
        "csrf_token": csrf_token(client, "/admin/items/new"),
        "title": "The week's story",
        "url": "https://news.example.org/week",
        "newsletters": ["desk"],
        "zone": "UTC",
        "pick": "y",
    }
    assert client.post("/admin/items/new", data=form).status_code == 302
    item = db.session.scalars(select(Item)).one()
    assert item.pick
    assert "pick" in client.get("/admin/items").get_data(as_text=True)
    form.pop("pick")
    form["csrf_token"] = csrf_token(client, f"/admin/items/{item.id}/edit")
    assert client.post(f"/admin/items/{item.id}/edit", data=form).status_code == 302
    db.session.refresh(item)
    assert not item.pick

    _, secret = api_tokens.create_token(db.session, "CMS", None)
    auth = {"Authorization": f"Bearer {secret}"}
    body = {"title": "Picked", "url": "https://news.example.org/p", "newsletters": ["desk"]}
    created = client.post("/api/v1/items", json={**body, "pick": True}, headers=auth)
    assert created.status_code == 201 and created.get_json()["item"]["pick"] is True
    again = client.post("/api/v1/items", json={**body, "pick": False}, headers=auth)
    assert again.status_code == 200 and again.get_json()["item"]["pick"] is False
    wrong = client.post("/api/v1/items", json={**body, "pick": "yes"}, headers=auth)
    assert wrong.status_code == 422
    assert "Give true or false." in wrong.get_data(as_text=True)


def test_an_automatic_digest_of_the_cadence_is_of_its_edition(db, mailbox):
    news = make_newsletter("desk", cadence="weekly", auto_digest=AutoDigest.SEND)
    reader = _reader(news, "r@example.com")
    add_item(db, news, "Story")
    news.next_digest_at = utcnow() - timedelta(minutes=1)
    db.session.commit()
    [digest] = cadence.run_due(db.session)
    assert digest.frequency == "weekly"
    assert _recipients(db, digest) == {reader}
    assert frequencies.edition_name(digest.frequency) == "Weekly edition"


def test_a_weekly_list_offering_no_choice_keeps_its_digests_as_they_were(db):
    news = make_newsletter("weekly", cadence="weekly", weekly_max_items=3)
    for n in range(5):
        add_item(db, news, f"Story {n}", hours_ago=n + 1, pick=n == 4)
    digest = states.compose(db.session, news, frequency="weekly")
    assert [i.title for i in digest.items] == [f"Story {n}" for n in range(5)]

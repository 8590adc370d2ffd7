"""Breaking alerts: marked items go at once to the readers of alerts, once, within a cap."""

from __future__ import annotations

import html
import re
import threading
from datetime import timedelta
from email.utils import format_datetime

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from newsletter import api_tokens, config
from newsletter.digests import alerts, feeds, ledger, states
from newsletter.mail.transport import MemoryTransport
from newsletter.models import (
    Delivery,
    Digest,
    DigestStatus,
    Item,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    utcnow,
)
from newsletter.worker import Settings, build

from factories import (
    add_item,
    add_reader,
    csrf_token,
    make_newsletter,
    send_all,
    sign_in,
    text_part,
)

EDITOR = "writer@news.example.org"


def offering(slug, name=None, **fields):  # type: ignore[no-untyped-def]
    """A daily list whose readers may choose alerts."""
    return make_newsletter(slug, name, cadence="daily", frequencies="alert,daily,weekly", **fields)


def follow(db, newsletter, email, frequency="alert"):  # type: ignore[no-untyped-def]
    """`email` follows the list at `frequency` (a reader added when new); commit."""
    subscriber = db.session.scalar(select(Subscriber).where(Subscriber.email == email))
    if subscriber is None:
        subscriber = add_reader(db, newsletter, email)
    subscription = db.session.scalar(
        select(Subscription).where(
            Subscription.subscriber_id == subscriber.id,
            Subscription.newsletter_id == newsletter.id,
        )
    )
    if subscription is None:
        subscription = Subscription(
            subscriber=subscriber, newsletter=newsletter, status=SubscriptionStatus.CONFIRMED
        )
        db.session.add(subscription)
    subscription.frequency = frequency
    db.session.commit()
    return subscriber


def breaking(db, title, *newsletters, hours_ago=0):  # type: ignore[no-untyped-def]
    """An alert item on these lists; commit."""
    item = add_item(db, newsletters[0], title, hours_ago=hours_ago, alert=True)
    item.newsletters = list(newsletters)
    db.session.commit()
    return item


def look(db):  # type: ignore[no-untyped-def]
    """One look of a worker's alert runner, in a session of its own; alerts started."""
    with Session(db.engine) as session:
        return alerts.send_due(session)


def mails(db):  # type: ignore[no-untyped-def]
    """Send every started digest as a worker does; (recipient, subject) of each mail."""
    transport = MemoryTransport()
    send_all(db, transport)
    return sorted((m["To"], str(m["Subject"])) for m in transport.messages), transport.messages


def alert_digests(db):  # type: ignore[no-untyped-def]
    db.session.expire_all()
    query = select(Digest).where(Digest.frequency == "alert").order_by(Digest.id)
    return db.session.scalars(query).all()


def test_an_alert_item_goes_at_once_to_the_readers_of_alerts_only(db):
    desk = offering("desk", "News Desk")
    follow(db, desk, "alerts@example.com", "alert")
    follow(db, desk, "daily@example.com", "daily")
    follow(db, desk, "legacy@example.com", None)
    item = breaking(db, "Missiles strike Kyiv overnight", desk)
    quiet = add_item(db, desk, "Parliament session postponed")

    assert look(db) == 1
    (digest,) = alert_digests(db)
    assert digest.subject == "Missiles strike Kyiv overnight"
    assert [i.id for i in digest.items] == [item.id]
    assert digest.status == DigestStatus.SENDING and digest.recipients == 1
    sent, messages = mails(db)
    assert sent == [("alerts@example.com", "Missiles strike Kyiv overnight")]
    body = text_part(messages[0])
    assert "Missiles strike Kyiv overnight" in body and quiet.title not in body
    # The mail is a list mail like any digest: one click unsubscribes.
    assert messages[0]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    db.session.expire_all()
    assert db.session.get(Item, item.id).alerted_at is not None
    # Taken once: the next look finds nothing.
    assert look(db) == 0
    assert len(alert_digests(db)) == 1


def test_only_lists_that_offer_alerts_send_them(db):
    alerting = offering("alerting")
    plain = make_newsletter("plain", cadence="daily")
    closed = offering("closed", archived=True)
    follow(db, alerting, "one@example.com")
    follow(db, plain, "two@example.com")
    follow(db, closed, "three@example.com")
    breaking(db, "Dam breached", alerting, plain, closed)

    assert look(db) == 1
    assert [d.newsletter.slug for d in alert_digests(db)] == ["alerting"]
    sent, _messages = mails(db)
    assert sent == [("one@example.com", "Dam breached")]


def test_a_reader_of_several_lists_gets_one_alert(db):
    first, second, third = offering("first"), offering("second"), offering("third")
    follow(db, first, "both@example.com")
    follow(db, second, "both@example.com")
    follow(db, third, "both@example.com", "daily")  # no alerts from this one
    follow(db, second, "second@example.com")
    follow(db, third, "third@example.com")
    breaking(db, "Ceasefire announced", first, second, third)

    assert look(db) == 3
    sent, _messages = mails(db)
    assert sent == [
        ("both@example.com", "Ceasefire announced"),
        ("second@example.com", "Ceasefire announced"),
        ("third@example.com", "Ceasefire announced"),
    ]
    rows = db.session.scalars(select(Delivery)).all()
    assert len(rows) == 3


def test_the_cap_holds_across_lists_and_the_held_item_comes_in_the_next_edition(app, db):
    app.config["ALERTS_PER_DAY"] = 2
    first, second = offering("first", "First Desk"), offering("second", "Second Desk")
    follow(db, first, "busy@example.com")
    follow(db, second, "busy@example.com")
    follow(db, second, "calm@example.com")
    breaking(db, "Alert one", first, hours_ago=3)
    breaking(db, "Alert two", second, hours_ago=2)
    held = breaking(db, "Alert three", first, second, hours_ago=1)

    assert look(db) == 4
    sent, _messages = mails(db)
    # busy@ had two alerts (one per list): the third is not mailed; calm@ had none yet.
    assert sent == [
        ("busy@example.com", "Alert one"),
        ("busy@example.com", "Alert two"),
        ("calm@example.com", "Alert three"),
        ("calm@example.com", "Alert two"),
    ]
    # The next alert waits too, while the first two are within 24 hours.
    breaking(db, "Alert four", second)
    look(db)
    assert ("busy@example.com", "Alert four") not in mails(db)[0]

    # The next edition of the first list carries the held item to its alert reader.
    edition = states.compose(db.session, first)
    assert held.id in [i.id for i in edition.items]
    edition.frequency = "daily"
    db.session.commit()
    states.start(db.session, edition)
    sent, messages = mails(db)
    assert [to for to, _subject in sent] == ["busy@example.com"]
    assert "Alert three" in text_part(messages[0])


def test_the_cap_is_a_rolling_day(app, db):
    app.config["ALERTS_PER_DAY"] = 1
    desk = offering("desk")
    follow(db, desk, "reader@example.com")
    breaking(db, "Yesterday's alert", desk, hours_ago=30)
    look(db)
    mails(db)
    breaking(db, "Today's alert", desk)
    look(db)
    assert mails(db)[0] == []
    # The first alert started more than 24 hours ago: it no longer counts.
    breaking(db, "Later alert", desk)
    db.session.execute(
        update(Digest)
        .where(Digest.subject == "Yesterday's alert")
        .values(started_at=utcnow() - timedelta(hours=25))
    )
    db.session.commit()
    look(db)
    assert mails(db)[0] == [("reader@example.com", "Later alert")]


def test_a_cancelled_alert_does_not_count_against_the_cap(app, db):
    app.config["ALERTS_PER_DAY"] = 1
    desk = offering("desk")
    follow(db, desk, "reader@example.com")
    breaking(db, "Withdrawn alert", desk)
    look(db)
    (withdrawn,) = alert_digests(db)
    states.cancel(db.session, withdrawn)
    breaking(db, "Real alert", desk)
    look(db)
    assert mails(db)[0] == [("reader@example.com", "Real alert")]


def test_the_cap_is_configured_from_the_environment():
    assert config.from_environ({"NEWSLETTER_ALERTS_PER_DAY": "5"}) == {"ALERTS_PER_DAY": 5}
    with pytest.raises(config.ConfigError, match="whole number"):
        config.from_environ({"NEWSLETTER_ALERTS_PER_DAY": "many"})


def test_several_workers_take_an_item_once(app, db):
    desk, other = offering("desk"), offering("other")
    for n in range(5):
        follow(db, desk, f"reader{n}@example.com")
        follow(db, other, f"reader{n}@example.com")
    item = breaking(db, "Front line moves", desk, other)

    ready = threading.Barrier(4)
    started: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with app.app_context(), Session(db.engine) as session:
                ready.wait()
                started.append(alerts.send_due(session))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(started) == 2
    digests = alert_digests(db)
    assert sorted(d.newsletter.slug for d in digests) == ["desk", "other"]
    # Each reader follows both lists: the first alert takes them all, the second none.
    assert [d.recipients for d in digests] == [5, 0]
    sent, _messages = mails(db)
    assert sent == [(f"reader{n}@example.com", "Front line moves") for n in range(5)]
    db.session.expire_all()
    assert db.session.get(Item, item.id).alerted_at is not None


def test_two_snapshots_at_once_still_mail_a_reader_once(app, db, postgresql_only):
    first, second = offering("first"), offering("second")
    follow(db, first, "both@example.com")
    follow(db, second, "both@example.com")
    item = breaking(db, "Bridge closed", first, second)
    with Session(db.engine) as session:
        one, two = ((d.id, d.newsletter_id) for d in alerts.take(session, item.id))
    now = utcnow()
    holder = Session(db.engine)
    ledger.hold_alerts(holder)
    holder.execute(ledger.alert_snapshot(*one, now, 3))

    def other_worker() -> None:
        with app.app_context(), Session(db.engine) as session:
            ledger.hold_alerts(session)
            session.execute(ledger.alert_snapshot(*two, now, 3))
            session.commit()

    thread = threading.Thread(target=other_worker)
    thread.start()
    waiting = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    # The other worker waits for the first snapshot's transaction, seen in pg_locks.
    with db.engine.connect() as conn:
        for _ in range(400):
            if not thread.is_alive() or conn.execute(waiting).scalar():
                break
            thread.join(0.05)
    holder.commit()
    holder.close()
    thread.join()
    assert len(db.session.scalars(select(Delivery)).all()) == 1


def test_an_alert_composed_by_a_worker_that_died_is_started_at_the_next_look(db):
    desk = offering("desk")
    follow(db, desk, "reader@example.com")
    item = breaking(db, "Blackout in Kharkiv", desk)
    with Session(db.engine) as session:
        (composed,) = alerts.take(session, item.id)
        assert composed.status == DigestStatus.DRAFT
        # A second worker cannot take the item again.
        assert alerts.take(session, item.id) == []
    assert look(db) == 1
    assert mails(db)[0] == [("reader@example.com", "Blackout in Kharkiv")]


def test_the_worker_runs_the_alerts(app, db):
    desk = offering("desk")
    follow(db, desk, "reader@example.com")
    breaking(db, "Airport reopens", desk)
    transport = MemoryTransport()
    worker = build(
        app.config,
        lambda: Session(db.engine),
        Settings(poll_interval=0),
        mail=transport,
        kinds=["alerts", "digest sending"],
    )
    handled = worker.run(drain=True)
    assert handled["alerts"] == 1
    assert [(m["To"], str(m["Subject"])) for m in transport.messages] == [
        ("reader@example.com", "Airport reopens")
    ]


def test_alerts_go_before_an_edition_being_sent(db):
    desk = offering("desk")
    for n in range(3):
        follow(db, desk, f"reader{n}@example.com")
    add_item(db, desk, "Morning story")
    edition = states.compose(db.session, desk)
    states.start(db.session, edition)
    breaking(db, "Breaking story", desk)
    look(db)
    transport = MemoryTransport()
    send_all(db, transport, rounds=1, batch_size=1)
    assert [str(m["Subject"]) for m in transport.messages] == ["Breaking story"]


# Feed categories


def rss(*entries: tuple[str, str, str]) -> bytes:
    """An RSS feed of (title, category, RFC 822 date) entries."""
    items = "".join(
        f"<item><title>{title}</title><link>https://news.example/{n}</link>"
        f"<guid>story-{n}</guid><category>{category}</category><pubDate>{date}</pubDate></item>"
        for n, (title, category, date) in enumerate(entries)
    )
    channel = f"<channel><title>N</title>{items}</channel>"
    return f'<?xml version="1.0"?><rss version="2.0">{channel}</rss>'.encode()


def test_a_feed_category_the_editor_maps_makes_an_alert(db):
    desk = offering("desk", alert_categories="Breaking, Urgent")
    follow(db, desk, "reader@example.com")
    now = format_datetime(utcnow())
    feed = rss(
        ("Strike on Odesa port", "breaking", now),
        ("Museum reopens", "Culture", now),
        ("Old breaking story", "Breaking", "Mon, 06 Jan 2020 10:00:00 GMT"),
    )
    assert feeds.import_feed(db.session, feed, desk) == (3, 0)
    flags = {i.title: i.alert for i in db.session.scalars(select(Item))}
    # Old news is no breaking news, whatever its category.
    assert flags == {
        "Strike on Odesa port": True,
        "Museum reopens": False,
        "Old breaking story": False,
    }
    look(db)
    assert mails(db)[0] == [("reader@example.com", "Strike on Odesa port")]


def test_atom_categories_are_read():
    atom = (
        '<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>N</title>'
        "<entry><title>A</title><link href='https://news.example/a'/><id>a</id>"
        "<updated>2024-01-01T00:00:00Z</updated><category term='urgent' label='Urgent news'/>"
        "</entry></feed>"
    )
    (entry,) = feeds.parse(atom.encode())
    assert entry["categories"] == ["urgent", "Urgent news"]


def test_alert_feeds_are_pulled_between_editions(db, tmp_path):
    path = tmp_path / "feed.xml"
    path.write_bytes(rss(("Border crossing closed", "Breaking", format_datetime(utcnow()))))
    desk = offering("desk", alert_categories="Breaking", feed_url=str(path))
    offering("no-map", feed_url=str(path))
    follow(db, desk, "reader@example.com")
    with Session(db.engine) as session:
        assert alerts.pull_alert_feeds(session, timedelta(minutes=2)) == 1
        # Pulled a moment ago: not again until the interval has passed.
        assert alerts.pull_alert_feeds(session, timedelta(minutes=2)) == 0
    look(db)
    assert mails(db)[0] == [("reader@example.com", "Border crossing closed")]


# The API


@pytest.fixture
def token(db, admin):  # type: ignore[no-untyped-def]
    _, secret = api_tokens.create_token(db.session, "Site CMS", admin.id)
    return {"Authorization": f"Bearer {secret}"}


def test_the_api_marks_an_item_as_an_alert(client, db, token):
    desk = offering("desk")
    follow(db, desk, "reader@example.com")
    body = {
        "title": "Explosions in Lviv",
        "url": "https://news.example/lviv",
        "newsletters": ["desk"],
    }
    created = client.post("/api/v1/items", json={**body, "alert": True}, headers=token)
    assert created.status_code == 201, created.get_data(as_text=True)
    assert created.get_json()["item"]["alert"] is True
    assert created.get_json()["item"]["alerted_at"] is None
    look(db)
    assert mails(db)[0] == [("reader@example.com", "Explosions in Lviv")]
    listed = client.get("/api/v1/items", headers=token).get_json()["items"][0]
    assert listed["alert"] is True and listed["alerted_at"] is not None

    plain = client.post(
        "/api/v1/items", json={**body, "url": "https://news.example/other"}, headers=token
    )
    assert plain.get_json()["item"]["alert"] is False


def test_the_api_refuses_an_alert_that_is_not_true_or_false(client, db, token):
    offering("desk")
    body = {"title": "T", "url": "https://news.example/t", "newsletters": ["desk"], "alert": "yes"}
    refused = client.post("/api/v1/items", json=body, headers=token)
    assert refused.status_code == 422
    errors = refused.get_json()["errors"]
    assert [e["field"] for e in errors] == ["alert"]
    assert db.session.scalars(select(Item)).all() == []


# The admin


def page_text(response) -> str:  # type: ignore[no-untyped-def]
    return html.unescape(response.get_data(as_text=True))


def visible(response) -> str:  # type: ignore[no-untyped-def]
    """The page's text as a reader sees it: no tags, runs of spaces folded."""
    return " ".join(re.sub(r"<[^>]+>", " ", page_text(response)).split())


def test_an_editor_sends_an_item_as_a_breaking_alert(client, db, editor):
    desk = offering("desk", "News Desk")
    follow(db, desk, "reader@example.com")
    sign_in(client, EDITOR)
    form_page = page_text(client.get("/admin/items/new"))
    assert "Send as breaking alert" in form_page
    created = client.post(
        "/admin/items/new",
        data={
            "csrf_token": csrf_token(client, "/admin/items/new"),
            "title": "Power restored in Kyiv",
            "url": "https://news.example/power",
            "newsletters": ["desk"],
            "alert": "y",
        },
    )
    assert created.status_code == 302
    item = db.session.scalars(select(Item)).one()
    assert item.alert and item.alerted_at is None
    assert "Power restored in Kyiv alert" in visible(client.get("/admin/items"))

    look(db)
    assert mails(db)[0] == [("reader@example.com", "Power restored in Kyiv")]
    db.session.expire_all()
    listing = visible(client.get("/admin/items"))
    assert "Power restored in Kyiv alert sent" in listing
    edit = page_text(client.get(f"/admin/items/{item.id}/edit"))
    assert "Sent as a breaking alert at" in edit and "Send as breaking alert" not in edit

    digests = visible(client.get("/admin/digests"))
    assert "Power restored in Kyiv breaking alert" in digests


def test_an_alert_can_be_paused_and_cancelled_while_sending(client, db, editor):
    desk = offering("desk")
    for n in range(3):
        follow(db, desk, f"reader{n}@example.com")
    breaking(db, "Storm warning", desk)
    look(db)
    (digest,) = alert_digests(db)
    transport = MemoryTransport()
    send_all(db, transport, rounds=1, batch_size=1)
    assert len(transport.messages) == 1

    sign_in(client, EDITOR)
    url = f"/admin/digests/{digest.id}"
    page = page_text(client.get(url))
    assert "breaking alert" in page and ">Pause</button>" in page
    client.post(f"{url}/pause", data={"csrf_token": csrf_token(client, url)})
    assert alert_digests(db)[0].status == DigestStatus.PAUSED
    client.post(f"{url}/resume", data={"csrf_token": csrf_token(client, url)})
    client.post(f"{url}/cancel", data={"csrf_token": csrf_token(client, url), "confirm": "yes"})
    (cancelled,) = alert_digests(db)
    assert cancelled.status == DigestStatus.CANCELLED
    assert (cancelled.sent_count, cancelled.skipped_count) == (1, 2)
    send_all(db, transport)
    assert len(transport.messages) == 1
    assert "Cancelled" in page_text(client.get(url))


def test_an_editor_maps_feed_categories_to_alerts(client, db, admin):
    desk = offering("desk", "News Desk")
    sign_in(client)
    path = f"/admin/newsletters/{desk.id}/edit"
    form = {
        "csrf_token": csrf_token(client, path),
        "name": "News Desk",
        "slug": "desk",
        "cadence": "daily",
        "prompt_text": "Enter your email to subscribe",
        "button_text": "Subscribe",
        "thanks_text": "Thanks!",
        "send_time": "08:00",
        "timezone": "UTC",
        "send_weekday": "0",
        "auto_digest": "off",
        "alert_categories": " Breaking ,Urgent,,  Breaking",
    }
    saved = client.post(path, data=form)
    assert saved.status_code == 302, page_text(saved)
    db.session.expire_all()
    assert desk.alert_categories == "Breaking, Urgent"
    assert "Breaking, Urgent" in page_text(client.get(f"/admin/newsletters/{desk.id}"))
    refused = client.post(path, data={**form, "alert_categories": "Breaking\r\nBcc: x"})
    assert refused.status_code == 422

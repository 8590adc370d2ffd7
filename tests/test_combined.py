"""The combined edition: one mail per edition for a reader who follows several lists."""

from __future__ import annotations

import re
import secrets
import signal
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, insert, select, update
from test_digest_workers import finish, worker

from newsletter.digests import combined, states
from newsletter.extensions import db as _db
from newsletter.links import Reader
from newsletter.mail.transport import SMTPTransport
from newsletter.models import (
    AuditEvent,
    AutoDigest,
    CombinedEdition,
    ConsentEvent,
    Delivery,
    DeliveryStatus,
    Digest,
    DigestStatus,
    Edition,
    Subscriber,
    Subscription,
    SubscriptionStatus,
)

from factories import (
    BASE_URL,
    add_item,
    app_links,
    csrf_token,
    html_part,
    links,
    make_newsletter,
    send_all,
    sign_in,
    text_part,
)


def follow(db, email, *lists, frequency="daily", combined_mail=True, locale=None):  # type: ignore[no-untyped-def]
    """A reader of these lists at one frequency, who chose one combined mail or not; commit."""
    reader = Subscriber(email=email, email_key=email.lower(), combined=combined_mail, locale=locale)
    db.session.add(reader)
    for newsletter in lists:
        db.session.add(
            Subscription(
                subscriber=reader,
                newsletter=newsletter,
                status=SubscriptionStatus.CONFIRMED,
                frequency=frequency,
            )
        )
    db.session.commit()
    return reader


@pytest.fixture
def three(app):  # type: ignore[no-untyped-def]
    """Three lists offering daily and weekly editions, each sent automatically, the site's
    combined editions on."""
    found = [
        make_newsletter(
            slug,
            name,
            frequencies="daily,weekly",
            cadence="weekly",
            auto_digest=AutoDigest.SEND,
            editions=[Edition(frequency="daily", auto_digest=AutoDigest.SEND)],
        )
        for slug, name in (
            ("politics", "Politics"),
            ("business", "Business"),
            ("culture", "Culture"),
        )
    ]
    combined.editions(_db.session)
    return found


def _shared_item(db, lists, title, hours_ago=1):  # type: ignore[no-untyped-def]
    item = add_item(db, lists[0], title, hours_ago=hours_ago)
    item.newsletters = list(lists)
    db.session.commit()
    return item


def _renders() -> float:
    """How many digest mails this process has rendered, as the metric counts them."""
    return REGISTRY.get_sample_value("newsletter_digest_renders_total") or 0


def _received(smtp, address):  # type: ignore[no-untyped-def]
    return [r.message for r in smtp.received if r.rcpt_tos == [address]]


def test_a_combined_reader_of_three_lists_gets_one_mail_with_each_item_once(
    db, client, three, smtp
):
    politics, business, culture = three
    _shared_item(db, [politics, business], "Budget passed")
    add_item(db, culture, "Opera reopens", hours_ago=2)
    add_item(db, business, "Grain exports up", hours_ago=3)
    reader = follow(db, "all@example.com", *three)
    # A reader of the same list who did not choose the combined mail is not in it.
    follow(db, "own@example.com", politics, combined_mail=False)

    digest = combined.send(db.session, "daily")
    assert digest is not None and digest.status == DigestStatus.SENDING
    assert digest.newsletter_id is None and [n.slug for n in digest.lists] == [
        "politics",
        "business",
        "culture",
    ]
    send_all(db, SMTPTransport("127.0.0.1", smtp.port))

    assert [r.rcpt_tos[0] for r in smtp.received] == ["all@example.com"]
    (mail,) = _received(smtp, "all@example.com")
    assert mail["List-Id"] == "Combined daily edition <daily.combined.news.example.org>"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text, html = text_part(mail), html_part(mail)
    for title in ("Budget passed", "Opera reopens", "Grain exports up"):
        assert text.count(f"* {title}") == 1, title
        assert html.count(f">{title}</a>") == 1, title
    for name in ("Politics", "Business", "Culture"):
        assert f"== {name} ==" in text
    one_click = re.fullmatch(r"<(https://[^>]+)>", mail["List-Unsubscribe"]).group(1)
    assert f'href="{one_click}"' in html
    unsubscribes = links(mail, "/unsubscribe/")
    # One per list, and the one that leaves them all, which is the one-click's.
    assert len(set(unsubscribes)) == 4
    assert one_click.removeprefix(BASE_URL) in unsubscribes
    per_list = [u for u in unsubscribes if u != one_click.removeprefix(BASE_URL)]
    assert len(links(mail, "/preferences/")) == 1
    # Each list's own edition is what the archive keeps: a combined mail has no web version.
    assert "View in browser" not in text and "View in browser" not in html
    assert not links(mail, "/archive/")

    # A list's own link narrows the mail's signed link to one of its lists, and to no other.
    assert all(u.startswith(one_click.removeprefix(BASE_URL) + "/") for u in per_list)
    stranger = make_newsletter("sport", "Sport")
    forged = client.post(f"{one_click.removeprefix(BASE_URL)}/{stranger.id}")
    assert "no longer valid" in forged.get_data(as_text=True)
    # Each list's own link leaves that list only.
    page = client.post(per_list[1]).get_data(as_text=True)
    assert "will get no more mail from <strong>Business</strong>" in page
    db.session.expire_all()
    states_now = {s.newsletter.slug: s.status for s in reader.subscriptions}
    assert states_now == {
        "politics": SubscriptionStatus.CONFIRMED,
        "business": SubscriptionStatus.UNSUBSCRIBED,
        "culture": SubscriptionStatus.CONFIRMED,
    }
    # The mail client's one-click POST (RFC 8058) leaves every list the mail carried.
    response = client.post(one_click.removeprefix(BASE_URL), data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    for name in ("Politics", "Business", "Culture"):
        assert f"<strong>{name}</strong>" in page
    db.session.expire_all()
    assert {s.status for s in reader.subscriptions} == {SubscriptionStatus.UNSUBSCRIBED}
    origins = db.session.scalars(
        select(ConsentEvent.source).where(
            ConsentEvent.subscription_id.in_([s.id for s in reader.subscriptions])
        )
    ).all()
    assert origins.count("one-click") == 2  # politics and culture: business was left already
    db.session.refresh(digest)
    assert digest.status == DigestStatus.SENT and digest.sent_count == 1


def test_readers_are_grouped_by_their_set_of_lists_and_each_set_rendered_once(db, three, smtp):
    politics, business, culture = three
    _shared_item(db, three, "Budget passed")
    sets = [
        (politics,),
        (politics, business),
        (politics, business),
        (business, culture),
        (politics, business),
        (culture,),
    ]
    for n, lists in enumerate(sets):
        follow(db, f"reader{n}@example.com", *lists)
    digest = combined.send(db.session, "daily")
    assert digest is not None

    # One ledger row per reader, whatever the number of lists they follow.
    rows = db.session.scalars(select(Delivery).where(Delivery.digest_id == digest.id)).all()
    assert len(rows) == len(sets) == digest.recipients
    owners = db.session.scalars(
        select(Subscription.subscriber_id).where(
            Subscription.id.in_([r.subscription_id for r in rows])
        )
    ).all()
    assert len(set(owners)) == len(sets)

    before = _renders()
    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    assert _renders() - before == len({frozenset(n.id for n in s) for s in sets})
    assert len(smtp.received) == len(sets)
    for n, lists in enumerate(sets):
        (mail,) = _received(smtp, f"reader{n}@example.com")
        text = text_part(mail)
        assert text.count("* Budget passed") == 1
        shown = {name for name in ("Politics", "Business", "Culture") if f"== {name} ==" in text}
        # The item sits under the reader's first list; every list has its own link.
        assert shown == {lists[0].name}
        assert len(set(links(mail, "/unsubscribe/"))) == len(lists) + (len(lists) > 1)


def test_the_combined_reader_is_left_out_of_each_lists_own_edition(db, three):
    politics, *_ = three
    add_item(db, politics, "Budget passed")
    follow(db, "all@example.com", *three)
    own = follow(db, "own@example.com", politics, combined_mail=False)
    digest = states.compose(db.session, politics)
    digest.frequency = "daily"
    db.session.commit()
    assert states.start(db.session, digest) == 1
    row = db.session.scalar(select(Delivery).where(Delivery.digest_id == digest.id))
    assert db.session.get(Subscription, row.subscription_id).subscriber_id == own.id


def test_a_reader_who_left_a_list_after_the_start_gets_the_others(db, three, smtp):
    politics, business, culture = three
    add_item(db, politics, "Budget passed")
    add_item(db, culture, "Opera reopens")
    leaver = follow(db, "leaver@example.com", politics, culture)
    gone = follow(db, "gone@example.com", politics)
    digest = combined.send(db.session, "daily")
    assert digest is not None and digest.recipients == 2
    # After the snapshot: one leaves the list that stood for them, the other their only list.
    for reader in (leaver, gone):
        first = min(reader.subscriptions, key=lambda s: s.id)
        first.status = SubscriptionStatus.UNSUBSCRIBED
    db.session.commit()

    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    assert [r.rcpt_tos[0] for r in smtp.received] == ["leaver@example.com"]
    text = text_part(smtp.received[0].message)
    assert "Opera reopens" in text and "Budget passed" not in text
    assert "Politics" not in text
    db.session.expire_all()
    statuses = dict(
        db.session.execute(
            select(Delivery.status, func.count())
            .where(Delivery.digest_id == digest.id)
            .group_by(Delivery.status)
        ).all()
    )
    assert statuses == {DeliveryStatus.SENT: 1, DeliveryStatus.SKIPPED: 1}


def test_only_readers_of_the_frequency_and_new_items_make_the_edition(db, three):
    politics, business, culture = three
    add_item(db, politics, "Budget passed")
    follow(db, "daily@example.com", politics, business)
    follow(db, "weekly@example.com", culture, frequency="weekly")
    digest = combined.send(db.session, "daily")
    # Business has no new items: it is not carried; culture's reader reads weekly.
    assert [n.slug for n in digest.lists] == ["politics"]
    assert digest.recipients == 1
    send_all(db, _Null())
    # The next edition carries only what came in since.
    assert combined.send(db.session, "daily") is None
    add_item(db, business, "Grain exports up")
    later = combined.send(db.session, "daily")
    assert [n.slug for n in later.lists] == ["business"]
    assert [i.title for i in later.items] == ["Grain exports up"]


def test_what_an_editors_mailing_to_everyone_carried_is_not_mailed_again(db, three):
    politics = three[0]
    follow(db, "all@example.com", politics)
    add_item(db, politics, "Budget passed")
    combined.send(db.session, "daily")
    send_all(db, _Null())
    story = add_item(db, politics, "Ceasefire talks")
    everyone = states.compose(db.session, politics, items=[story], subject="Special")
    assert states.start(db.session, everyone) == 1  # the combined reader is one of them
    send_all(db, _Null())
    assert combined.send(db.session, "daily") is None


def test_the_weekly_combined_edition_puts_the_editors_picks_first(db, three):
    politics, business, _ = three
    follow(db, "weekly@example.com", politics, business, frequency="weekly")
    add_item(db, politics, "Newest", hours_ago=1)
    add_item(db, business, "Picked", hours_ago=30, pick=True)
    add_item(db, politics, "Older", hours_ago=50)
    digest = combined.send(db.session, "weekly")
    assert [i.title for i in digest.items] == ["Picked", "Newest", "Older"]


def test_a_list_that_follows_a_feed_is_pulled_before_the_edition(db, three, monkeypatch):
    politics = three[0]
    politics.feed_url = "https://news.example.org/feed.xml"
    db.session.commit()
    follow(db, "all@example.com", politics)
    pulled = []

    def pull(session, newsletter):  # type: ignore[no-untyped-def]
        pulled.append(newsletter.slug)
        add_item(db, newsletter, "From the feed")

    monkeypatch.setattr(combined.feeds, "pull", pull)
    digest = combined.send(db.session, "daily")
    assert pulled == ["politics"]
    assert [i.title for i in digest.items] == ["From the feed"]


class _Null(SMTPTransport):
    """Accepts every message and sends it nowhere."""

    def __init__(self) -> None:
        pass

    def send_raw(self, sender, to, data, before_data=None):  # type: ignore[no-untyped-def]
        if before_data is not None:
            before_data()

    def close(self) -> None:
        pass


def test_one_link_names_the_set_and_a_forged_one_is_refused(app):
    links_ = app_links()
    reader = Reader(7, "key")
    token = links_.unsubscribe_token(reader, [3, 1, 2])
    read = links_.read_unsubscribe(token)
    assert read.reader == reader and read.newsletter_ids == (3, 1, 2)
    assert links_.read_unsubscribe(links_.unsubscribe_token(reader, 5)).newsletter_ids == (5,)
    with pytest.raises(Exception, match="broken"):
        links_.read_unsubscribe(token[:-2] + "xx")


def test_the_edition_is_due_at_its_time_and_taken_by_one_worker(db, three):
    politics, *_ = three
    add_item(db, politics, "Budget passed")
    follow(db, "all@example.com", *three)
    editions = combined.editions(db.session)
    # On by default, 07:00 UTC, weekly on Mondays: a reader who ticks the box gets mail.
    assert {f: (e.automatic, e.send_time, e.timezone) for f, e in editions.items()} == {
        "daily": (True, "07:00", "UTC"),
        "weekly": (True, "07:00", "UTC"),
    }
    monday = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
    assert combined.run_due(db.session, monday) == []  # planned first
    db.session.expire_all()
    daily = db.session.get(CombinedEdition, "daily")
    assert daily.next_at == datetime(2026, 12, 7, 7, 0, tzinfo=UTC)
    # The daily edition's moment, 07:00 that Monday, has just passed.
    seven_past = datetime(2026, 12, 7, 7, 0, 5, tzinfo=UTC)
    made = combined.run_due(db.session, seven_past)
    assert len(made) == 1 and made[0].frequency == "daily"
    # The weekly reader set is empty: no weekly edition, but its next moment moved on.
    db.session.expire_all()
    assert db.session.get(CombinedEdition, "weekly").next_at == datetime(
        2026, 12, 14, 7, 0, tzinfo=UTC
    )
    assert db.session.get(CombinedEdition, "daily").next_at == datetime(
        2026, 12, 8, 7, 0, tzinfo=UTC
    )
    # A second worker looking at the same moment finds nothing left to take.
    assert combined.run_due(db.session, seven_past) == []
    assert db.session.scalar(select(func.count()).select_from(Digest)) == 1


def test_admins_set_the_combined_schedule_in_the_site_settings(client, db, admin):
    sign_in(client)
    page = client.get("/admin/settings").get_data(as_text=True)
    assert "Combined daily edition" in page and "Combined weekly edition" in page
    data = {
        "csrf_token": csrf_token(client, "/admin/settings"),
        "daily-automatic": "on",
        "daily-send_time": "06:30",
        "daily-timezone": "Europe/Kyiv",
        "weekly-send_time": "08:00",
        "weekly-timezone": "UTC",
        "weekly-send_weekday": "5",
    }
    response = client.post("/admin/settings/combined", data=data)
    assert response.status_code == 302
    db.session.expire_all()
    daily = db.session.get(CombinedEdition, "daily")
    weekly = db.session.get(CombinedEdition, "weekly")
    assert (daily.send_time, daily.timezone, daily.automatic) == ("06:30", "Europe/Kyiv", True)
    assert daily.next_at is not None
    assert (weekly.automatic, weekly.send_weekday, weekly.next_at) == (False, 5, None)
    assert (
        db.session.scalar(select(func.count()).where(AuditEvent.action == "combined-edition")) == 2
    )
    bad = {**data, "daily-send_time": "25:99", "weekly-timezone": "Mars/Olympus"}
    response = client.post("/admin/settings/combined", data=bad)
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert "is not a time of day" in page and "is not a time zone" in page
    db.session.expire_all()
    assert db.session.get(CombinedEdition, "daily").send_time == "06:30"


def test_admins_see_pause_and_cancel_a_combined_edition(client, db, admin, three):
    politics, business, _ = three
    _shared_item(db, [politics, business], "Budget passed")
    for n in range(3):
        follow(db, f"reader{n}@example.com", politics, business)
    digest = combined.send(db.session, "daily")
    sign_in(client)
    listing = client.get("/admin/digests")
    assert listing.status_code == 200 and "Combined daily edition" in listing.get_data(as_text=True)
    page = client.get(f"/admin/digests/{digest.id}")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "Combined daily edition: Politics, Business" in text
    assert "3 readers of the combined edition" in text
    assert client.get(f"/admin/digests/{digest.id}/progress").json["recipients"] == 3
    preview = client.get(f"/admin/digests/{digest.id}/preview")
    assert preview.status_code == 200 and "Budget passed" in preview.get_data(as_text=True)
    assert client.get(f"/admin/digests/{digest.id}/preview.html").status_code == 200
    # It goes on its schedule: never sent or scheduled by hand.
    assert client.get(f"/admin/digests/{digest.id}/send").status_code == 302
    token = csrf_token(client, f"/admin/digests/{digest.id}")
    client.post(f"/admin/digests/{digest.id}/pause", data={"csrf_token": token})
    db.session.expire_all()
    assert db.session.get(Digest, digest.id).status == DigestStatus.PAUSED
    assert client.get(f"/admin/digests/{digest.id}/cancel").status_code == 200
    client.post(f"/admin/digests/{digest.id}/cancel", data={"csrf_token": token, "confirm": "yes"})
    db.session.expire_all()
    assert db.session.get(Digest, digest.id).status == DigestStatus.CANCELLED
    assert db.session.get(Digest, digest.id).skipped_count == 3
    # The reader's page in the admin lists it too.
    reader = db.session.scalar(select(Subscriber).where(Subscriber.email == "reader0@example.com"))
    assert client.get(f"/admin/subscribers/{reader.id}").status_code == 200


def test_the_combined_mail_in_ukrainian(db, three, smtp):
    politics, *_ = three
    add_item(db, politics, "Budget passed")
    follow(db, "uk@example.com", politics, locale="uk")
    combined.send(db.session, "daily")
    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    text = text_part(smtp.received[0].message)
    assert "Budget passed" in text
    assert "Unsubscribe" not in text


def test_archived_lists_are_not_carried(db, three):
    politics, business, _ = three
    add_item(db, politics, "Budget passed")
    add_item(db, business, "Grain exports up")
    follow(db, "all@example.com", politics, business)
    business.archived = True
    db.session.commit()
    digest = combined.send(db.session, "daily")
    assert [n.slug for n in digest.lists] == ["politics"]
    assert [i.title for i in digest.items] == ["Budget passed"]
    assert digest.recipients == 1


def add_combined_readers(db, lists, count):  # type: ignore[no-untyped-def]
    """`count` combined daily readers, each of a subset of `lists` (every one non-empty),
    written in bulk; their addresses."""
    addresses = [f"reader{n}@example.com" for n in range(count)]
    now = datetime.now(UTC)
    db.session.execute(
        insert(Subscriber),
        [
            {
                "email": a,
                "email_key": a,
                "token_key": secrets.token_urlsafe(12),
                "created_at": now,
                "combined": True,
            }
            for a in addresses
        ],
    )
    ids = db.session.scalars(select(Subscriber.id).order_by(Subscriber.id)).all()
    rows = []
    for n, subscriber_id in enumerate(ids):
        chosen = [nl for bit, nl in enumerate(lists) if (n % 7 + 1) >> bit & 1]
        rows += [
            {
                "subscriber_id": subscriber_id,
                "newsletter_id": newsletter.id,
                "status": SubscriptionStatus.CONFIRMED,
                "frequency": "daily",
                "nonce": "n",
                "subscribed_at": now,
                "confirmed_at": now,
            }
            for newsletter in chosen
        ]
    db.session.execute(insert(Subscription), rows)
    db.session.commit()
    return addresses


def test_a_killed_worker_mid_edition_misses_nobody_and_doubles_nobody_but_one(app, db, three, smtp):
    _shared_item(db, three, "Budget passed")
    addresses = add_combined_readers(db, three, 1500)
    digest = combined.send(db.session, "daily")
    assert digest.recipients == 1500
    # Throttled so that it is surely in the middle when it dies.
    first = worker(app, smtp, NEWSLETTER_SEND_RATE="300")
    deadline = time.monotonic() + 60
    while len(smtp.received) < 300:
        assert time.monotonic() < deadline, "the first worker sent nothing"
        assert first.poll() is None, first.stdout.read().decode()  # type: ignore[union-attr]
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    db.session.expire_all()
    held = db.session.scalar(
        select(func.count()).where(
            Delivery.digest_id == digest.id, Delivery.status == DeliveryStatus.SENDING
        )
    )
    assert held > 0, "the kill came between batches; nothing was in flight"
    # The dead worker's lease runs out (five minutes, made to pass at once here).
    db.session.execute(
        update(Delivery)
        .where(Delivery.status == DeliveryStatus.SENDING)
        .values(next_attempt_at=datetime.now(UTC))
    )
    db.session.commit()
    finish(worker(app, smtp, "--drain"))

    copies = Counter(r.rcpt_tos[0] for r in smtp.received)
    assert set(copies) == set(addresses), "someone got nothing"
    doubled = [a for a, n in copies.items() if n > 1]
    # At most the message in flight on the dead worker's one connection went twice.
    assert len(doubled) <= 1 and max(copies.values()) <= 2
    db.session.expire_all()
    done = db.session.get(Digest, digest.id)
    assert done.status == DigestStatus.SENT and done.sent_count == 1500

"""Frequencies and editions: who a digest of each edition goes to."""

from __future__ import annotations

from sqlalchemy import select

from newsletter import frequencies
from newsletter import newsletters as lists
from newsletter.digests import combined as combined_editions
from newsletter.digests import states
from newsletter.extensions import db
from newsletter.models import (
    CombinedEdition,
    Delivery,
    Digest,
    DigestItem,
    Subscription,
    SubscriptionStatus,
)
from tests.factories import add_item, add_reader, make_newsletter


def test_parse_keeps_canonical_order_and_drops_unknown():
    assert frequencies.parse("weekly, ALERT,,daily") == ("alert", "daily", "weekly")
    assert frequencies.parse("") == ()
    assert frequencies.unknown("daily, hourly") == ["hourly"]
    assert frequencies.join(["weekly", "alert"]) == "alert,weekly"


def test_a_subscriptions_edition_is_its_frequency_or_the_lists_cadence():
    assert frequencies.edition("weekly", "daily") == "weekly"
    assert frequencies.edition("alert", "daily") == "daily"
    assert frequencies.edition(None, "monthly") == "monthly"


def test_the_default_is_offered_or_none(app):
    news = make_newsletter(slug="desk", frequencies="daily,weekly", default_frequency="weekly")
    assert frequencies.default(news) == "weekly"
    news.default_frequency = "alert"
    assert frequencies.default(news) is None
    assert frequencies.valid_choice(news, "daily")
    assert not frequencies.valid_choice(news, "alert")


def _reader(news, email, frequency=None, status=SubscriptionStatus.CONFIRMED, combined=False):  # type: ignore[no-untyped-def]
    subscriber = add_reader(db, news, email, status)
    subscriber.combined = combined
    subscription = subscriber.subscriptions[0]
    subscription.frequency = frequency
    db.session.commit()
    return subscription.id


def test_each_edition_goes_to_its_readers_only(app):
    # Sent automatically, with the site's combined editions on: its combined readers get those.
    news = make_newsletter(
        slug="desk", cadence="daily", frequencies="alert,daily,weekly", auto_digest="send"
    )
    combined_editions.editions(db.session)
    legacy = _reader(news, "legacy@example.com")
    daily = _reader(news, "daily@example.com", "daily")
    weekly = _reader(news, "weekly@example.com", "weekly")
    alerts = _reader(news, "alerts@example.com", "alert")
    combined = _reader(news, "combined@example.com", "daily", combined=True)
    _reader(news, "pending@example.com", "weekly", status=SubscriptionStatus.PENDING)
    _reader(news, "gone@example.com", "daily", status=SubscriptionStatus.UNSUBSCRIBED)

    item = add_item(db, news, "Budget passed")
    expected = {
        None: {legacy, daily, weekly, alerts, combined},
        "daily": {legacy, daily, alerts},
        "weekly": {weekly},
        "alert": {alerts},
    }
    for edition, readers in expected.items():
        assert states.audience_size(db.session, news, edition) == len(readers)
        digest = Digest(newsletter=news, subject=f"Edition {edition}", frequency=edition)
        digest.entries = [DigestItem(item=item)]
        db.session.add(digest)
        db.session.commit()
        assert states.start(db.session, digest) == len(readers)
        rows = select(Delivery.subscription_id).where(Delivery.digest_id == digest.id)
        assert set(db.session.scalars(rows)) == readers, edition


def test_a_monthly_list_keeps_its_combined_readers(app):
    news = make_newsletter(slug="monthly", cadence="monthly")
    reader = _reader(news, "combined@example.com", combined=True)
    digest = Digest(newsletter=news, subject="This month", frequency="monthly")
    digest.entries = [DigestItem(item=add_item(db, news, "Budget passed"))]
    db.session.add(digest)
    db.session.commit()
    states.start(db.session, digest)
    assert db.session.scalar(select(Delivery.subscription_id)) == reader
    assert db.session.get(Subscription, reader).frequency is None


def _daily_edition_readers(news) -> set[int]:  # type: ignore[no-untyped-def]
    digest = Digest(newsletter=news, subject="Tonight", frequency="daily")
    story = add_item(db, news, f"Story {news.id} {db.session.query(Digest).count()}")
    digest.entries = [DigestItem(item=story)]
    db.session.add(digest)
    db.session.commit()
    states.start(db.session, digest)
    return set(
        db.session.scalars(select(Delivery.subscription_id).where(Delivery.digest_id == digest.id))
    )


def test_a_combined_reader_keeps_a_lists_own_edition_the_combined_one_does_not_serve(app):
    """Nothing reaches a combined reader unreviewed, and nobody is left without mail: a list
    whose edition an editor reviews (or sends by hand) keeps them in its own digests, and so
    does every list while the site's combined edition is off."""
    combined_editions.editions(db.session)
    reviewed = make_newsletter(slug="reviewed", cadence="daily", auto_digest="draft")
    reader = _reader(reviewed, "combined@example.com", "daily", combined=True)
    assert _daily_edition_readers(reviewed) == {reader}
    assert combined_editions.followed_lists(db.session, "daily") == []

    sent = make_newsletter(slug="sent", cadence="daily", auto_digest="send")
    other = _reader(sent, "other@example.com", "daily", combined=True)
    assert _daily_edition_readers(sent) == set()
    assert [n.slug for n in combined_editions.followed_lists(db.session, "daily")] == ["sent"]

    db.session.get(CombinedEdition, "daily").automatic = False
    db.session.commit()
    assert _daily_edition_readers(sent) == {other}
    assert combined_editions.followed_lists(db.session, "daily") == []


def test_a_choice_the_list_stops_offering_falls_back_to_its_cadence(app):
    news = make_newsletter(slug="desk", cadence="weekly", frequencies="daily,weekly")
    daily = _reader(news, "daily@example.com", "daily")
    weekly = _reader(news, "weekly@example.com", "weekly")
    lists.save(db.session, news, {"frequencies": "weekly"})
    assert db.session.get(Subscription, daily).frequency is None
    assert db.session.get(Subscription, weekly).frequency == "weekly"
    assert states.audience_size(db.session, news, "weekly") == 2

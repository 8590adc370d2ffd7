"""Suppression: the one place that says an address may never be mailed again."""

from __future__ import annotations

from sqlalchemy import func, select

from newsletter import suppression
from newsletter.addresses import address_hash
from newsletter.models import Subscription, SubscriptionStatus, Suppression, SuppressionReason

from factories import add_reader


def test_suppress_is_idempotent_and_keeps_only_a_hash(db, newsletters):
    assert suppression.suppress(db.session, "Gone@Example.com", SuppressionReason.ERASED)
    assert not suppression.suppress(db.session, "gone@example.com", SuppressionReason.ERASED)
    db.session.commit()
    [row] = db.session.scalars(select(Suppression)).all()
    assert row.email_hash == address_hash("gone@example.com")
    assert "gone" not in row.email_hash
    assert suppression.is_suppressed(db.session, "GONE@example.com")
    assert suppression.reason(db.session, "gone@example.com") == SuppressionReason.ERASED
    assert not suppression.is_suppressed(db.session, "other@example.com")


def test_a_bounce_ends_every_live_subscription_of_the_person(db, newsletters):
    daily, explaining, culture = newsletters
    reader = add_reader(db, daily, "reader@example.com")
    db.session.add(Subscription(subscriber=reader, newsletter=explaining, status="pending"))
    db.session.add(Subscription(subscriber=reader, newsletter=culture, status="unsubscribed"))
    add_reader(db, daily, "other@example.com")
    db.session.commit()

    suppression.suppress(db.session, "Reader@example.com", SuppressionReason.BOUNCED)
    db.session.commit()

    db.session.expire_all()
    states = dict(
        db.session.execute(
            select(Subscription.newsletter_id, Subscription.status).where(
                Subscription.subscriber_id == reader.id
            )
        ).all()
    )
    assert states == {
        daily.id: SubscriptionStatus.BOUNCED,
        explaining.id: SubscriptionStatus.BOUNCED,
        culture.id: SubscriptionStatus.UNSUBSCRIBED,
    }
    others = select(func.count()).where(Subscription.status == SubscriptionStatus.CONFIRMED)
    assert db.session.scalar(others) == 1


def test_a_bounce_outranks_an_erasure_and_a_second_bounce_changes_nothing(db, newsletters):
    daily, *_ = newsletters
    # Erased, then signed up again with fresh consent, then the address died.
    suppression.suppress(db.session, "back@example.com", SuppressionReason.ERASED)
    add_reader(db, daily, "back@example.com")
    db.session.commit()
    assert not suppression.unmailable(db.session, "back@example.com")

    assert suppression.suppress(db.session, "back@example.com", SuppressionReason.BOUNCED)
    assert not suppression.suppress(db.session, "back@example.com", SuppressionReason.COMPLAINED)
    assert not suppression.suppress(db.session, "back@example.com", SuppressionReason.ERASED)
    db.session.commit()

    assert suppression.reason(db.session, "back@example.com") == SuppressionReason.BOUNCED
    assert suppression.unmailable(db.session, "back@example.com")
    status = db.session.scalar(select(Subscription.status))
    assert status == SubscriptionStatus.BOUNCED


def test_suppressing_many_also_outranks_erasures(db, newsletters):
    suppression.suppress(db.session, "one@example.com", SuppressionReason.ERASED)
    suppression.suppress(db.session, "two@example.com", SuppressionReason.BOUNCED)
    db.session.commit()

    suppression.suppress_many(
        db.session,
        ["One@example.com", "two@example.com", "three@example.com"],
        SuppressionReason.COMPLAINED,
    )
    db.session.commit()

    reasons = dict(db.session.execute(select(Suppression.email_hash, Suppression.reason)).all())
    assert reasons == {
        address_hash("one@example.com"): SuppressionReason.COMPLAINED,
        address_hash("two@example.com"): SuppressionReason.BOUNCED,
        address_hash("three@example.com"): SuppressionReason.COMPLAINED,
    }

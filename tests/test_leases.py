"""Leases: one claim holds a row until it settles, releases or its lease runs out."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from newsletter.leases import Policy
from newsletter.mail import outbox
from newsletter.models import MailKind, OutboxMessage, Subscriber, utcnow

POLICY = Policy(batch_size=2, lease=timedelta(minutes=5))


def queue(db, count: int) -> list[int]:  # type: ignore[no-untyped-def]
    subscriber = Subscriber(email="r@example.com", email_key="r@example.com")
    db.session.add(subscriber)
    rows = [
        OutboxMessage(kind=MailKind.CONFIRMATION, subscriber=subscriber, to_address="r@example.com")
        for _ in range(count)
    ]
    db.session.add_all(rows)
    db.session.commit()
    return [row.id for row in rows]


def row(db, row_id: int) -> OutboxMessage:  # type: ignore[no-untyped-def]
    db.session.expire_all()
    found = db.session.get(OutboxMessage, row_id)
    assert found is not None
    return found


def test_a_claim_takes_a_batch_and_counts_an_attempt(db, app):
    ids = queue(db, 3)
    before = utcnow()
    assert outbox.LEASES.claim(db.session, "a", POLICY) == ids[:2]
    after = utcnow()
    assert outbox.LEASES.claim(db.session, "b", POLICY) == ids[2:]
    assert outbox.LEASES.claim(db.session, "c", POLICY) == []
    held = row(db, ids[0])
    assert (held.claim, held.attempts) == ("a", 1)
    # Held for the policy's lease from the moment of the claim.
    assert before + POLICY.lease <= held.next_attempt_at <= after + POLICY.lease


def test_only_the_holding_claim_renews_settles_or_releases(db, app):
    [first] = queue(db, 1)
    outbox.LEASES.claim(db.session, "a", POLICY)
    assert outbox.LEASES.renew(db.session, [first], "b", POLICY) is False
    assert outbox.LEASES.settle(db.session, [first], "b", "sent") == 0
    assert outbox.LEASES.release(db.session, [first], "b") == 0
    assert row(db, first).status == "queued" and row(db, first).claim == "a"
    assert outbox.LEASES.renew(db.session, [first], "a", POLICY) is True
    assert outbox.LEASES.settle(db.session, [first], "a", "sent") == 1
    assert (row(db, first).status, row(db, first).claim) == ("sent", None)


def test_a_release_gives_back_an_untried_row_without_counting_it(db, app):
    [first] = queue(db, 1)
    outbox.LEASES.claim(db.session, "a", POLICY)
    outbox.LEASES.release(db.session, [first], "a", delay=timedelta(minutes=1), error="later")
    released = row(db, first)
    assert (released.claim, released.attempts, released.last_error) == (None, 0, "later")
    assert outbox.LEASES.claim(db.session, "b", POLICY) == []  # not due for a minute


def test_a_lease_that_ran_out_lets_another_claim_take_the_row(db, app):
    [first] = queue(db, 1)
    outbox.LEASES.claim(db.session, "dead", POLICY)
    db.session.execute(
        update(OutboxMessage).values(next_attempt_at=utcnow() - timedelta(seconds=1))
    )
    db.session.commit()
    assert outbox.LEASES.claim(db.session, "alive", POLICY) == [first]
    assert outbox.LEASES.settle(db.session, [first], "dead", "sent") == 0
    assert row(db, first).claim == "alive" and row(db, first).attempts == 2


def test_retry_backs_off_then_gives_up(db, app):
    [first] = queue(db, 1)
    policy = Policy(batch_size=1, max_attempts=2, first_retry=timedelta(seconds=30))
    outbox.LEASES.claim(db.session, "a", policy)
    before = utcnow()
    assert outbox.LEASES.retry_or_fail(db.session, first, "a", policy, 1, "451 busy", "failed")
    after = utcnow()
    waiting = row(db, first)
    # Put back for the policy's first retry, counted from the moment of the failure.
    delay = policy.retry_delay(1)
    assert waiting.status == "queued"
    assert before + delay <= waiting.next_attempt_at <= after + delay
    db.session.execute(update(OutboxMessage).values(next_attempt_at=utcnow()))
    db.session.commit()
    outbox.LEASES.claim(db.session, "b", policy)
    gave_up = outbox.LEASES.retry_or_fail(db.session, first, "b", policy, 2, "451 busy", "failed")
    assert gave_up is False
    assert db.session.scalar(select(OutboxMessage.status)) == "failed"


def test_a_row_whose_workers_kept_dying_fails_instead_of_being_taken_again(db, app):
    [first, second] = queue(db, 2)
    policy = Policy(batch_size=2, max_attempts=2)
    gone = utcnow() - timedelta(seconds=1)
    for dead in ("dead-1", "dead-2"):  # killed while holding the rows, twice
        outbox.LEASES.claim(db.session, dead, policy)
        db.session.execute(update(OutboxMessage).values(next_attempt_at=gone))
        db.session.commit()
    # The second row was sent by a third worker meanwhile; the first one never was.
    db.session.execute(
        update(OutboxMessage).where(OutboxMessage.id == second).values(status="sent")
    )
    db.session.commit()

    assert outbox.LEASES.claim(db.session, "alive", policy) == []
    failed = row(db, first)
    assert (failed.status, failed.claim) == ("failed", None)
    assert failed.last_error == "gave up: the worker stopped while on it, 2 times"
    assert row(db, second).status == "sent"

"""The signup queue: the request stores the signup and answers, the worker applies the rules."""

from __future__ import annotations

import re
import sqlite3
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter import signups, suppression
from newsletter.addresses import mailbox_key
from newsletter.models import (
    ConsentAction,
    ConsentEvent,
    MailKind,
    OutboxMessage,
    QueuedSignup,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    SuppressionReason,
    utcnow,
)
from newsletter.subscriptions import ConfirmationLimit

from factories import add_reader, apply_signups, links, signup, text_part

VARYING_HEADERS = {
    "date",
    "x-request-id",
    "retry-after",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
}
# Each page's script nonce is new.
NONCE = re.compile(r"nonce-?[=\"']*[A-Za-z0-9_-]{16,}")


def count(db, model) -> int:  # type: ignore[no-untyped-def]
    db.session.expire_all()
    return db.session.scalar(select(func.count()).select_from(model))


def test_a_signup_waits_in_the_queue_until_a_worker_applies_it(client, db, mailbox, newsletters):
    response = client.post(
        "/subscribe",
        data={"email": "Reader@Example.COM", "newsletter": ["daily", "culture"], "lang": "uk"},
        headers={"User-Agent": "Firefox/140", "Accept-Language": "uk"},
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
    )
    assert response.status_code == 200
    # No worker ran: nothing is decided about the address yet, but the signup is kept.
    assert count(db, Subscriber) == 0
    queued = db.session.scalars(select(QueuedSignup)).one()
    assert queued.email == "Reader@example.com"
    assert queued.ip == "203.0.113.9"
    assert queued.user_agent == "Firefox/140"
    assert queued.locale == "uk"
    assert [text for _id, text in queued.newsletters] == [
        "Daily Briefing: Enter your email to subscribe [Subscribe]",
        "Culture: Enter your email to subscribe [Subscribe]",
    ]
    asked_at = queued.created_at

    # The worker starts: the rules are applied and the mail goes.
    assert apply_signups() == 1
    assert count(db, QueuedSignup) == 0
    subscriber = db.session.scalars(select(Subscriber)).one()
    assert subscriber.email == "Reader@example.com" and subscriber.locale == "uk"
    assert {s.newsletter.slug: s.status for s in subscriber.subscriptions} == {
        "daily": "pending",
        "culture": "pending",
    }
    signed = db.session.scalars(
        select(ConsentEvent).where(ConsentEvent.action == ConsentAction.SIGNUP)
    ).all()
    assert len(signed) == 2
    for event in signed:
        # The evidence is the request's, not the worker's.
        assert (event.ip, event.user_agent, event.created_at) == (
            "203.0.113.9",
            "Firefox/140",
            asked_at,
        )
        assert "Enter your email to subscribe [Subscribe]" in event.text_shown
    (mail,) = mailbox.deliver()
    assert mail["To"] == "Reader@example.com"
    assert len(links(mail, "/confirm/")) == 1


def test_address_suppressed_while_queued_gets_no_mail(client, db, mailbox, newsletters):
    assert signup(client, "gone@example.com", "daily", apply=False).status_code == 200
    suppression.suppress(db.session, "gone@example.com", SuppressionReason.BOUNCED)
    db.session.commit()
    assert mailbox.deliver() == []
    assert count(db, Subscriber) == 0
    assert count(db, OutboxMessage) == 0
    assert count(db, QueuedSignup) == 0


def test_list_archived_while_queued_takes_no_one(client, db, mailbox, newsletters):
    signup(client, "reader@example.com", "daily", "culture", apply=False)
    newsletters[2].archived = True  # culture
    db.session.commit()
    (mail,) = mailbox.deliver()
    assert "Daily Briefing" in text_part(mail) and "Culture" not in text_part(mail)
    assert {s.newsletter.slug for s in db.session.scalars(select(Subscription))} == {"daily"}


def _states(db, newsletters):  # type: ignore[no-untyped-def]
    daily = newsletters[0]
    add_reader(db, daily, "pending@example.com", SubscriptionStatus.PENDING)
    add_reader(db, daily, "confirmed@example.com", SubscriptionStatus.CONFIRMED)
    add_reader(db, daily, "left@example.com", SubscriptionStatus.UNSUBSCRIBED)
    add_reader(db, daily, "bounced@example.com", SubscriptionStatus.CONFIRMED)
    suppression.suppress(db.session, "bounced@example.com", SuppressionReason.BOUNCED)
    suppression.suppress(db.session, "erased@example.com", SuppressionReason.ERASED)
    db.session.commit()


def test_answer_is_the_same_and_decided_by_nothing_about_the_address(
    client, db, mailbox, newsletters
):
    _states(db, newsletters)
    addresses = [
        "new@example.com",
        "pending@example.com",
        "confirmed@example.com",
        "left@example.com",
        "bounced@example.com",
        "erased@example.com",
    ]
    answers = set()
    for address in addresses:
        response = signup(client, address, "daily", apply=False)
        # What differs from one request to the next whoever asks: the date, the request's
        # id, the page's script nonce, and the per-IP limit's count and reset time.
        headers = tuple(
            sorted(
                (k, NONCE.sub("", v))
                for k, v in response.headers
                if k.lower() not in VARYING_HEADERS
            )
        )
        answers.add((response.status_code, NONCE.sub("", response.get_data(as_text=True)), headers))
    assert len(answers) == 1
    # Each answer only queued the signup: the same row, whatever the address.
    assert count(db, QueuedSignup) == len(addresses)
    sent = sorted(m["To"] for m in mailbox.deliver())
    # New, pending, unsubscribed and erased (a new signup is new consent) get a confirmation.
    assert sent == [
        "erased@example.com",
        "left@example.com",
        "new@example.com",
        "pending@example.com",
    ]


def test_two_workers_never_apply_one_signup_twice(client, db, newsletters):
    signup(client, "reader@example.com", "daily", apply=False)
    runner = signups.SignupRunner(ConfirmationLimit())
    with Session(db.engine) as first, Session(db.engine) as second:
        held = signups.LEASES.claim(first, "first-claim", signups.POLICY)
        assert len(held) == 1
        # Another worker finds nothing while the lease holds...
        assert runner.step(second) == 0
        # ...and takes the row over once it has run out (the first worker stalled).
        later = utcnow() + signups.POLICY.lease + timedelta(seconds=1)
        taken = signups.LEASES.claim(second, "second-claim", signups.POLICY, now=later)
        assert taken == held
        runner._apply(second, taken[0], "second-claim")
        # The stalled worker wakes up: its claim is gone, it changes nothing.
        runner._apply(first, held[0], "first-claim")
    assert count(db, Subscriber) == 1
    confirmations = select(func.count()).where(OutboxMessage.kind == MailKind.CONFIRMATION)
    assert db.session.scalar(confirmations) == 1
    signups_recorded = select(func.count()).where(ConsentEvent.action == ConsentAction.SIGNUP)
    assert db.session.scalar(signups_recorded) == 1


@pytest.mark.parametrize(
    ("address", "mailbox"),
    [
        ("victim@example.com", "victim@example.com"),
        ("victim+1@example.com", "victim@example.com"),
        ("victim+news+x@example.com", "victim@example.com"),
        ("v.ictim@example.com", "v.ictim@example.com"),
        ("v.i.c.t.i.m+a@gmail.com", "victim@gmail.com"),
        ("Victim@GoogleMail.com", "victim@gmail.com"),
        ("+tag@example.com", "+tag@example.com"),
    ],
    ids=["plain", "tag", "two-plus", "dots-elsewhere", "gmail-dots-tag", "googlemail", "only-tag"],
)
def test_mailbox_key(address, mailbox):
    assert mailbox_key(address) == mailbox


def test_confirmation_limit_counts_tag_and_dot_forms_as_one(client, db, mailbox, newsletters):
    forms = [
        "victim+1@gmail.com",
        "victim+2@gmail.com",
        "vic.tim@gmail.com",
        "Victim+3@googlemail.com",
        "v.ictim+4@gmail.com",
        "victim@gmail.com",
    ]
    for address in forms:
        assert signup(client, address, "daily").status_code == 200
    mails = mailbox.deliver()
    assert len(mails) == 3  # CONFIRMATIONS_PER_ADDRESS, for the one mailbox
    # Every form is kept as the reader typed it (normalised), and signed up.
    stored = sorted(db.session.scalars(select(Subscriber.email)))
    assert stored == sorted(
        [
            "victim+1@gmail.com",
            "victim+2@gmail.com",
            "vic.tim@gmail.com",
            "Victim+3@googlemail.com",
            "v.ictim+4@gmail.com",
            "victim@gmail.com",
        ]
    )
    # Another mailbox at the same provider has its own limit.
    signup(client, "someone.else@gmail.com", "daily")
    assert len(mailbox.deliver()) == 1


def test_other_domains_keep_their_dots(client, db, mailbox, newsletters):
    for address in ("a.b@example.com", "ab@example.com", "a.b+x@example.com", "a.b+y@example.com"):
        signup(client, address, "daily")
    # a.b@ (with its +tags) is one mailbox, ab@ another: 3 + 1.
    assert len(mailbox.deliver()) == 4


def test_a_signup_that_cannot_be_applied_holds_up_no_other(client, db, mailbox, newsletters):
    signup(client, "first@example.com", "daily", apply=False)
    signup(client, "broken@example.com", "daily", apply=False)
    signup(client, "last@example.com", "daily", apply=False)
    broken = db.session.scalars(
        select(QueuedSignup).where(QueuedSignup.email == "broken@example.com")
    ).one()
    broken.newsletters = [["not a newsletter id", "text"]]
    db.session.commit()
    sent = sorted(m["To"] for m in mailbox.deliver())
    assert sent == ["first@example.com", "last@example.com"]
    db.session.expire_all()
    left = db.session.scalars(select(QueuedSignup)).one()
    # Kept, to be tried again later with back-off, and said why.
    assert left.email == "broken@example.com" and left.status == "queued"
    assert left.attempts == 1 and "ValueError" in left.last_error
    assert left.next_attempt_at > utcnow()


def _holding_the_write_lock(db):  # type: ignore[no-untyped-def]
    """Another process's connection to the SQLite file, in the middle of a write."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's one write lock")
    other = sqlite3.connect(
        db.engine.url.database, timeout=0, isolation_level=None, check_same_thread=False
    )
    other.execute("BEGIN IMMEDIATE")
    return other


def test_a_signup_waits_for_another_writer_and_is_taken(client, db, newsletters):
    other = _holding_the_write_lock(db)
    done = threading.Timer(0.3, other.execute, ("COMMIT",))
    done.start()
    try:
        response = signup(client, "patient@example.com", "daily", apply=False)
    finally:
        done.join()
        other.close()
    assert response.status_code == 200
    emails = db.session.scalars(select(QueuedSignup.email)).all()
    assert emails == ["patient@example.com"]


def test_a_signup_that_cannot_get_the_write_lock_is_told_to_come_back(
    client, db, newsletters, monkeypatch
):
    monkeypatch.setattr(signups, "WAIT_SECONDS", 0.2)
    other = _holding_the_write_lock(db)
    try:
        response = signup(client, "too-late@example.com", "daily", apply=False)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert "briefly unavailable" in response.get_data(as_text=True)
    assert db.session.scalar(select(func.count(QueuedSignup.id))) == 0

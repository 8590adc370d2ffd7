"""Digests: composing, the ledger snapshot, sending over SMTP, retries, pause and cancel."""

from __future__ import annotations

import re
import threading
from collections import Counter
from datetime import timedelta
from email import policy
from email.header import decode_header, make_header
from email.parser import BytesParser

import pytest
from itsdangerous import TimestampSigner
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from newsletter import suppression
from newsletter.digests import compose as digest_mail
from newsletter.digests import progress, states
from newsletter.digests.sender import Throttle
from newsletter.links import Reader
from newsletter.mail.transport import MemoryTransport, SMTPTransport
from newsletter.models import (
    Delivery,
    Digest,
    DigestStatus,
    Item,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
    utcnow,
)

from factories import (
    BASE_URL,
    FakeClock,
    add_item,
    add_reader,
    app_links,
    html_part,
    ledger,
    make_newsletter,
    send_all,
    sender,
    text_part,
)


def test_new_digest_offers_items_since_the_last_one_newest_first(db, daily):
    old = add_item(db, daily, "Old story", hours_ago=30)
    first = states.compose(db.session, daily)
    assert [i.title for i in first.items] == ["Old story"]
    add_reader(db, daily, "reader@example.com")
    states.start(db.session, first)
    newer = add_item(db, daily, "Newer story", hours_ago=0)
    db.session.execute(
        update(Item).where(Item.id == newer.id).values(published_at=utcnow() + timedelta(seconds=1))
    )
    newest = add_item(db, daily, "Newest story", hours_ago=0)
    db.session.execute(
        update(Item)
        .where(Item.id == newest.id)
        .values(published_at=utcnow() + timedelta(seconds=2))
    )
    db.session.commit()
    second = states.compose(db.session, daily)
    assert [i.title for i in second.items] == ["Newest story", "Newer story"]
    assert old not in second.items
    assert second.subject == "Daily Briefing: Newest story"


def test_editor_reorders_and_removes_items(db, daily):
    a, b, c = (add_item(db, daily, t, hours_ago=h) for t, h in (("A", 3), ("B", 2), ("C", 1)))
    digest = states.compose(db.session, daily)
    states.edit(db.session, digest, subject="  Our   week ", intro="Hello.", item_ids=[a.id, c.id])
    assert digest.subject == "Our week"
    assert [i.title for i in digest.items] == ["A", "C"]
    with pytest.raises(states.DigestError, match="subject"):
        states.edit(db.session, digest, subject=" ", intro="", item_ids=[a.id])


def test_snapshot_takes_confirmed_readers_only(db, daily):
    add_item(db, daily, "Story")
    add_reader(db, daily, "one@example.com")
    add_reader(db, daily, "two@example.com")
    add_reader(db, daily, "pending@example.com", SubscriptionStatus.PENDING)
    add_reader(db, daily, "gone@example.com", SubscriptionStatus.UNSUBSCRIBED)
    add_reader(db, daily, "bounced@example.com", SubscriptionStatus.BOUNCED)
    other = make_newsletter("culture")
    add_reader(db, other, "elsewhere@example.com")
    digest = states.compose(db.session, daily)
    assert states.start(db.session, digest) == 2
    assert digest.status == DigestStatus.SENDING
    assert digest.recipients == 2
    assert ledger(db, digest) == {"queued": 2}
    with pytest.raises(states.DigestError):
        states.start(db.session, digest)
    assert ledger(db, digest) == {"queued": 2}


def test_a_digest_without_items_is_not_sent(db, daily):
    add_reader(db, daily, "one@example.com")
    # Every item removed by the editor.
    digest = states.compose(db.session, daily, items=[])
    with pytest.raises(states.DigestError, match="no items"):
        states.start(db.session, digest)
    assert digest.status == DigestStatus.DRAFT


def test_every_reader_gets_one_mail_with_their_own_links(db, client, daily, smtp):
    add_item(db, daily, "Drones shot down", summary="Air defence units intercepted two drones.")
    add_item(db, daily, "Run-off in Moldova", hours_ago=2)
    readers = [add_reader(db, daily, f"reader{n}@example.com") for n in range(5)]
    digest = states.compose(db.session, daily, intro="Good morning.")
    states.start(db.session, digest)

    send_all(db, SMTPTransport("127.0.0.1", smtp.port))

    assert sorted(r.rcpt_tos[0] for r in smtp.received) == sorted(r.email for r in readers)
    assert smtp.connections == 1
    ids = set()
    for received in smtp.received:
        mail = received.message
        assert received.mail_from == "daily@news.example.org"
        assert mail["To"] == received.rcpt_tos[0]
        assert mail["From"] == "Daily Desk <daily@news.example.org>"
        assert mail["Reply-To"] == "desk@news.example.org"
        assert mail["Subject"] == "Daily Briefing: Drones shot down"
        assert mail["List-Id"] == "Daily Briefing <daily.news.example.org>"
        assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert mail["Date"]
        ids.add(mail["Message-ID"])
        unsubscribe = re.fullmatch(r"<(https://[^>]+)>", mail["List-Unsubscribe"]).group(1)
        text, html = text_part(mail), html_part(mail)
        assert unsubscribe in text and f'href="{unsubscribe}"' in html
        assert "Good morning." in text and "Run-off in Moldova" in text
        # CSS is inlined for clients that drop <style>; the responsive rules stay.
        assert re.search(r'<td[^>]*class="item"[^>]*style="[^"]*padding', html)
        assert "@media" in html
        # The one-click URL unsubscribes exactly this reader from this list.
        response = client.post(unsubscribe.removeprefix(BASE_URL))
        assert response.status_code == 200
    assert len(ids) == 5
    db.session.expire_all()
    assert {s.status for s in db.session.scalars(select(Subscription))} == {
        SubscriptionStatus.UNSUBSCRIBED
    }
    db.session.refresh(digest)
    assert digest.status == DigestStatus.SENT
    assert (digest.sent_count, digest.failed_count) == (5, 0)
    assert digest.finished_at is not None


def test_escapes_what_items_say(db, daily, smtp):
    add_item(
        db,
        daily,
        "<script>alert(1)</script>",
        summary='"><img src=x onerror=alert(1)>',
        url='https://news.example.org/a"><script>alert(2)</script>',
    )
    add_reader(db, daily, "one@example.com")
    states.start(db.session, states.compose(db.session, daily, subject="Today"))
    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    html = html_part(smtp.received[0].message)
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;" in html
    assert 'href="https://news.example.org/a%22%3E%3Cscript%3Ealert(2)%3C/script%3E"' in html


def test_only_web_links_are_linked(db, daily, smtp):
    add_item(db, daily, "Trap", url="javascript:alert(1)")
    add_reader(db, daily, "one@example.com")
    states.start(db.session, states.compose(db.session, daily, subject="Today"))
    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    mail = smtp.received[0].message
    assert "javascript:" not in html_part(mail) and "javascript:" not in text_part(mail)


def test_control_characters_in_a_subject_are_dropped(db, daily):
    add_item(db, daily, "Story")
    add_reader(db, daily, "one@example.com")
    digest = states.compose(db.session, daily, subject="Morning\x00 news\x07")
    assert digest.subject == "Morning news"
    states.start(db.session, digest)
    transport = MemoryTransport()
    send_all(db, transport)
    assert [m["Subject"] for m in transport.messages] == ["Morning news"]


def test_subject_with_a_line_break_is_refused(db, daily):
    add_item(db, daily, "Story")
    digest = states.compose(db.session, daily)
    # Whitespace, line breaks included, is folded to single spaces: no header injection.
    states.edit(
        db.session,
        digest,
        subject="Hi\r\nBcc: x@evil.example",
        intro="",
        item_ids=[digest.items[0].id],
    )
    assert digest.subject == "Hi Bcc: x@evil.example"


def test_temporary_refusal_is_retried_later(db, daily, smtp):
    add_item(db, daily, "Story")
    add_reader(db, daily, "one@example.com")
    add_reader(db, daily, "two@example.com")
    digest = states.compose(db.session, daily)
    states.start(db.session, digest)
    smtp.handler.refuse("RCPT", "451 4.7.1 Try again later")

    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    assert len(smtp.received) == 1
    assert ledger(db, digest) == {"sent": 1, "queued": 1}
    retry = db.session.scalar(select(Delivery).where(Delivery.status == "queued"))
    assert retry.attempts == 1 and "451" in retry.last_error
    assert digest.status == DigestStatus.SENDING
    # It waits for its back-off: a worker coming by at once leaves it alone.
    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    assert len(smtp.received) == 1
    assert ledger(db, digest) == {"sent": 1, "queued": 1}

    # Time passes: the row is due again and goes.
    db.session.execute(update(Delivery).values(next_attempt_at=utcnow()))
    db.session.commit()
    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    assert len(smtp.received) == 2
    assert ledger(db, digest) == {"sent": 2}
    db.session.refresh(digest)
    assert digest.status == DigestStatus.SENT


def test_a_reader_whose_workers_kept_dying_fails_and_one_put_back_for_a_retry_goes(db, daily, smtp):
    """Rows held by workers that died every time fail once their attempts are used up; a row a
    worker gave back after a refusal, with the same number of attempts, is still sent."""
    from newsletter.digests import ledger as rows

    add_item(db, daily, "Story")
    add_reader(db, daily, "dying@example.com")
    add_reader(db, daily, "retried@example.com")
    digest = states.compose(db.session, daily)
    states.start(db.session, digest)
    last = rows.POLICY.max_attempts - 1
    dying, retried = db.session.scalars(select(Delivery.id).order_by(Delivery.id)).all()
    past = utcnow() - timedelta(seconds=1)
    # Every worker that took the first row died with it: held, its lease run out.
    db.session.execute(
        update(Delivery)
        .where(Delivery.id == dying)
        .values(status="sending", claim="dead", attempts=rows.POLICY.max_attempts)
    )
    # The second was refused for a while and given back, its attempts counted.
    db.session.execute(
        update(Delivery).where(Delivery.id == retried).values(attempts=last, last_error="451")
    )
    db.session.execute(update(Delivery).values(next_attempt_at=past))
    db.session.commit()

    send_all(db, SMTPTransport("127.0.0.1", smtp.port))

    assert [r.rcpt_tos for r in smtp.received] == [["retried@example.com"]]
    assert ledger(db, digest) == {"failed": 1, "sent": 1}
    failed = db.session.get(Delivery, dying)
    assert failed.last_error.startswith("gave up: the worker stopped while on it")
    db.session.refresh(digest)
    assert digest.status == DigestStatus.SENT


def test_hard_bounce_fails_the_row_and_suppresses_the_address(db, daily, smtp):
    add_item(db, daily, "Story")
    bouncing = add_reader(db, daily, "nobody@example.com")
    other_list = make_newsletter("culture")
    db.session.add(
        Subscription(
            subscriber=bouncing, newsletter=other_list, status=SubscriptionStatus.CONFIRMED
        )
    )
    db.session.commit()
    digest = states.compose(db.session, daily)
    states.start(db.session, digest)
    smtp.handler.refuse("RCPT", "550 5.1.1 No such user")

    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    assert smtp.received == []
    assert ledger(db, digest) == {"failed": 1}
    assert {s.status for s in db.session.scalars(select(Subscription))} == {
        SubscriptionStatus.BOUNCED
    }
    assert db.session.scalar(select(func.count(Suppression.id))) == 1
    db.session.refresh(digest)
    assert (digest.status, digest.failed_count) == (DigestStatus.SENT, 1)


def test_rejected_content_fails_the_row_without_suppressing(db, daily, smtp):
    add_item(db, daily, "Story")
    add_reader(db, daily, "one@example.com")
    digest = states.compose(db.session, daily)
    states.start(db.session, digest)
    smtp.handler.refuse("DATA", "554 5.7.1 Message rejected")
    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    assert ledger(db, digest) == {"failed": 1}
    assert {s.status for s in db.session.scalars(select(Subscription))} == {
        SubscriptionStatus.CONFIRMED
    }
    assert db.session.scalar(select(func.count(Suppression.id))) == 0


def test_mail_server_down_delays_without_losing(db, daily, smtp):
    digest = _started(db, daily, readers=3)
    down = SMTPTransport("127.0.0.1", 1)  # nothing listens there
    send_all(db, down)
    assert ledger(db, digest) == {"queued": 3}
    assert {r.attempts for r in db.session.scalars(select(Delivery))} == {0}
    db.session.execute(update(Delivery).values(next_attempt_at=utcnow()))
    db.session.commit()
    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    assert ledger(db, digest) == {"sent": 3}


def test_pause_resume_and_cancel(db, daily, smtp):
    digest = _started(db, daily, readers=4)
    states.pause(db.session, digest)
    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    assert smtp.received == []
    with pytest.raises(states.DigestError):
        states.pause(db.session, digest)
    states.resume(db.session, digest)
    send_all(db, SMTPTransport("127.0.0.1", smtp.port), rounds=1, batch_size=2)
    assert len(smtp.received) == 2
    states.cancel(db.session, digest)
    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    assert len(smtp.received) == 2
    assert ledger(db, digest) == {"sent": 2, "skipped": 2}
    assert (digest.status, digest.sent_count, digest.skipped_count) == (
        DigestStatus.CANCELLED,
        2,
        2,
    )


def test_reader_who_left_after_the_snapshot_is_skipped(db, daily, smtp):
    add_item(db, daily, "Story")
    add_reader(db, daily, "stays@example.com")
    leaving = add_reader(db, daily, "leaves@example.com")
    digest = states.compose(db.session, daily)
    states.start(db.session, digest)
    leaving.subscriptions[0].status = SubscriptionStatus.UNSUBSCRIBED
    db.session.commit()
    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    assert [r.rcpt_tos for r in smtp.received] == [["stays@example.com"]]
    assert ledger(db, digest) == {"sent": 1, "skipped": 1}


def test_rows_of_a_dead_worker_are_sent_when_the_lease_runs_out(db, daily, smtp):
    digest = _started(db, daily, readers=3)
    dead = sender(SMTPTransport("127.0.0.1", smtp.port))
    with Session(db.engine) as session:
        claimed = dead.claim(session, digest.id, "dead-worker")
    assert len(claimed) == 3
    # While the lease runs, nobody else takes them.
    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    assert smtp.received == []
    db.session.execute(update(Delivery).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    assert len(smtp.received) == 3
    assert ledger(db, digest) == {"sent": 3}


def test_scheduled_digest_starts_when_its_time_comes(db, daily, smtp):
    add_item(db, daily, "Story")
    add_reader(db, daily, "one@example.com")
    digest = states.compose(db.session, daily)
    states.schedule(db.session, digest, utcnow() + timedelta(hours=1))
    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    assert smtp.received == []
    db.session.execute(update(Digest).values(scheduled_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    assert len(smtp.received) == 1
    db.session.refresh(digest)
    assert digest.status == DigestStatus.SENT


def test_progress_counts(db, daily, smtp):
    digest = _started(db, daily, readers=3)
    before = progress.progress(db.session, digest)
    assert (before.queued, before.sent, before.finished) == (3, 0, False)
    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    after = progress.progress(db.session, digest).as_json(utcnow())
    assert after["sent"] == 3 and after["queued"] == 0 and after["finished"] is True


def test_throttle_spaces_messages():
    clock = FakeClock()
    throttle = Throttle(4, clock)
    for _ in range(5):
        throttle.wait(None)
    assert clock.slept == [0.25, 0.25, 0.25, 0.25]


def test_test_copy_goes_to_the_editor_only(db, daily, mailbox):
    add_item(db, daily, "Story")
    add_reader(db, daily, "reader@example.com")
    digest = states.compose(db.session, daily)
    states.send_test(db.session, digest, "editor@news.example.org")
    sent = mailbox.deliver()
    assert [m["To"] for m in sent] == ["editor@news.example.org"]
    assert sent[0]["Subject"] == "[Test] Daily Briefing: Story"
    assert "Story" in text_part(sent[0])
    assert digest.status == DigestStatus.DRAFT
    assert ledger(db, digest) == {}


@pytest.fixture(params=["rsa", "ed25519"])
def dkim_key(request, tmp_path):  # type: ignore[no-untyped-def]
    from newsletter.mail.dkim import Signer, generate

    pem, name, txt = generate("digest", "news.example.org", request.param)
    return Signer.from_pem(pem, "digest", "news.example.org"), name, txt


def test_digest_mail_is_dkim_signed_and_verifies(db, daily, dkim_key):
    import dkim as dkimpy

    from newsletter.mail.transport import MemoryTransport

    signer, name, txt = dkim_key
    add_item(db, daily, "Drones shot down", summary="Air  defence units\tintercepted two drones.  ")
    add_reader(db, daily, "one@example.com")
    add_reader(db, daily, "two@example.com")
    digest = states.compose(db.session, daily, intro="Good   morning.  \n\nTwo   spaces.")
    states.start(db.session, digest)
    transport = MemoryTransport()
    digest_sender = sender(transport, signer=signer)
    with Session(db.engine) as session:
        while digest_sender.step(session):
            pass
    assert len(transport.raw) == 2

    def dns(query: bytes, timeout: int = 5) -> bytes | None:
        return txt.encode() if query == f"{name}.".encode() else None

    for data in transport.raw:
        assert data.startswith(b"DKIM-Signature:")
        assert dkimpy.verify(data, dnsfunc=dns)
        tags = data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b"").lower()
        for header in (b"from", b"subject", b"date", b"message-id", b"list-id"):
            assert header in tags
        assert b"list-unsubscribe:list-unsubscribe" in tags
        assert b"list-unsubscribe-post" in tags
        # A changed header, or a changed link in the body, breaks the signature.
        forged = data.replace(b"Subject: Daily Briefing", b"Subject: Daily Briefinf", 1)
        assert forged != data and not dkimpy.verify(forged, dnsfunc=dns)
        unsubscribe = re.search(rb"List-Unsubscribe: <([^>]+)>", data).group(1)
        other = data.replace(unsubscribe[-10:], b"0123456789")
        assert other != data and not dkimpy.verify(other, dnsfunc=dns)


def test_mailto_unsubscribe_only_when_configured(app, db, daily):
    from newsletter.mail.transport import MemoryTransport

    add_item(db, daily, "Story")
    add_reader(db, daily, "one@example.com")
    app.config["UNSUBSCRIBE_MAILTO"] = "unsubscribe@news.example.org"
    states.start(db.session, states.compose(db.session, daily))
    transport = MemoryTransport()
    send_all(db, transport)
    value = transport.messages[0]["List-Unsubscribe"]
    assert re.fullmatch(
        r"<https://news\.example\.org/unsubscribe/[^>]+>, "
        # The reader's own address for this list: a mail to it takes them off the list.
        r"<mailto:unsubscribe\+u[0-9]+x[0-9]+-[a-z2-7]{16}@news\.example\.org\?subject=unsubscribe>",
        value,
    )


class _During(MemoryTransport):
    """Keeps what it is given, and does `action` once, right after the `at`-th message."""

    def __init__(self, at, action):  # type: ignore[no-untyped-def]
        super().__init__()
        self.at, self.action = at, action

    def send_raw(self, sender, recipients, data):  # type: ignore[no-untyped-def]
        super().send_raw(sender, recipients, data)
        if len(self.raw) == self.at:
            self.action()


def _started(db, daily, readers):  # type: ignore[no-untyped-def]
    """A digest of one story to readers r0@example.com, r1@…, started: its rows queued."""
    add_item(db, daily, "Story")
    for n in range(readers):
        add_reader(db, daily, f"r{n}@example.com")
    digest = states.compose(db.session, daily)
    states.start(db.session, digest)
    return digest


def _cancel(db, digest_id):  # type: ignore[no-untyped-def]
    """An editor's cancel, from another session (the admin's)."""
    with Session(db.engine) as session:
        states.cancel(session, session.get(Digest, digest_id))


@pytest.mark.parametrize(
    ("status_every", "sent"), [(0, 1), (3600, 4)], ids=["seen-at-once", "seen-after-the-batch"]
)
def test_cancel_while_a_worker_sends_keeps_true_figures(db, daily, status_every, sent):
    digest = _started(db, daily, readers=4)
    transport = _During(1, lambda: _cancel(db, digest.id))

    send_all(db, transport, status_every=status_every)

    assert len(transport.raw) == sent
    expected = {"sent": sent, "skipped": 4 - sent} if sent < 4 else {"sent": 4}
    assert ledger(db, digest) == expected
    state = progress.progress(db.session, digest)
    assert (state.status, state.sent, state.skipped, state.queued) == (
        DigestStatus.CANCELLED,
        sent,
        4 - sent,
        0,
    )


def _complain(db, address):  # type: ignore[no-untyped-def]
    """A reader's complaint recorded by another process (the bounce ingest)."""
    with Session(db.engine) as session:
        suppression.suppress(session, address, SuppressionReason.COMPLAINED)
        session.commit()


@pytest.mark.parametrize(
    ("status_every", "mailed"), [(0, 3), (3600, 4)], ids=["seen-at-once", "seen-after-the-batch"]
)
def test_a_reader_who_complains_while_the_batch_goes_is_not_mailed(db, daily, status_every, mailed):
    digest = _started(db, daily, readers=4)
    transport = _During(1, lambda: _complain(db, "r2@example.com"))

    send_all(db, transport, status_every=status_every)

    mailed_to = [to for _, [to] in transport.envelopes]
    assert len(mailed_to) == mailed
    if mailed == 3:
        assert "r2@example.com" not in mailed_to
        assert ledger(db, digest) == {"sent": 3, "skipped": 1}
        skipped = db.session.scalar(select(Delivery.last_error).where(Delivery.status == "skipped"))
        assert skipped == "reader complained"


def test_the_reader_next_in_line_who_complains_as_a_mail_goes_is_not_mailed(db, daily):
    """Read again just before their own turn: the very next reader is skipped too."""
    digest = _started(db, daily, readers=3)
    transport = _During(1, lambda: _complain(db, "r1@example.com"))

    send_all(db, transport, status_every=0)

    assert [to for _, [to] in transport.envelopes] == ["r0@example.com", "r2@example.com"]
    assert ledger(db, digest) == {"sent": 2, "skipped": 1}


class _FaultFor(MemoryTransport):
    """Raises an error that is no server's answer for one address."""

    def __init__(self, address):  # type: ignore[no-untyped-def]
        super().__init__()
        self.address, self.closed = address, 0

    def send_raw(self, sender, recipients, data):  # type: ignore[no-untyped-def]
        if self.address in recipients:
            raise UnicodeError("a fault of ours")
        super().send_raw(sender, recipients, data)

    def close(self) -> None:
        self.closed += 1


def test_a_fault_of_our_own_for_one_reader_retries_that_reader_later(db, daily):
    digest = _started(db, daily, readers=3)
    transport = _FaultFor("r1@example.com")

    send_all(db, transport)

    assert sorted(to for _, [to] in transport.envelopes) == ["r0@example.com", "r2@example.com"]
    assert ledger(db, digest) == {"sent": 2, "queued": 1}
    waiting = db.session.scalars(select(Delivery).where(Delivery.status == "queued")).one()
    assert (waiting.attempts, waiting.last_error) == (1, "UnicodeError: a fault of ours")
    assert waiting.next_attempt_at > utcnow()
    assert transport.closed >= 1


def test_cancel_then_a_stopped_worker_leaves_nothing_waiting(db, daily):
    digest = _started(db, daily, readers=4)
    stop = threading.Event()

    def cancel_then_ctrl_c() -> None:
        _cancel(db, digest.id)
        stop.set()

    with Session(db.engine) as session:
        sender(_During(1, cancel_then_ctrl_c)).step(session, stop)

    # Put back by the stopping worker, the rows would wait in a cancelled digest for ever.
    assert ledger(db, digest) == {"sent": 1, "skipped": 3}
    state = progress.progress(db.session, digest)
    assert (state.sent, state.skipped) == (1, 3)


def test_cancel_skips_the_rows_of_a_worker_that_died_holding_them(db, daily):
    digest = _started(db, daily, readers=3)
    with Session(db.engine) as session:
        assert len(sender(MemoryTransport()).claim(session, digest.id, "dead-worker")) == 3

    states.cancel(db.session, digest)

    # Nobody works a cancelled digest: rows left `sending` would stay so.
    assert ledger(db, digest) == {"skipped": 3}
    assert progress.progress(db.session, digest).skipped == 3


def test_a_worker_that_lost_its_lease_stops_sending(db, daily):
    digest = _started(db, daily, readers=4)
    other = MemoryTransport()

    def another_worker_takes_over() -> None:
        with Session(db.engine) as session:
            sender(other).step(session)

    # A lease of nothing: as if this worker had stalled past its lease after its first message.
    stalled = _During(1, another_worker_takes_over)
    with Session(db.engine) as session:
        sender(stalled, lease=timedelta(0)).send_batch(session, digest.id)

    copies = Counter(recipients[0] for _, recipients in stalled.envelopes + other.envelopes)
    assert set(copies) == {f"r{n}@example.com" for n in range(4)}
    # Only the message in flight when the lease ran out went twice.
    assert sorted(copies.values()) == [1, 1, 1, 2]
    assert ledger(db, digest) == {"sent": 4}


def test_digest_mail_in_ukrainian_decodes_to_what_was_rendered(db, monkeypatch):
    # The links are signed with the time: held still, the mail's links are the rendered ones.
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: 1_800_000_000)
    newsletter = make_newsletter(
        "explaining-ukraine",
        "Пояснюємо Україну з Катериною Цуркан 🇺🇦",
        from_name="Редакція «Київ Індепендент» 📰",
        from_address="desk@news.example.org",
    )
    add_item(
        db,
        newsletter,
        "Дрони збито над Києвом — " + "повний огляд подій " * 8,
        summary="ППО перехопила 59 зі 116 дронів 😀 " * 15,
        url="https://news.example.org/статті/1?a=1&b=ü",
    )
    add_item(db, newsletter, "Run-off", url="https://news.example.org/" + "x" * 200, hours_ago=2)
    reader = add_reader(db, newsletter, "reader@example.com")
    subject = "Дайджест: " + "новини дня 🎉 " * 14 + "кінець"
    digest = states.compose(
        db.session, newsletter, subject=subject, intro="Доброго ранку.\n\nДругий абзац — ось."
    )
    content = digest_mail.Content(newsletter, digest.subject, digest.intro, digest.items)
    prepared = digest_mail.PreparedDigest(content, digest.message_key, app_links())
    unsubscribe, preferences = prepared.links.urls(Reader(reader.id, reader.token_key))
    text, html = digest_mail.render(content, unsubscribe, preferences)

    data = prepared.message(1, reader.email, Reader(reader.id, reader.token_key))

    head, body = data.split(b"\r\n\r\n", 1)
    assert max(len(line) for line in body.split(b"\r\n")) <= 76
    encoded_words = re.findall(rb"=\?[^?]+\?[bq]\?[^?]*\?=", head, re.IGNORECASE)
    assert encoded_words and max(len(word) for word in encoded_words) <= 75
    for reading in (policy.default, policy.strict, policy.compat32):
        mail = BytesParser(policy=reading).parsebytes(data)
        plain, rich = (part for part in mail.walk() if not part.is_multipart())
        assert plain.get_payload(decode=True).decode().replace("\r\n", "\n") == text
        assert rich.get_payload(decode=True).decode().replace("\r\n", "\n") == html
    assert BytesParser(policy=policy.default).parsebytes(data)["Subject"] == subject
    # Names read as RFC 2047 says (the email package's default policy puts a space between
    # two encoded words of a display name where the RFC and mail programs put none).
    mail = BytesParser(policy=policy.compat32).parsebytes(data)
    decoded = {name: str(make_header(decode_header(mail[name]))) for name in mail.keys()}
    assert decoded["Subject"] == subject
    assert decoded["From"] == "Редакція «Київ Індепендент» 📰 <desk@news.example.org>"
    assert decoded["List-Id"] == (
        "Пояснюємо Україну з Катериною Цуркан 🇺🇦 <explaining-ukraine.news.example.org>"
    )


def test_test_copy_of_a_digest_with_the_longest_subject_goes(db, daily, mailbox):
    add_item(db, daily, "Story")
    digest = states.compose(db.session, daily, subject="Ї" * 300)
    states.send_test(db.session, digest, "editor@news.example.org")
    assert [m["Subject"] for m in mailbox.deliver()] == ["[Test] " + "Ї" * 300]


@pytest.mark.parametrize(
    ("command", "reply"),
    [("MAIL", "550 5.7.1 Sender not allowed to relay"), ("RCPT", "421 4.3.2 Shutting down")],
    ids=["sender-refused", "server-closing"],
)
def test_server_refusing_us_delays_the_batch_and_blames_no_reader(db, daily, smtp, command, reply):
    digest = _started(db, daily, readers=3)
    smtp.handler.refuse(command, reply)
    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    assert smtp.received == []
    assert ledger(db, digest) == {"queued": 3}
    rows = db.session.scalars(select(Delivery)).all()
    assert {r.attempts for r in rows} == {0}
    assert all(r.next_attempt_at > utcnow() for r in rows)
    assert {s.status for s in db.session.scalars(select(Subscription))} == {
        SubscriptionStatus.CONFIRMED
    }
    db.session.execute(update(Delivery).values(next_attempt_at=utcnow()))
    db.session.commit()
    send_all(db, SMTPTransport("127.0.0.1", smtp.port))
    assert ledger(db, digest) == {"sent": 3}


def test_a_story_that_arrives_late_is_in_the_next_digest(db, daily):
    add_item(db, daily, "First")
    add_reader(db, daily, "r@example.com")
    first = states.compose(db.session, daily)
    states.start(db.session, first)
    # Published two hours ago, but it reached the service only now, after that digest.
    late = add_item(db, daily, "Late", hours_ago=2)
    assert late.created_at > first.created_at
    assert [i.title for i in states.new_items(db.session, daily)] == ["Late"]


def test_worker_survives_a_failing_digest_step(app, db, daily, caplog, mailbox):
    from newsletter import worker

    class Broken:
        def step(self, session, stop):  # type: ignore[no-untyped-def]
            raise RuntimeError("database is locked")

    runners = [("digest sending", Broken()), ("outbox", mailbox.runner())]
    process = worker.Worker(lambda: db.session, runners, mailbox.transport)
    assert process.run(drain=True) == {"digest sending": 0, "outbox": 0}
    assert "digest sending failed" in caplog.text


def test_a_throttled_row_is_still_leased_when_it_goes(db, daily):
    from newsletter.mail.transport import MemoryTransport

    add_item(db, daily, "Story")
    add_reader(db, daily, "one@example.com")
    add_reader(db, daily, "two@example.com")
    states.start(db.session, states.compose(db.session, daily))
    # The worker's clocks, moved on only by its throttle's waits.
    clock = FakeClock()

    class Checking(MemoryTransport):
        def send_raw(self, sender, recipients, data):  # type: ignore[no-untyped-def]
            with db.engine.connect() as conn:
                leases = conn.scalars(
                    select(Delivery.next_attempt_at).where(Delivery.status == "sending")
                ).all()
            # Another worker could take a row whose lease has run out: it must not go here.
            assert leases and all(lease > clock.now() for lease in leases)
            super().send_raw(sender, recipients, data)

    transport = Checking()
    # One message every 100 s, a lease of 60 s: each row waits longer than its lease.
    send_all(db, transport, rate=0.01, lease=timedelta(seconds=60), clock=clock)
    assert len(transport.raw) == 2


def test_marks_leave_pooled_connections_as_they_found_them(db, daily):
    from newsletter.leases import autocommit

    with Session(db.engine) as session, autocommit(session) as marks:
        assert marks.get_execution_options()["isolation_level"] == "AUTOCOMMIT"
    with db.engine.connect() as conn:
        assert conn.get_isolation_level() != "AUTOCOMMIT"


def test_marks_wait_for_the_wal_on_disk(db, daily, postgresql_only):
    from newsletter.leases import autocommit

    # A mark the server forgot in a crash would send that reader's mail again.
    with Session(db.engine) as session, autocommit(session) as marks:
        assert marks.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"


def test_a_digest_whose_mail_cannot_be_built_fails_its_rows_and_finishes(db, daily):
    from newsletter.mail.transport import MemoryTransport

    add_item(db, daily, "Story")
    add_reader(db, daily, "one@example.com")
    add_reader(db, daily, "two@example.com")
    digest = states.compose(db.session, daily)
    states.start(db.session, digest)
    # Saved before senders were checked: a reply-to that cannot go into a header.
    daily.reply_to = "réponse@example.org"
    db.session.commit()

    transport = MemoryTransport()
    send_all(db, transport)

    assert transport.messages == []
    assert ledger(db, digest) == {"failed": 2}
    db.session.refresh(digest)
    assert digest.status == DigestStatus.SENT and digest.failed_count == 2
    assert "cannot be built" in digest.error
    failed = db.session.scalars(select(Delivery.last_error)).all()
    assert all(error.startswith("cannot build:") for error in failed)


def test_signed_digest_goes_to_everyone_when_the_worker_commits_mid_batch(db, daily, dkim_key):
    """Mails are built and signed in threads: they must not touch the worker's session, which
    has no application in those threads and expires what it loaded at every commit."""
    signer, _, _ = dkim_key
    digest = _started(db, daily, readers=12)
    transport = MemoryTransport()
    # status_every=0: the digest's status is read, and the session committed, before each mail.
    digest_sender = sender(transport, signer=signer, status_every=0)
    # The worker's own session (Flask-SQLAlchemy's), as `newsletter worker` passes it.
    while digest_sender.step(db.session):
        pass

    assert ledger(db, digest) == {"sent": 12}
    assert sorted(to for _, [to] in transport.envelopes) == sorted(
        f"r{n}@example.com" for n in range(12)
    )


def test_each_mail_is_marked_sent_before_the_next_one_is_accepted(db, daily, smtp_pipelining):
    """Marks are made while the next message's envelope goes; the message itself waits for them,
    so a worker killed at any moment leaves at most one accepted mail unmarked."""
    for n in range(30):
        add_reader(db, daily, f"r{n}@example.com")
    add_item(db, daily, "Story")
    digest = states.compose(db.session, daily)
    states.start(db.session, digest)
    handler = smtp_pipelining.handler
    accept = handler.handle_DATA
    marked_before: list[int] = []
    engine = db.engine  # the server's thread has no application context

    async def counting(server, session, envelope):  # type: ignore[no-untyped-def]
        with engine.connect() as conn:
            marked_before.append(
                conn.scalar(
                    select(func.count()).select_from(Delivery).where(Delivery.status == "sent")
                )
            )
        return await accept(server, session, envelope)

    handler.handle_DATA = counting
    transport = SMTPTransport("127.0.0.1", smtp_pipelining.port)
    send_all(db, transport)

    assert ledger(db, digest) == {"sent": 30}
    assert marked_before == list(range(30))


def test_a_reader_who_leaves_after_their_envelope_went_ahead_gets_nothing(
    db, daily, smtp_pipelining
):
    """The second reader's envelope goes with the first mail; they unsubscribe as it is
    accepted: their turn is skipped, and the connection that held their envelope is dropped
    without a message, so only the first and third readers get the digest."""
    digest = _started(db, daily, readers=3)
    leaving = db.session.scalar(select(Subscriber.id).where(Subscriber.email == "r1@example.com"))
    handler = smtp_pipelining.handler
    accept = handler.handle_DATA
    engine = db.engine  # the server's thread has no application context

    async def leave(server, session, envelope):  # type: ignore[no-untyped-def]
        with engine.begin() as conn:
            conn.execute(
                update(Subscription)
                .where(Subscription.subscriber_id == leaving)
                .values(status=SubscriptionStatus.UNSUBSCRIBED)
            )
        return await accept(server, session, envelope)

    handler.handle_DATA = leave
    # status_every=0: the readers' statuses are read again before each mail.
    send_all(db, SMTPTransport("127.0.0.1", smtp_pipelining.port), status_every=0)

    assert ledger(db, digest) == {"sent": 2, "skipped": 1}
    assert [r.rcpt_tos for r in smtp_pipelining.received] == [
        ["r0@example.com"],
        ["r2@example.com"],
    ]


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelining"])
def test_a_line_that_starts_with_a_dot_arrives_as_written(db, daily, pipelining):
    """Over SMTP a digest mail goes dot-stuffed, most of it stuffed once per digest; the
    server takes the stuffing off, and the reader reads the line as the editor wrote it."""
    from smtp_server import running_smtp

    add_reader(db, daily, "r0@example.com")
    add_item(db, daily, "Story")
    intro = "Hello.\n.NET readers, this line starts with a dot.\n..and this one with two"
    digest = states.compose(db.session, daily, intro=intro)
    states.start(db.session, digest)
    with running_smtp(pipelining=pipelining) as server:
        kept: list[bytes] = []
        accept = server.handler.handle_DATA

        async def keeping(smtp_server, session, envelope):  # type: ignore[no-untyped-def]
            kept.append(envelope.content)
            return await accept(smtp_server, session, envelope)

        server.handler.handle_DATA = keeping
        send_all(db, SMTPTransport("127.0.0.1", server.port))

    assert ledger(db, digest) == {"sent": 1}
    [received] = server.received
    text = received.message.get_body(preferencelist=("plain",)).get_content()
    assert "\n.NET readers, this line starts with a dot.\n..and this one with two\n" in text
    [content] = kept
    assert b"\r\n.NET readers" in content and b"\r\n..and this one" in content


def test_a_mark_lost_with_its_database_connection_sends_only_that_mail_twice(
    db, daily, smtp_pipelining, postgresql_only
):
    """The connection that marks rows sent dies while the fourth mail goes: the batch stops
    before the fifth, its rows come back when the lease runs out, and only the fourth reader,
    whose mail was accepted but never marked, gets a second copy."""
    from sqlalchemy import text

    digest = _started(db, daily, readers=10)
    addresses = [f"r{n}@example.com" for n in range(10)]
    handler = smtp_pipelining.handler
    accept = handler.handle_DATA
    engine = db.engine  # the server's thread has no application context
    seen = []

    async def cutting(server, session, envelope):  # type: ignore[no-untyped-def]
        seen.append(envelope)
        if len(seen) == 4:
            with engine.connect() as conn:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        " AND query LIKE 'UPDATE delivery SET status%'"
                    )
                )
        return await accept(server, session, envelope)

    handler.handle_DATA = cutting
    transport = SMTPTransport("127.0.0.1", smtp_pipelining.port)
    with pytest.raises(Exception, match="terminating connection"):
        send_all(db, transport)
    transport.close()
    assert ledger(db, digest) == {"sent": 3, "sending": 7}

    # The lease runs out; the next worker takes the rows again.
    db.session.execute(update(Delivery).values(next_attempt_at=func.now()))
    db.session.commit()
    send_all(db, SMTPTransport("127.0.0.1", smtp_pipelining.port))

    assert ledger(db, digest) == {"sent": 10}
    copies = Counter(r.rcpt_tos[0] for r in smtp_pipelining.received)
    assert copies == Counter({**dict.fromkeys(addresses, 1), addresses[3]: 2})

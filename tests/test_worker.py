"""The outbox worker over real SMTP: sends once, waits out outages, backs off, gives up on 5xx."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter import subscribers, suppression
from newsletter.cli import worker
from newsletter.leases import Policy
from newsletter.mail import outbox
from newsletter.mail.transport import SMTPTransport
from newsletter.models import (
    OutboxMessage,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    SuppressionReason,
    utcnow,
)
from newsletter.worker import Worker

from factories import Mailbox, links, signup
from smtp_server import CREDENTIALS, HOST, USERNAME, SMTPServer, free_port, running_smtp


@pytest.fixture
def app_config(request: pytest.FixtureRequest) -> dict[str, object]:
    """Parametrize with "smtp" (the test server) or "smtp-down" (a closed port) to set SMTP_URL."""
    mode = getattr(request, "param", None)
    if mode == "smtp":
        return {"SMTP_URL": request.getfixturevalue("smtp").url}
    if mode == "smtp-down":
        return {"SMTP_URL": f"smtp://{HOST}:{free_port()}"}
    return {}


@pytest.fixture
def transport(smtp: SMTPServer) -> Iterator[SMTPTransport]:
    opened = SMTPTransport(HOST, smtp.port, timeout=5)
    yield opened
    opened.close()


def outbox_worker(db, transport: Any, stop: Any = None, **policy: Any) -> Worker:  # type: ignore[no-untyped-def]
    """A worker with the outbox's runner only, sending with this transport."""
    runner = Mailbox(transport).runner(policy=replace(outbox.POLICY, **policy))
    options = {"stop": stop} if stop is not None else {}
    return Worker(lambda: db.session, [("outbox", runner)], transport, **options)


def work(db, transport: Any, **policy: Any) -> int:  # type: ignore[no-untyped-def]
    """One `newsletter worker --drain`: send everything due, return how many rows it handled."""
    return outbox_worker(db, transport, **policy).run(drain=True)["outbox"]


def only_row(db) -> OutboxMessage:  # type: ignore[no-untyped-def]
    return db.session.scalars(select(OutboxMessage)).one()


def make_due(db) -> None:  # type: ignore[no-untyped-def]
    """Move the clock past every row's next attempt (or lease), without sleeping."""
    for row in db.session.scalars(select(OutboxMessage)):
        row.next_attempt_at = utcnow() - timedelta(seconds=1)
    db.session.commit()


def test_signup_confirmation_goes_out_over_smtp(client, db, newsletters, smtp, transport):
    signup(client, "reader@example.com", "daily")
    assert only_row(db).status == "queued"

    assert work(db, transport) == 1

    [received] = smtp.received
    assert received.rcpt_tos == ["reader@example.com"]
    assert received.mail_from == "daily@news.example.org"
    assert received.message["Subject"] == "Please confirm your subscription to Daily Briefing"
    assert len(links(received.message, "/confirm/")) == 1
    row = only_row(db)
    assert row.status == "sent"
    assert row.sent_at is not None and row.sent_at <= utcnow()
    assert row.attempts == 1 and row.last_error is None
    assert received.message["Message-ID"] == f"<{row.message_key}@news.example.org>"


def test_a_batch_shares_one_connection_which_is_closed_when_done(
    client, db, newsletters, smtp, transport
):
    for n in range(3):
        signup(client, f"reader{n}@example.com", "culture")

    assert work(db, transport) == 3

    assert sorted(r.rcpt_tos[0] for r in smtp.received) == [
        "reader0@example.com",
        "reader1@example.com",
        "reader2@example.com",
    ]
    assert smtp.connections == 1
    assert smtp.handler.quits == 1
    assert set(db.session.scalars(select(OutboxMessage.status))) == {"sent"}


def test_smtp_outage_delays_mail_and_loses_none(client, db, newsletters):
    port = free_port()
    signup(client, "reader@example.com", "daily")

    before = utcnow()
    assert work(db, SMTPTransport(HOST, port, timeout=5)) == 1
    row = only_row(db)
    assert row.status == "queued" and row.sent_at is None
    # The server never saw the message: the outage does not use up its attempts.
    assert row.attempts == 0
    assert "ConnectionRefusedError" in row.last_error
    assert row.next_attempt_at >= before + outbox.POLICY.first_retry
    # Not due yet: the next pass leaves it alone.
    assert work(db, SMTPTransport(HOST, port, timeout=5)) == 0

    # An outage longer than every retry the message has: still queued, nothing lost.
    for _ in range(outbox.POLICY.max_attempts + 3):
        make_due(db)
        assert work(db, SMTPTransport(HOST, port, timeout=5)) == 1
    assert only_row(db).status == "queued"

    with running_smtp(port=port) as smtp:
        transport = SMTPTransport(HOST, port, timeout=5)
        assert work(db, transport) == 0
        make_due(db)
        assert work(db, transport) == 1
        make_due(db)
        assert work(db, transport) == 0
        assert [r.rcpt_tos for r in smtp.received] == [["reader@example.com"]]

    row = only_row(db)
    assert row.status == "sent" and row.sent_at is not None
    assert row.attempts == 1 and row.last_error is None


def test_permanent_refusal_fails_the_mail_for_good(client, db, newsletters, smtp, transport):
    smtp.handler.refuse("RCPT", "550 5.1.1 No such user here")
    signup(client, "reader@example.com", "daily")

    assert work(db, transport) == 1
    row = only_row(db)
    assert row.status == "failed" and row.sent_at is None
    assert row.last_error.startswith("550") and "No such user here" in row.last_error

    make_due(db)
    assert work(db, transport) == 0
    assert smtp.received == []
    assert only_row(db).status == "failed"


def test_temporary_refusals_back_off_longer_each_time(client, db, newsletters, smtp, transport):
    smtp.handler.refuse("RCPT", "451 4.2.0 Mailbox busy", "451 4.2.0 Mailbox busy")
    signup(client, "reader@example.com", "daily")

    waits = []
    for attempt in (1, 2):
        before = utcnow()
        assert work(db, transport) == 1
        after = utcnow()
        row = only_row(db)
        assert row.status == "queued" and row.attempts == attempt
        assert row.last_error.startswith("451")
        delay = outbox.POLICY.retry_delay(attempt)
        assert before + delay <= row.next_attempt_at <= after + delay
        waits.append(delay)
        make_due(db)
    first = outbox.POLICY.first_retry
    assert waits == [first, 2 * first]  # the back-off doubles

    assert work(db, transport) == 1
    assert only_row(db).status == "sent"
    assert len(smtp.received) == 1


def test_retry_delay_doubles_up_to_its_cap():
    settings = outbox.POLICY
    first = settings.first_retry
    assert [settings.retry_delay(n) for n in range(1, 6)] == [
        first,
        2 * first,
        4 * first,
        8 * first,
        16 * first,
    ]
    assert settings.retry_delay(9) == timedelta(hours=2)
    assert settings.retry_delay(12) == timedelta(hours=2)


def test_retry_delay_stays_capped_for_mta_like_retry_windows():
    # Five days of retries, as mail servers do, takes some 60 attempts at the two-hour cap.
    settings = Policy(max_attempts=80)
    assert settings.retry_delay(60) == timedelta(hours=2)
    assert settings.retry_delay(1000) == timedelta(hours=2)


def test_temporary_failures_give_up_after_max_attempts(client, db, newsletters, smtp, transport):
    smtp.handler.refuse("RCPT", "451 4.2.0 Mailbox busy", "451 4.2.0 Mailbox busy")
    signup(client, "reader@example.com", "daily")

    assert work(db, transport, max_attempts=2) == 1
    assert only_row(db).status == "queued"
    make_due(db)
    assert work(db, transport, max_attempts=2) == 1
    row = only_row(db)
    assert row.status == "failed" and row.attempts == 2
    assert row.last_error.startswith("451")


def test_mail_held_by_a_crashed_worker_is_sent_once_its_lease_expires(
    client, db, newsletters, smtp, transport
):
    signup(client, "reader@example.com", "daily")
    row_id = only_row(db).id
    settings = outbox.POLICY

    # A worker claims the row, then dies before sending it.
    before = utcnow()
    assert outbox.LEASES.claim(db.session, "dead-worker", settings) == [row_id]
    row = only_row(db)
    assert row.status == "queued" and row.attempts == 1
    assert row.next_attempt_at >= before + settings.lease

    # While the lease runs, another worker keeps its hands off.
    assert work(db, transport) == 0
    assert smtp.received == []

    make_due(db)
    assert work(db, transport) == 1
    assert len(smtp.received) == 1
    row = only_row(db)
    assert row.status == "sent" and row.attempts == 2


def test_a_slow_worker_whose_lease_ran_out_does_not_send_what_another_took(
    client, db, newsletters, smtp, transport
):
    """Only the message in flight when the lease ran out can go twice; the rest go once."""
    for n in range(3):
        signup(client, f"reader{n}@example.com", "daily")

    class Slow:
        """Stalls on its first message long enough for another worker to take over."""

        def __init__(self) -> None:
            self.stalled = False

        def send(self, message, sender=None) -> None:  # type: ignore[no-untyped-def]
            if not self.stalled:
                self.stalled = True
                make_due(db)  # the lease runs out while this send hangs
                work(db, SMTPTransport(HOST, smtp.port, timeout=5))
            transport.send(message, sender)

        def close(self) -> None:
            transport.close()

    assert work(db, Slow()) == 3
    received = [r.rcpt_tos[0] for r in smtp.received]
    assert sorted(set(received)) == [
        "reader0@example.com",
        "reader1@example.com",
        "reader2@example.com",
    ]
    assert len(received) == 4  # the stalled message twice, the other two once each
    assert set(db.session.scalars(select(OutboxMessage.status))) == {"sent"}


class MidBatch:
    """Sends through `transport`, and after the first message does `then` (from elsewhere)."""

    def __init__(self, transport: SMTPTransport, then: Callable[[], None]) -> None:
        self.transport, self.then, self.done = transport, then, False

    def send(self, message, sender=None) -> None:  # type: ignore[no-untyped-def]
        self.transport.send(message, sender)
        if not self.done:
            self.done = True
            self.then()

    def close(self) -> None:
        self.transport.close()


def three_signups(client, db) -> list[int]:  # type: ignore[no-untyped-def]
    for n in range(3):
        signup(client, f"reader{n}@example.com", "daily")
    return list(db.session.scalars(select(OutboxMessage.id).order_by(OutboxMessage.id)))


def test_a_row_another_worker_took_mid_batch_is_not_sent_by_the_first(
    app, client, db, newsletters, smtp, transport
):
    """The batch's rows are read once, but each one's claim is looked at before it goes."""
    ids = three_signups(client, db)

    def take_over() -> None:
        # The second row's lease ran out (a stall) and another worker claimed it.
        with Session(db.engine) as other:
            row = other.get(OutboxMessage, ids[1])
            assert row is not None
            row.next_attempt_at = utcnow() - timedelta(seconds=1)
            other.commit()
            assert outbox.LEASES.claim(other, "other-worker", outbox.POLICY) == [ids[1]]

    assert work(db, MidBatch(transport, take_over)) == 3
    assert [r.rcpt_tos[0] for r in smtp.received] == ["reader0@example.com", "reader2@example.com"]
    db.session.expire_all()
    taken = db.session.get(OutboxMessage, ids[1])
    assert taken is not None
    assert (taken.status, taken.claim, taken.sent_at) == ("queued", "other-worker", None)


def test_a_reader_erased_mid_batch_gets_nothing(app, client, db, newsletters, smtp, transport):
    ids = three_signups(client, db)

    def erase() -> None:
        with Session(db.engine) as other:
            reader = other.scalars(
                select(Subscriber).where(Subscriber.email == "reader1@example.com")
            ).one()
            subscribers.erase(other, reader, None)

    assert work(db, MidBatch(transport, erase)) == 3
    assert [r.rcpt_tos[0] for r in smtp.received] == ["reader0@example.com", "reader2@example.com"]
    db.session.expire_all()
    assert db.session.get(OutboxMessage, ids[1]) is None
    statuses = db.session.scalars(select(OutboxMessage.status).order_by(OutboxMessage.id))
    assert list(statuses) == ["sent", "sent"]


def test_an_address_suppressed_mid_batch_is_withheld(app, client, db, newsletters, smtp, transport):
    ids = three_signups(client, db)

    def bounce() -> None:
        with Session(db.engine) as other:
            suppression.suppress(other, "reader1@example.com", SuppressionReason.BOUNCED)
            other.commit()

    assert work(db, MidBatch(transport, bounce)) == 3
    assert [r.rcpt_tos[0] for r in smtp.received] == ["reader0@example.com", "reader2@example.com"]
    db.session.expire_all()
    withheld = db.session.get(OutboxMessage, ids[1])
    assert withheld is not None
    assert withheld.status == "skipped" and withheld.sent_at is None
    assert withheld.last_error == "address suppressed: bounced"


def test_a_lease_is_renewed_before_sending_only_once_half_of_it_has_gone(
    app, client, db, newsletters, smtp, transport
):
    ids = three_signups(client, db)
    soon = utcnow() + outbox.POLICY.lease / 4

    def stall() -> None:
        # The third row's lease is nearly over (the worker was slow); the second's is not.
        with Session(db.engine) as other:
            row = other.get(OutboxMessage, ids[2])
            assert row is not None
            row.next_attempt_at = soon
            other.commit()

    before = utcnow()
    assert work(db, MidBatch(transport, stall)) == 3
    assert len(smtp.received) == 3
    db.session.expire_all()
    rows = [db.session.get(OutboxMessage, i) for i in ids]
    assert [r.status for r in rows if r is not None] == ["sent", "sent", "sent"]
    second, third = rows[1], rows[2]
    assert second is not None and third is not None
    # The second went under the claim's lease, unwritten; the third's was renewed first.
    assert second.next_attempt_at < third.next_attempt_at
    assert third.next_attempt_at >= before + outbox.POLICY.lease


@pytest.mark.parametrize("status", [SubscriptionStatus.CONFIRMED, SubscriptionStatus.UNSUBSCRIBED])
def test_confirmation_no_longer_needed_is_skipped(client, db, newsletters, smtp, transport, status):
    signup(client, "reader@example.com", "daily")
    subscription = db.session.scalars(select(Subscription)).one()
    subscription.status = status
    db.session.commit()

    assert work(db, transport) == 1

    row = only_row(db)
    assert row.status == "skipped" and row.sent_at is None
    assert row.last_error == "nothing to send any more"
    assert smtp.received == []
    assert smtp.connections == 0


def test_wrong_smtp_password_keeps_mail_queued(client, db, newsletters, smtp_auth):
    signup(client, "reader@example.com", "daily")

    wrong = SMTPTransport.from_url(f"smtp://{USERNAME}:wrong@{HOST}:{smtp_auth.port}", timeout=5)
    assert work(db, wrong) == 1
    row = only_row(db)
    assert row.status == "queued" and row.attempts == 0
    assert "535" in row.last_error

    make_due(db)
    right = SMTPTransport.from_url(f"smtp://{CREDENTIALS}@{HOST}:{smtp_auth.port}", timeout=5)
    assert work(db, right) == 1
    assert only_row(db).status == "sent"
    assert [r.login for r in smtp_auth.received] == [USERNAME]


def test_unreachable_server_puts_the_whole_batch_back_after_one_try(
    client, db, newsletters, smtp_auth
):
    for n in range(3):
        signup(client, f"reader{n}@example.com", "daily")

    wrong = SMTPTransport.from_url(f"smtp://{USERNAME}:wrong@{HOST}:{smtp_auth.port}", timeout=5)
    assert work(db, wrong) == 3
    # One failed login for the batch, not one per message.
    assert smtp_auth.connections == 1
    rows = db.session.scalars(select(OutboxMessage)).all()
    assert {(r.status, r.attempts) for r in rows} == {("queued", 0)}
    assert all("535" in r.last_error and r.next_attempt_at > utcnow() for r in rows)


# --- `newsletter worker` ----------------------------------------------------------------------


@pytest.fixture
def run_worker(runner) -> Iterator[Callable[..., Result]]:  # type: ignore[no-untyped-def]
    """Invoke `newsletter worker`; puts back the signal handlers the command installs."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    # The command lives on the `newsletter` group, not on app.cli, so the runner is handed it.
    yield lambda *args: runner.invoke(worker, list(args))
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_worker_command_without_smtp_url_writes_eml_files(app, client, db, newsletters, run_worker):
    # Queued only: the drain applies the signup, then sends its confirmation.
    signup(client, "reader@example.com", "daily", apply=False)

    result = run_worker("--drain")

    assert result.exit_code == 0, result.output
    assert result.output == "Signups applied: 1.\nMessages handled: 1; waiting for a retry: 0.\n"
    [path] = Path(app.config["OUTBOX_DIR"]).glob("*.eml")
    mail = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert mail["To"] == "reader@example.com"
    assert len(links(mail, "/confirm/")) == 1
    assert only_row(db).status == "sent"


@pytest.mark.parametrize("app_config", ["smtp"], indirect=True)
def test_worker_command_with_smtp_url_sends_over_smtp(
    app, client, db, newsletters, smtp, run_worker
):
    signup(client, "reader@example.com", "daily")
    signup(client, "other@example.com", "culture")

    result = run_worker("--drain")

    assert result.exit_code == 0, result.output
    assert result.output == "Messages handled: 2; waiting for a retry: 0.\n"
    assert sorted(r.rcpt_tos[0] for r in smtp.received) == [
        "other@example.com",
        "reader@example.com",
    ]
    assert smtp.connections == 1
    assert not Path(app.config["OUTBOX_DIR"]).exists()
    assert set(db.session.scalars(select(OutboxMessage.status))) == {"sent"}


@pytest.mark.parametrize("app_config", ["smtp-down"], indirect=True)
def test_worker_command_with_smtp_down_reports_what_waits(client, db, newsletters, run_worker):
    signup(client, "reader@example.com", "daily")

    result = run_worker("--drain")

    assert result.exit_code == 0, result.output
    assert result.output == "Messages handled: 1; waiting for a retry: 1.\n"
    assert only_row(db).status == "queued"


# --- Several workers ----------------------------------------------------------------------------


def test_concurrent_claims_never_share_a_row(app, db):
    """Four workers claiming at once from separate connections get disjoint batches."""
    import threading

    from sqlalchemy.orm import Session

    from newsletter.models import MailKind, Subscriber

    subscriber = Subscriber(email="r@example.com", email_key="r@example.com")
    db.session.add(subscriber)
    db.session.add_all(
        OutboxMessage(
            kind=MailKind.CONFIRMATION,
            subscriber=subscriber,
            to_address="r@example.com",
            payload={},
        )
        for _ in range(300)
    )
    db.session.commit()
    claimed: list[list[int]] = []
    start = threading.Barrier(4)
    engine = db.engine

    def claimer() -> None:
        mine: list[int] = []
        with Session(engine) as session:
            start.wait()
            while ids := outbox.LEASES.claim(session, "w", replace(outbox.POLICY, batch_size=7)):
                mine.extend(ids)
        claimed.append(mine)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [row_id for mine in claimed for row_id in mine]
    assert len(every) == len(set(every)) == 300


def test_stop_finishes_the_message_in_hand_and_gives_the_rest_back(
    client, db, newsletters, smtp, transport
):
    import threading

    for n in range(3):
        signup(client, f"reader{n}@example.com", "daily")
    stop = threading.Event()

    class StopAfterOne:
        def send(self, message, sender=None) -> None:  # type: ignore[no-untyped-def]
            transport.send(message, sender)
            stop.set()  # SIGTERM arrives while the first message is on the wire

        def close(self) -> None:
            transport.close()

    outbox_worker(db, StopAfterOne(), stop=stop).run()
    assert len(smtp.received) == 1
    rows = db.session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
    assert [r.status for r in rows] == ["sent", "queued", "queued"]
    assert [r.attempts for r in rows[1:]] == [0, 0]
    assert all(r.next_attempt_at <= utcnow() for r in rows[1:])
    assert work(db, transport) == 2
    assert len(smtp.received) == 3


@pytest.mark.parametrize(
    ("command", "reply"),
    [("MAIL", "550 5.7.1 Sender address rejected: not owned by user"), ("RCPT", "421 4.3.2 Bye")],
    ids=["sender-refused", "server-closing"],
)
def test_a_relay_refusing_us_delays_the_mail_without_using_up_its_tries(
    client, db, newsletters, smtp, transport, command, reply
):
    smtp.handler.refuse(command, reply)
    signup(client, "reader@example.com", "daily")

    assert work(db, transport) == 1
    row = only_row(db)
    assert (row.status, row.attempts) == ("queued", 0)
    assert row.next_attempt_at > utcnow()
    assert row.last_error.startswith(reply[:3])
    make_due(db)
    assert work(db, transport) == 1
    assert only_row(db).status == "sent"
    assert len(smtp.received) == 1

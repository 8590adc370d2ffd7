"""`newsletter digest …` and `newsletter worker` sending digests."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from newsletter.cli import cli
from newsletter.digests import states
from newsletter.models import Digest, DigestStatus

from factories import add_item, add_reader, ledger


@pytest.fixture
def app_config(request: pytest.FixtureRequest) -> dict[str, object]:
    return {"SMTP_URL": request.getfixturevalue("smtp").url}


@pytest.fixture
def invoke(app) -> Iterator:  # type: ignore[no-untyped-def]
    runner = app.test_cli_runner()
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield lambda *args: runner.invoke(cli, list(args))
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture
def daily(app):  # type: ignore[no-untyped-def]
    from factories import make_newsletter

    return make_newsletter("daily", "Daily Briefing", from_address="daily@news.example.org")


def test_send_wait_sends_to_everyone_and_exits_zero(db, daily, smtp, invoke):
    add_item(db, daily, "Drones shot down")
    for n in range(7):
        add_reader(db, daily, f"r{n}@example.com")
    result = invoke("digest", "send", "daily", "--subject", "Morning news", "--wait")
    assert result.exit_code == 0, result.output
    assert "7 readers" in result.output
    assert "7 sent, 0 failed, 0 skipped" in result.output
    assert sorted(r.rcpt_tos[0] for r in smtp.received) == [f"r{n}@example.com" for n in range(7)]
    assert {r.message["Subject"] for r in smtp.received} == {"Morning news"}
    digest = db.session.scalar(select(Digest))
    assert digest.status == DigestStatus.SENT


def test_send_without_new_items_fails_with_a_reason(db, daily, invoke):
    add_reader(db, daily, "r@example.com")
    result = invoke("digest", "send", "daily")
    assert result.exit_code == 1
    assert "no new items since its last digest" in result.output
    assert db.session.scalar(select(Digest)) is None


def test_send_unknown_newsletter(db, invoke):
    result = invoke("digest", "send", "nope")
    assert result.exit_code == 2
    assert "no newsletter with slug 'nope'" in result.output


def test_send_wait_exits_non_zero_when_mail_fails(db, daily, smtp, invoke):
    add_item(db, daily, "Story")
    add_reader(db, daily, "a@example.com")
    add_reader(db, daily, "b@example.com")
    smtp.handler.refuse("RCPT", "550 5.1.1 No such user")
    result = invoke("digest", "send", "daily", "--wait")
    assert result.exit_code == 1
    assert "not for everyone: 1 sent, 1 failed" in result.output


def test_send_without_wait_leaves_it_to_the_worker(db, daily, smtp, invoke):
    add_item(db, daily, "Story")
    add_reader(db, daily, "a@example.com")
    result = invoke("digest", "send", "daily")
    assert result.exit_code == 0, result.output
    assert smtp.received == []
    worker = invoke("worker", "--drain")
    assert worker.exit_code == 0, worker.output
    assert [r.rcpt_tos for r in smtp.received] == [["a@example.com"]]
    digest = db.session.scalar(select(Digest))
    db.session.refresh(digest)
    assert digest.status == DigestStatus.SENT


def test_send_one_edition_to_its_readers_only(db, daily, smtp, invoke):
    daily.frequencies = "daily,weekly"
    add_item(db, daily, "Story")
    add_reader(db, daily, "a@example.com")
    # The list's cadence is weekly: a reader who chose daily reads the daily edition alone.
    reader = add_reader(db, daily, "d@example.com")
    reader.subscriptions[0].frequency = "daily"
    db.session.commit()
    refused = invoke("digest", "send", "daily", "--edition", "monthly")
    assert refused.exit_code == 1
    assert "daily has no 'monthly' edition; its editions: weekly, daily." in refused.output
    result = invoke("digest", "send", "daily", "--edition", "daily", "--wait")
    assert result.exit_code == 0, result.output
    assert "1 readers" in result.output
    assert [r.rcpt_tos for r in smtp.received] == [["d@example.com"]]


def test_pause_resume_cancel_from_the_command_line(db, daily, smtp, invoke):
    add_item(db, daily, "Story")
    add_reader(db, daily, "a@example.com")
    digest = states.compose(db.session, daily)
    states.start(db.session, digest)
    # The worker closes the session it shares with the test: keep the id, not the object.
    digest_id = digest.id
    assert invoke("digest", "pause", str(digest_id)).output.startswith(f"Digest {digest_id} paused")
    assert invoke("worker", "--drain").exit_code == 0
    assert smtp.received == []
    again = invoke("digest", "pause", str(digest_id))
    assert again.exit_code == 1 and "Only a digest being sent can pause" in again.output
    assert invoke("digest", "resume", str(digest_id)).exit_code == 0
    assert invoke("digest", "cancel", str(digest_id)).exit_code == 0
    assert invoke("worker", "--drain").exit_code == 0
    assert smtp.received == []
    assert ledger(db, db.session.get(Digest, digest_id)) == {"skipped": 1}
    status = invoke("digest", "status", str(digest_id))
    assert "status: cancelled" in status.output and "skipped: 1" in status.output
    assert invoke("digest", "pause", "999").exit_code == 2
    listing = invoke("digest", "list")
    assert "cancelled" in listing.output and "daily" in listing.output


def test_send_wait_with_the_server_down_says_why_and_gives_up_at_the_timeout(
    app, db, daily, invoke
):
    from smtp_server import free_port

    app.config["SMTP_URL"] = f"smtp://127.0.0.1:{free_port()}"
    add_item(db, daily, "Story")
    add_reader(db, daily, "a@example.com")
    result = invoke("digest", "send", "daily", "--wait", "--timeout", "0")
    assert result.exit_code == 1
    assert "0 sent, 0 failed, 0 skipped, 1 waiting" in result.output
    assert "last refusal: ConnectionRefusedError" in result.output
    assert "the workers go on sending it" in result.output
    digest = db.session.scalar(select(Digest))
    db.session.refresh(digest)
    assert digest.status == DigestStatus.SENDING

"""Digests sent by real `newsletter worker` processes: sharing one digest, and surviving a kill."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, update

from newsletter.digests import states
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Digest,
    DigestStatus,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    utcnow,
)

from factories import add_item, make_newsletter


def add_readers(db, newsletter, count: int) -> list[str]:  # type: ignore[no-untyped-def]
    """`count` confirmed readers, written in bulk."""
    addresses = [f"reader{n}@example.com" for n in range(count)]
    now = utcnow()
    db.session.execute(
        insert(Subscriber),
        [
            {"email": a, "email_key": a, "token_key": secrets.token_urlsafe(12), "created_at": now}
            for a in addresses
        ],
    )
    ids = db.session.scalars(select(Subscriber.id).order_by(Subscriber.id)).all()
    db.session.execute(
        insert(Subscription),
        [
            {
                "subscriber_id": i,
                "newsletter_id": newsletter.id,
                "status": SubscriptionStatus.CONFIRMED,
                "nonce": "n",
                "subscribed_at": now,
                "confirmed_at": now,
            }
            for i in ids
        ],
    )
    db.session.commit()
    return addresses


def worker(app, smtp, *args: str, **env: str) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    """Start `newsletter worker` as its own process on the test's database and SMTP server."""
    environment = {
        **os.environ,
        "NEWSLETTER_ENV": "testing",
        "NEWSLETTER_INSTANCE_PATH": app.instance_path,
        "NEWSLETTER_DATABASE_URL": app.config["DATABASE_URL"],
        "NEWSLETTER_SECRET_KEY": app.config["SECRET_KEY"],
        "NEWSLETTER_BASE_URL": app.config["BASE_URL"],
        "NEWSLETTER_SMTP_URL": smtp.url,
        **env,
    }
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "newsletter"), "worker", *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def started_digest(db, readers: int):  # type: ignore[no-untyped-def]
    newsletter = make_newsletter("daily", "Daily Briefing", from_address="daily@news.example.org")
    add_item(db, newsletter, "Drones shot down")
    addresses = add_readers(db, newsletter, readers)
    digest = states.compose(db.session, newsletter)
    states.start(db.session, digest)
    return digest.id, addresses


def finish(process: subprocess.Popen[bytes], timeout: float = 300) -> str:
    """Wait for a worker to exit 0; one that does not is killed, never left behind."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as late:
        process.kill()
        output, _ = process.communicate()
        message = f"the worker did not finish in {timeout:.0f} s: {output.decode()}"
        raise AssertionError(message) from late
    assert process.returncode == 0, output.decode()
    return output.decode()


@pytest.mark.skipif(
    not os.environ.get("NEWSLETTER_TEST_DATABASE_URL"), reason="needs PostgreSQL (SKIP LOCKED)"
)
def test_four_workers_share_a_digest_and_everyone_gets_one_copy(app, db, database_url, smtp):
    if not database_url.startswith("postgresql"):
        pytest.skip("four workers share a digest through PostgreSQL's SKIP LOCKED")
    digest_id, addresses = started_digest(db, 5000)
    workers = [worker(app, smtp, "--drain") for _ in range(4)]
    for process in workers:
        finish(process)

    copies = Counter(r.rcpt_tos[0] for r in smtp.received)
    assert len(copies) == 5000 and set(copies) == set(addresses)
    assert max(copies.values()) == 1
    # Each worker took its share over its own connection.
    assert smtp.connections >= 2
    db.session.expire_all()
    counts = dict(
        db.session.execute(
            select(Delivery.status, func.count())
            .where(Delivery.digest_id == digest_id)
            .group_by(Delivery.status)
        ).all()
    )
    assert counts == {DeliveryStatus.SENT: 5000}
    assert db.session.get(Digest, digest_id).status == DigestStatus.SENT


def test_a_killed_worker_loses_nobody_and_doubles_at_most_one(app, db, smtp, tmp_path: Path):
    digest_id, addresses = started_digest(db, 1500)
    # Throttled so that it is surely in the middle when it dies.
    first = worker(app, smtp, NEWSLETTER_SEND_RATE="300")
    deadline = time.monotonic() + 60
    # Batches are of 200: 300 is in the middle of the second.
    while len(smtp.received) < 300:
        assert time.monotonic() < deadline, "the first worker sent nothing"
        assert first.poll() is None, first.stdout.read().decode()  # type: ignore[union-attr]
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    db.session.expire_all()
    held = db.session.scalar(
        select(func.count()).where(
            Delivery.digest_id == digest_id, Delivery.status == DeliveryStatus.SENDING
        )
    )
    assert held > 0, "the kill came between batches; nothing was in flight"

    # The dead worker's lease runs out (five minutes, made to pass at once here).
    db.session.execute(
        update(Delivery)
        .where(Delivery.status == DeliveryStatus.SENDING)
        .values(next_attempt_at=utcnow())
    )
    db.session.commit()
    finish(worker(app, smtp, "--drain"))

    copies = Counter(r.rcpt_tos[0] for r in smtp.received)
    assert set(copies) == set(addresses), "someone got nothing"
    doubled = [a for a, n in copies.items() if n > 1]
    # At most the message in flight on the dead worker's one connection went twice.
    assert len(doubled) <= 1 and max(copies.values()) <= 2
    db.session.expire_all()
    assert db.session.get(Digest, digest_id).status == DigestStatus.SENT
    assert db.session.get(Digest, digest_id).sent_count == 1500

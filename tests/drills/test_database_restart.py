"""Drill 5: PostgreSQL restarted in the middle of a 20,000-reader digest and a burst of signups."""

from __future__ import annotations

import time

import pytest

from harness import Burst, Postgres, Stack, ledger, quiet, start_digest, wait_until

READERS = 20_000
DOWN = 10.0  # seconds the database stays stopped
SUBJECT = "Drill 5 digest"


@pytest.mark.long
def test_database_restart(
    stack: Stack, private_postgres: Postgres, smtp_log, record_property
) -> None:
    record_property("drill", "5 database restart")
    stack.prepare(readers=READERS)
    stack.start_web()
    stack.start_workers(2)

    burst = Burst(stack, "burst", 400, every=0.1)
    burst.start()
    digest_id, readers = start_digest(stack, SUBJECT)
    assert readers == READERS
    wait_until(
        lambda: ledger(stack, digest_id).get("sent", 0) >= READERS // 4,
        600,
        "a quarter of the digest sent",
        every=0.5,
    )
    sent_before = ledger(stack, digest_id).get("sent", 0)
    down_at = time.monotonic()
    private_postgres.stop("fast")
    time.sleep(DOWN)
    private_postgres.start()
    up_at = time.monotonic()
    burst.join(timeout=300)
    assert not burst.is_alive()

    # The send finishes by itself: rows a worker held when the database went come back
    # when their lease runs out (5 minutes).
    wait_until(
        lambda: ledger(stack, digest_id).get("sent", 0) == READERS,
        900,
        "every reader's row marked sent",
        every=2,
    )
    assert ledger(stack, digest_id) == {"sent": READERS}
    got = smtp_log.recipients(SUBJECT)
    missed = READERS - len(got)
    twice = sum(n - 1 for n in got.values())

    during = [r for _, when, r in burst.sent if down_at <= when <= up_at]
    refused = burst.refused()
    taken = burst.taken()
    wait_until(
        lambda: all(smtp_log.count(to=email) for email in taken),
        300,
        "a confirmation mail for every signup that was taken",
    )
    quiet(smtp_log, 3, 120)
    in_db = stack.scalar(
        "SELECT count(*) FROM subscriber WHERE email LIKE 'burst%@signups.example'"
    )
    record_property(
        "figure",
        f"PostgreSQL down {up_at - down_at:.0f} s at {sent_before:,}/{READERS:,} sent: "
        f"{len(got):,} readers got it, {missed} missed, {twice} twice; signups: {len(taken)} "
        f"taken and mailed, {len(refused)} answered 503 ({len(during)} sent while it was down)",
    )
    assert missed == 0
    # The outage was felt, and felt as a 503 page, never a stack trace or a 500.
    assert refused, "no signup met the outage: the drill broke nothing"
    for reply in refused:
        assert reply.status == 503, (reply.status, reply.body[:300])
        assert "briefly unavailable" in reply.body
        assert "Traceback" not in reply.body
    assert in_db == len(taken)
    assert all(smtp_log.count(to=email) == 1 for email in taken)

"""Drill 6: the workers are SIGKILLed 5 times during one digest to 20,000 readers."""

from __future__ import annotations

import signal
import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from harness import Stack, ledger, start_digest, wait_until

READERS = 20_000
WORKERS = 2
# Kill every worker when this share of the digest has been marked sent.
KILL_AT = (0.10, 0.25, 0.40, 0.55, 0.70)
SUBJECT = "Drill 6 digest"


def _unrecorded(stack: Stack, digest_id: int, delivered: set[str]) -> set[str]:
    """Readers the SMTP server took the digest for whose ledger row does not say sent."""
    engine = create_engine(stack.database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            open_rows = conn.execute(
                text(
                    "SELECT s.email FROM delivery d"
                    " JOIN subscription su ON su.id = d.subscription_id"
                    " JOIN subscriber s ON s.id = su.subscriber_id"
                    " WHERE d.digest_id = :d AND d.status <> 'sent'"
                ),
                {"d": digest_id},
            ).scalars()
            return delivered & set(open_rows)
    finally:
        engine.dispose()


@pytest.mark.long
def test_killed_workers(stack: Stack, smtp_log, record_property) -> None:
    record_property("drill", "6 killed workers")
    stack.prepare(readers=READERS)
    stack.start_workers(WORKERS)
    digest_id, readers = start_digest(stack, SUBJECT)
    assert readers == READERS

    in_flight: set[str] = set()
    flights: list[int] = []
    for share in KILL_AT:
        wait_until(
            lambda share=share: ledger(stack, digest_id).get("sent", 0) >= READERS * share,
            600,
            f"{share:.0%} of the digest sent",
            every=0.2,
        )
        assert stack.kill_workers(signal.SIGKILL) == WORKERS
        # A COMMIT a worker sent just before it died is still applied: let it land.
        time.sleep(1)
        # With every worker dead: what the server took and the ledger does not know of.
        # (One caught at an earlier kill waits for its lease, not in flight again.)
        caught = _unrecorded(stack, digest_id, set(smtp_log.recipients(SUBJECT))) - in_flight
        flights.append(len(caught))
        in_flight |= caught
        assert ledger(stack, digest_id).get("sent", 0) < READERS, "killed after the end"
        stack.start_workers(WORKERS)

    # Rows the killed workers held come back when their lease runs out (5 minutes).
    wait_until(
        lambda: ledger(stack, digest_id).get("sent", 0) == READERS,
        900,
        "every reader's row marked sent",
        every=2,
    )
    assert ledger(stack, digest_id) == {"sent": READERS}
    got = smtp_log.recipients(SUBJECT)
    missed = READERS - len(got)
    twice = {email for email, n in got.items() if n > 1}
    extra = sum(got[email] - 1 for email in twice)
    record_property(
        "figure",
        f"{len(KILL_AT)} kills of {WORKERS} workers: {len(got):,}/{READERS:,} readers got it, "
        f"{missed} missed; {extra} duplicates, in flight at the kills "
        f"{' + '.join(map(str, flights))} = {sum(flights)}",
    )
    assert missed == 0
    # Only a message in flight at a kill (taken by the server, not yet in the ledger) goes
    # twice, and once more at most.
    assert twice <= in_flight
    assert extra <= sum(flights)

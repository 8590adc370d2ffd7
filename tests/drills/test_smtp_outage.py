"""Drill 4: the mail server is down in the middle of a confirmation burst and a digest."""

from __future__ import annotations

import time

import pytest

from harness import Burst, SmtpLog, Stack, ledger, quiet, start_digest, wait_until

SUBJECT = "Drill 4 digest"
EVERY = 0.25  # seconds between two signups of the burst


@pytest.mark.parametrize(
    ("outage", "readers"),
    [
        # `make test`'s short version; `make drills` runs the two minutes.
        pytest.param(20, 2_000, id="20s"),
        pytest.param(120, 5_000, id="2min", marks=pytest.mark.long),
    ],
)
def test_smtp_outage(
    stack: Stack, smtp_log: SmtpLog, record_property, outage: int, readers: int
) -> None:
    record_property("drill", f"4 SMTP outage ({outage} s)")
    stack.prepare(readers=readers)
    stack.start_web()
    stack.start_workers(2)

    # Signups before, during and after the outage.
    burst = Burst(stack, "confirm", int((outage + 30) / EVERY), every=EVERY)
    burst.start()
    digest_id, count = start_digest(stack, SUBJECT)
    assert count == readers
    wait_until(
        lambda: smtp_log.count(subject=SUBJECT) >= readers // 5,
        300,
        "a fifth of the digest delivered",
        every=0.1,
    )
    smtp_log.stop()
    down_at = time.monotonic()
    time.sleep(outage)
    delivered_then = ledger(stack, digest_id).get("sent", 0)
    smtp_log.start()
    up_at = time.monotonic()
    burst.join(timeout=300)
    assert not burst.is_alive()
    taken = burst.taken()
    assert len(taken) == len(burst.sent), [(r.status, r.body[:200]) for r in burst.refused()]

    wait_until(
        lambda: (
            ledger(stack, digest_id).get("sent", 0) == readers
            and all(smtp_log.count(to=email) for email in taken)
        ),
        600,
        "the digest and every confirmation delivered",
        every=1,
    )
    done_at = time.monotonic()
    quiet(smtp_log, 5, 120)
    assert ledger(stack, digest_id) == {"sent": readers}
    got = smtp_log.recipients(SUBJECT)
    confirmations = {email: smtp_log.count(to=email) for email in taken}
    during = sum(1 for _, when, _ in burst.sent if down_at <= when <= up_at)
    record_property(
        "figure",
        f"SMTP down {up_at - down_at:.0f} s at {delivered_then:,}/{readers:,} of a digest and "
        f"during {during} of {len(taken)} signups: {sum(got.values()):,} digest mails to "
        f"{len(got):,} readers, {sum(confirmations.values())} confirmations to {len(taken)}; "
        f"all in {done_at - up_at:.0f} s after it came back",
    )
    # The outage was felt: the digest was not done and signups came in meanwhile.
    assert delivered_then < readers and during > 0
    assert len(got) == readers and set(got.values()) == {1}
    assert set(confirmations.values()) == {1}

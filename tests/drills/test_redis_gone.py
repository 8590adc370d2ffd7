"""Drill 7: Redis, where the rate limits are counted, is stopped in the middle of signups."""

from __future__ import annotations

from harness import Redis, Stack, accepted, quiet, wait_until

VICTIM = "victim@bombed.example"
CAP = 3  # NEWSLETTER_CONFIRMATIONS_PER_ADDRESS's default


def test_redis_gone(stack: Stack, private_redis: Redis, smtp_log, record_property) -> None:
    record_property("drill", "7 Redis gone")
    stack.prepare()
    stack.start_web()
    stack.start_workers(1)

    before = [(f"early{n}@readers.example", f"203.0.113.{n + 1}") for n in range(10)]
    assert all(accepted(r) for r in stack.signups(before))
    # Two tries for the victim while Redis is there, the rest after it is gone.
    assert all(accepted(r) for r in stack.signups([(VICTIM, "198.51.100.1")] * 2))

    private_redis.stop()
    during = [(f"reader{n}@readers.example", f"203.0.113.{n % 20 + 101}") for n in range(40)]
    bombs = [(VICTIM, f"198.51.100.{n % 10 + 2}") for n in range(20)]
    replies = stack.signups(during + bombs)
    taken = sum(accepted(r) for r in replies[: len(during)])
    assert taken == len(during), [(r.status, r.body[:200]) for r in replies if not accepted(r)]
    assert all(r.status in (200, 429) for r in replies[len(during) :])

    addresses = [email for email, _ in before + during]
    wait_until(
        lambda: all(smtp_log.count(to=a) == 1 for a in addresses),
        180,
        "a confirmation mail for every reader who signed up",
    )
    quiet(smtp_log, 5, 120)
    victim_mails = smtp_log.count(to=VICTIM)
    record_property(
        "figure",
        f"Redis stopped: {taken}/{len(during)} signups taken and mailed; 22 signups for one "
        f"address got it {victim_mails} mails (cap {CAP})",
    )
    assert 1 <= victim_mails <= CAP
    # The web processes did lose Redis (and said so): the drill broke what it meant to.
    assert "cannot be reached" in stack.log_text()
    assert "Traceback" not in "".join(r.body for r in replies)

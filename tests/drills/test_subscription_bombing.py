"""Drill 1: someone signs a victim's address up 1,000 times from 100 client addresses."""

from __future__ import annotations

import time

from harness import Stack, accepted, quiet, wait_until

VICTIM = "victim@bombed.example"
CAP = 3  # NEWSLETTER_CONFIRMATIONS_PER_ADDRESS's default


def test_subscription_bombing(stack: Stack, smtp_log, record_property) -> None:
    record_property("drill", "1 subscription bombing")
    stack.prepare()
    stack.start_web()
    stack.start_workers(1)

    # 100 clients (behind the one trusted proxy) send 10 each for the victim; among them,
    # 50 readers sign up for themselves from addresses of their own.
    bombs = [(VICTIM, f"198.51.100.{n % 100 + 1}") for n in range(1000)]
    readers = [(f"reader{n}@readers.example", f"203.0.113.{n + 1}") for n in range(50)]
    calls = list(bombs)
    for n, reader in enumerate(readers):
        calls.insert(n * 20 + 10, reader)
    began = time.monotonic()
    replies = dict(zip(range(len(calls)), stack.signups(calls), strict=True))
    took = time.monotonic() - began

    readers_taken = [n for n, call in enumerate(calls) if call in readers and accepted(replies[n])]
    bomb_replies = [replies[n] for n, call in enumerate(calls) if call[0] == VICTIM]
    assert len(readers_taken) == len(readers), [
        (calls[n], replies[n].status) for n in range(len(calls)) if calls[n] in readers
    ]
    # The bomber learns nothing: the same reply as anyone's, and no error page.
    assert all(r.status in (200, 429) for r in bomb_replies)
    assert "Traceback" not in "".join(r.body for r in bomb_replies)

    addresses = [email for email, _ in readers]
    wait_until(
        lambda: all(smtp_log.count(to=a) for a in addresses),
        180,
        "a confirmation mail for every other reader",
    )
    quiet(smtp_log, 5, 120)
    victim_mails = smtp_log.count(to=VICTIM)
    record_property(
        "figure",
        f"1,000 signups for one address from 100 clients in {took:.0f} s: it got "
        f"{victim_mails} mails (cap {CAP}); {len(readers_taken)}/{len(readers)} other "
        "readers' signups taken, each mailed",
    )
    assert 1 <= victim_mails <= CAP
    assert all(smtp_log.count(to=a) == 1 for a in addresses)

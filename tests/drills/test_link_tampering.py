"""Drill: every signed link with a flipped byte, another reader's payload under this signature,
another key, an expired time; and VERP tags so altered in returned mail.

gunicorn must refuse each with 400 or 410 and a page, and no row of any reader may change. The
genuine links act at the end, so the drill would see a refusal that refused everything.
"""

from __future__ import annotations

import mailbox
import re
import time
from unittest import mock

import pytest

from newsletter.extensions import db
from newsletter.links import DELIVERY, OUTBOX, Links
from newsletter.models import (
    BounceEvent,
    ConsentEvent,
    OutboxMessage,
    Subscriber,
    Subscription,
    Suppression,
)

from factories import make_newsletter
from hostile import (
    BASE_URL,
    BOUNCE_ADDRESS,
    Browser,
    Reader,
    Stack,
    add_readers,
    drill,
    running_stack,
)

SLUGS = ["daily", "culture"]
# The base64url alphabet itsdangerous writes; flipping a character's top bit (index ^ 32)
# always changes the bytes it stands for, padding bits included.
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
PAGES = ("This link is broken", "This link is no longer valid", "confirmation link has expired")
# Rows whose change would mean a link acted on someone.
WATCHED = (Subscriber, Subscription, ConsentEvent, OutboxMessage, Suppression)


def flipped(token: str, at: int) -> str:
    """The token with the character at `at` changed."""
    char = token[at]
    other = ALPHABET[ALPHABET.index(char) ^ 32] if char in ALPHABET else "A"
    return token[:at] + other + token[at + 1 :]


def swapped(mine: str, theirs: str) -> str:
    """Their payload under my timestamp and signature."""
    payload, _, _ = theirs.partition(".")
    _, _, signed = mine.partition(".")
    return f"{payload}.{signed}"


def _old(links: Links, purpose: str, token: str, seconds_ago: int) -> str:
    """The same link signed `seconds_ago`."""
    payload = links._serializers[purpose].loads(token)
    with mock.patch("time.time", return_value=time.time() - seconds_ago):
        return links.token(purpose, payload)


class Tamper:
    """Sends altered links and checks each is refused with a page and changes nothing."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.visitor: Browser = stack.browser()
        self.before = stack.snapshot(*WATCHED)
        self.sent = 0

    def refused(self, method: str, path: str, statuses: tuple[int, ...] = (400,)) -> None:
        form = {"List-Unsubscribe": "One-Click", "action": "leave-all"}
        answer = self.visitor.request(method, path, form=form if method == "POST" else None)
        self.sent += 1
        where = f"{method} {path}"
        assert answer.status in statuses, f"{where}: {answer.status}\n{answer.body[:1500]}"
        assert answer.headers["content-type"].startswith("text/html"), where
        assert any(page in answer.body for page in PAGES), f"{where}: no page\n{answer.body[:1500]}"
        assert self.stack.snapshot(*WATCHED) == self.before, f"{where} changed rows"


def _routes(reader: Reader) -> list[tuple[str, str, list[str]]]:
    """Each link of a reader: its path prefix, its token, the methods that read it."""
    return [
        ("/confirm/", reader.confirm, ["GET", "POST", "POST resend"]),
        ("/unsubscribe/", reader.unsubscribe["daily"], ["GET", "POST"]),
        ("/preferences/", reader.preferences, ["GET", "POST"]),
    ]


def _send(tamper: Tamper, prefix: str, token: str, how: str, statuses=(400,)) -> None:  # type: ignore[no-untyped-def]
    method, _, resend = how.partition(" ")
    tamper.refused(method, prefix + token + ("/resend" if resend else ""), statuses)


def _web(stack: Stack, victim: Reader, other: Reader) -> dict[str, int]:
    tamper = Tamper(stack)
    counts = {"flipped": 0, "swapped": 0, "other key": 0, "expired": 0}
    foreign = Links(BASE_URL, "another-key-" + "x1y2z3" * 8)
    for (prefix, token, methods), (_, theirs, _) in zip(
        _routes(victim), _routes(other), strict=True
    ):
        purpose = prefix.strip("/")
        for at in range(len(token)):
            for how in methods:
                _send(tamper, prefix, flipped(token, at), how)
                counts["flipped"] += 1
        for how in methods:
            # Their payload with my signature, and mine with theirs.
            _send(tamper, prefix, swapped(token, theirs), how)
            _send(tamper, prefix, swapped(theirs, token), how)
            counts["swapped"] += 2
            payload = stack.links._serializers[purpose].loads(theirs)
            _send(tamper, prefix, foreign.token(purpose, payload), how)
            counts["other key"] += 1
        if purpose == "confirm":
            # A week and a day old: past NEWSLETTER_CONFIRM_MAX_AGE (a week).
            expired = _old(stack.links, purpose, theirs, 8 * 24 * 3600)
            for how in ("GET", "POST"):
                _send(tamper, prefix, expired, how, statuses=(410,))
                counts["expired"] += 1
            # An expired link whose timestamp was moved on to look fresh: signed no more.
            old, _, signature = expired.split(".")
            fresh = _old(stack.links, purpose, theirs, 0).split(".")[1]
            for how in methods:
                _send(tamper, prefix, f"{old}.{fresh}.{signature}", how)
                counts["expired"] += 1
    assert tamper.sent == sum(counts.values())
    return counts


def _dsn(tag: str, recipient: str, n: int) -> bytes:
    """A hard bounce of one mail, as a receiving server returns it to the tagged address."""
    local, _, domain = BOUNCE_ADDRESS.partition("@")
    to = f"{local}+{tag}@{domain}"
    return (
        f"From: MAILER-DAEMON@mx.example.net\n"
        f"To: {to}\n"
        f"Delivered-To: {to}\n"
        f"Subject: Undelivered Mail Returned to Sender\n"
        f"Message-ID: <dsn-{n}@mx.example.net>\n"
        f"MIME-Version: 1.0\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        f"--b\nContent-Type: text/plain\n\nYour message could not be delivered ({n}).\n\n"
        f"--b\nContent-Type: message/delivery-status\n\n"
        f"Reporting-MTA: dns; mx.example.net\n\n"
        f"Final-Recipient: rfc822; {recipient}\nAction: failed\nStatus: 5.1.1\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 No such user\n\n--b--\n"
    ).encode()


_VERP = re.compile(r"\+([a-z0-9-]+)@")


def _verp(stack: Stack, victim: Reader, other: Reader) -> int:
    """Returned mail through `newsletter bounces ingest` with altered tags: none may act."""
    stack.drain()
    tags = {}
    for mail_from, rcpt_tos, _ in stack.smtp.raw:
        match = _VERP.search(mail_from)
        assert match, mail_from
        tags[rcpt_tos[0]] = match.group(1)
    mine, theirs = tags[victim.email], tags[other.email]
    foreign = Links(BASE_URL, "another-key-" + "x1y2z3" * 8, bounce_address=BOUNCE_ADDRESS)
    kind, row = mine[0], int(mine[1:].partition("-")[0])
    assert kind == OUTBOX
    altered = [flipped(mine, at).lower() for at in range(len(mine)) if mine[at] != "-"]
    altered += [
        # Their row under my signature, mine under theirs.
        f"{theirs.partition('-')[0]}-{mine.partition('-')[2]}",
        f"{mine.partition('-')[0]}-{theirs.partition('-')[2]}",
        # Another key, and a delivery of the same number.
        _VERP.search(foreign.envelope_sender(OUTBOX, row) or "").group(1),  # type: ignore[union-attr]
        f"{DELIVERY}{row}-{mine.partition('-')[2]}",
    ]
    altered = [tag for tag in dict.fromkeys(altered) if tag not in (mine, theirs)]
    box = mailbox.mbox(stack.tmp / "returned.mbox")
    for n, tag in enumerate(altered):
        box.add(_dsn(tag, other.email, n))
    box.flush()
    box.close()
    before = stack.snapshot(Subscriber, Subscription, Suppression)
    done = stack.cli("bounces", "ingest", str(stack.tmp / "returned.mbox"))
    assert done.returncode == 0, done.stderr.decode()
    assert stack.snapshot(Subscriber, Subscription, Suppression) == before
    # Kept for the figures, acting on no one.
    assert db.session.query(BounceEvent).count() == len(altered)
    db.session.rollback()
    # The genuine tag acts: the drill would see a check that refused everything.
    genuine = stack.tmp / "genuine.mbox"
    box = mailbox.mbox(genuine)
    box.add(_dsn(theirs, other.email, 999))
    box.close()
    done = stack.cli("bounces", "ingest", str(genuine))
    assert done.returncode == 0, done.stderr.decode()
    suppressed = [row.email_hash for row in db.session.query(Suppression)]
    db.session.rollback()
    assert len(suppressed) == 1
    return len(altered)


def _genuine_links_act(stack: Stack, victim: Reader) -> None:
    visitor = stack.browser()
    assert visitor.post("/confirm/" + victim.confirm).status == 200
    assert _statuses(victim) == {"daily": "confirmed", "culture": "confirmed"}
    one_click = {"List-Unsubscribe": "One-Click"}
    answer = visitor.post("/unsubscribe/" + victim.unsubscribe["daily"], form=one_click)
    assert answer.status == 200
    assert _statuses(victim) == {"daily": "unsubscribed", "culture": "confirmed"}


def _statuses(reader: Reader) -> dict[str, str]:
    db.session.expire_all()
    rows = db.session.scalars(
        db.select(Subscription).filter_by(subscriber_id=reader.subscriber_id)
    ).all()
    found = {row.newsletter.slug: str(row.status) for row in rows}
    db.session.rollback()
    return found


@pytest.mark.drill
def test_link_tampering(tmp_path, request):
    # Hundreds of links from one address: the preferences page's limits, which would answer
    # 429 before looking at a link, are lifted so that every link is judged by its signature.
    unlimited = {"PREFERENCES_RATE_LIMIT": "100000 per minute"}
    unlimited["PREFERENCES_LINK_RATE_LIMIT"] = "100000 per hour"
    with running_stack(tmp_path, "links", **unlimited) as stack:
        for slug in SLUGS:
            make_newsletter(slug)
        victim, other = add_readers(stack, 2, SLUGS)
        stack.start_web()
        counts = _web(stack, victim, other)
        tags = _verp(stack, victim, other)
        _genuine_links_act(stack, victim)
        assert stack.server_errors() == []
    total = sum(counts.values())
    drill(
        request,
        "3 Link tampering",
        f"{total:,} altered links ({counts['flipped']:,} flipped, {counts['swapped']} swapped, "
        f"{counts['other key']} other key, {counts['expired']} expired) refused with 400/410 "
        f"and a page; {tags} altered VERP tags acted on no one; 0 rows changed",
    )

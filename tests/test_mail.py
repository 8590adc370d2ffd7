"""Composed mails: multipart, the headers every client expects, nothing injected."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from newsletter.mail import compose
from newsletter.mail.transport import MemoryTransport
from newsletter.models import OutboxMessage, utcnow

from factories import Mailbox, html_part, links, signup, text_part


def test_confirmation_mail_is_multipart_with_standard_headers(client, mailbox, newsletters):
    signup(client, "reader@example.com", "daily")
    (mail,) = mailbox.deliver()
    assert mail.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in mail.iter_parts()] == ["text/plain", "text/html"]
    assert mail["Message-ID"].endswith("@news.example.org>")
    assert mail["Date"]
    assert mail["From"] == "Daily Desk <daily@news.example.org>"
    assert mail["Subject"] == "Please confirm your subscription to Daily Briefing"
    (link,) = links(mail, "/confirm/")
    assert f'href="https://news.example.org{link}"' in html_part(mail)
    # A confirmation is not a list mail: no unsubscribe header to mislead filters.
    assert mail["List-Unsubscribe"] is None


def test_one_mail_for_several_lists_with_different_senders(client, mailbox, newsletters):
    signup(client, "reader@example.com", "daily", "explaining-ukraine", "culture")
    (mail,) = mailbox.deliver()
    assert mail["Subject"] == "Please confirm your newsletter subscriptions"
    # The default sender is at the base URL's domain, not localhost.
    assert mail["From"] == "Newsletter <newsletter@news.example.org>"
    body = text_part(mail)
    for name in ("Daily Briefing", "Explaining Ukraine with Kate Tsurkan", "Culture"):
        assert name in body


def test_retried_mail_keeps_its_message_id(app, client, db, mailbox, newsletters):
    from newsletter import transactional
    from newsletter.models import OutboxMessage

    from factories import app_links

    signup(client, "reader@example.com", "daily")
    row = db.session.scalars(db.select(OutboxMessage)).one()
    first, again = (transactional.build(db.session, row, app_links()) for _ in range(2))
    assert first is not None and again is not None
    assert first["Message-ID"] == again["Message-ID"]


@pytest.mark.parametrize(
    "value", ["Daily\r\nBcc: victim@example.com", "a\nb", "nul\0"], ids=["crlf", "lf", "nul"]
)
def test_header_values_with_line_breaks_are_refused(value):
    with pytest.raises(compose.UnsafeHeader):
        compose.header_value(value)


def test_a_newsletter_name_with_a_line_break_fails_that_mail_only(client, db, mailbox, newsletters):
    from newsletter.models import OutboxMessage

    newsletters[2].name = "Culture\r\nBcc: victim@example.com"
    db.session.commit()
    signup(client, "one@example.com", "culture")
    signup(client, "two@example.com", "daily")
    sent = mailbox.deliver()
    assert [m["To"] for m in sent] == ["two@example.com"]
    assert all("victim" not in str(m) for m in sent)
    statuses = {r.to_address: r.status for r in db.session.scalars(db.select(OutboxMessage))}
    assert statuses == {"one@example.com": "failed", "two@example.com": "sent"}


def test_non_ascii_subject_and_sender_are_short_encoded_words(client, db, mailbox):
    import re
    from email.header import decode_header, make_header

    from factories import make_newsletter

    make_newsletter(
        "kyiv",
        "Щоденний брифінг Київ Індепендент: головне за день 🇺🇦",
        from_name="Редакція новин «Київ Індепендент»",
        from_address="news@news.example.org",
    )
    signup(client, "reader@example.com", "kyiv")
    (mail,) = mailbox.deliver()
    head = mailbox.transport.raw[-1].split(b"\r\n\r\n", 1)[0].decode("ascii")
    words = re.findall(r"=\?[^?]+\?[bBqQ]\?[^?]*\?=", head)
    assert words and max(len(w) for w in words) <= 75
    long_lines = [line for line in head.split("\r\n") if len(line) > 78]
    assert not [line for line in long_lines if "=?" in line]

    def decoded(name: str) -> str:
        value = re.search(rf"^{name}: (.*?)\r\n(?! )", head, re.M | re.S).group(1)
        return str(make_header(decode_header(value.replace("\r\n", ""))))

    assert decoded("Subject") == (
        "Please confirm your subscription to Щоденний брифінг Київ Індепендент: головне за день 🇺🇦"
    )
    assert decoded("From") == "Редакція новин «Київ Індепендент» <news@news.example.org>"
    assert mailbox.transport.envelopes[-1][0] == "news@news.example.org"


class _BrokenOnce(MemoryTransport):
    """Fails once with an error that is no server's answer, then sends; counts its closes."""

    def __init__(self) -> None:
        super().__init__()
        self.broken, self.closed = True, 0

    def send_raw(self, sender, recipients, data):  # type: ignore[no-untyped-def]
        if self.broken:
            self.broken = False
            raise RuntimeError("socket in a strange state")
        super().send_raw(sender, recipients, data)

    def close(self) -> None:
        self.closed += 1


def test_a_fault_of_our_own_while_sending_retries_the_mail_later(client, db, newsletters):
    signup(client, "reader@example.com", "daily")
    transport = _BrokenOnce()
    box = Mailbox(transport)
    assert box.deliver() == []

    row = db.session.scalars(db.select(OutboxMessage)).one()
    assert (row.status, row.attempts) == ("queued", 1)
    assert row.last_error == "RuntimeError: socket in a strange state"
    assert row.next_attempt_at > utcnow()
    assert transport.closed == 1  # the connection is not used again as it was

    db.session.execute(update(OutboxMessage).values(next_attempt_at=utcnow()))
    db.session.commit()
    (mail,) = box.deliver()
    assert mail["To"] == "reader@example.com"

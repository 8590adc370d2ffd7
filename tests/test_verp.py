"""Envelope senders with a signed tag (VERP): a returned mail names its delivery, not its reader."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from newsletter.digests import states
from newsletter.links import DELIVERY, OUTBOX, Tag
from newsletter.mail.transport import MemoryTransport
from newsletter.models import Delivery, OutboxMessage

from factories import Mailbox, add_item, add_reader, app_links, send_all, signup

VERP = re.compile(r"bounces\+([do][0-9]+-[a-z2-7]{16})@news\.example\.org")


@pytest.fixture
def app_config() -> dict[str, object]:
    return {
        "BOUNCE_ADDRESS": "bounces@news.example.org",
        "UNSUBSCRIBE_MAILTO": "unsubscribe@news.example.org",
    }


def test_a_confirmation_goes_with_a_tag_naming_its_outbox_row(client, db, newsletters):
    signup(client, "reader@example.com", "daily")
    mailbox = Mailbox()
    mailbox.deliver()
    [(sender, recipients)] = mailbox.transport.envelopes
    match = VERP.fullmatch(sender)
    assert match and recipients == ["reader@example.com"]
    assert "reader" not in sender
    row = db.session.scalars(select(OutboxMessage)).one()
    assert app_links().read_tag(match[1]) == Tag(OUTBOX, row.id)
    # A server that changes the local part's case changes nothing.
    assert app_links().read_tag(match[1].upper()) == Tag(OUTBOX, row.id)


def test_each_digest_mail_goes_with_its_own_tag(db, daily):
    add_item(db, daily, "Story")
    add_reader(db, daily, "one@example.com")
    add_reader(db, daily, "two@example.com")
    states.start(db.session, states.compose(db.session, daily))
    transport = MemoryTransport()
    send_all(db, transport)
    tags = [app_links().read_tag(VERP.fullmatch(sender)[1]) for sender, _ in transport.envelopes]
    deliveries = db.session.scalars(select(Delivery.id).order_by(Delivery.id)).all()
    assert tags == [Tag(DELIVERY, d) for d in deliveries]
    # The From header is the list's, as before.
    assert {m["From"] for m in transport.messages} == {"Daily Desk <daily@news.example.org>"}


def test_a_forged_or_altered_tag_names_nothing(app):
    made = app_links()
    good = VERP.fullmatch(made.envelope_sender(DELIVERY, 41))[1]
    assert made.read_tag(good) == Tag(DELIVERY, 41)
    assert made.read_tag(good.replace("d41", "d42")) is None
    assert made.read_tag(good[:-1] + ("a" if good[-1] != "a" else "b")) is None
    assert made.read_tag("d41-aaaaaaaaaaaaaaaa") is None


def test_the_mailto_of_list_unsubscribe_names_the_reader_and_the_list(db, daily):
    add_item(db, daily, "Story")
    reader = add_reader(db, daily, "one@example.com")
    states.start(db.session, states.compose(db.session, daily))
    transport = MemoryTransport()
    send_all(db, transport)
    header = transport.messages[0]["List-Unsubscribe"]
    mailto = re.search(r"<mailto:unsubscribe\+(u[0-9]+x[0-9]+-[a-z2-7]{16})@news\.example\.org"
                       r"\?subject=unsubscribe>", header)  # fmt: skip
    assert mailto, header
    subscriber_id, newsletter_id, signature = app_links().read_unsubscribe_tag(mailto[1])
    assert (subscriber_id, newsletter_id) == (reader.id, daily.id)
    assert app_links().unsubscribe_tag_matches(
        subscriber_id, newsletter_id, signature, reader.token_key
    )
    assert not app_links().unsubscribe_tag_matches(subscriber_id, newsletter_id, signature, "other")


def test_without_a_bounce_address_the_envelope_sender_is_the_from_address(
    app, client, db, newsletters
):
    app.config["BOUNCE_ADDRESS"] = None
    signup(client, "reader@example.com", "daily")
    mailbox = Mailbox()
    mailbox.deliver()
    assert mailbox.transport.envelopes[0][0] == "daily@news.example.org"

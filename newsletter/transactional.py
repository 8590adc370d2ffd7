"""What each outbox row becomes when sent: a confirmation, a welcome, a test copy, a leave link.

Built at the last moment from the rows as they are then: a reader who confirmed, left or
was erased since the row was queued gets nothing that no longer applies.
"""

from __future__ import annotations

from datetime import datetime
from email import message_from_bytes
from email.message import EmailMessage

from flask_babel import force_locale
from flask_babel import gettext as _
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter import archive, subscriptions, suppression, texts
from newsletter.digests.compose import Content, PreparedDigest
from newsletter.languages import DEFAULT, known
from newsletter.links import TEST_READER, Links
from newsletter.mail import compose
from newsletter.mail.outbox import Withheld
from newsletter.models import (
    Digest,
    MailKind,
    OutboxMessage,
    Subscriber,
    Subscription,
    SubscriptionStatus,
)


def build(session: Session, row: OutboxMessage, links: Links) -> EmailMessage | None:
    """The mail a row stands for, or None when the reason for it has gone.

    Withheld when its address may not be mailed at all: whatever the kind, whoever queued it.
    """
    with texts.one_reading():
        return _build(session, row, links)


def _build(session: Session, row: OutboxMessage, links: Links) -> EmailMessage | None:
    why = suppression.reason(session, row.to_address)
    if why in suppression.STOPS_MAIL:
        raise Withheld(f"address suppressed: {why}")
    if row.kind == MailKind.DIGEST_TEST:
        return _digest_test(session, row, links)
    subscriber = session.get(Subscriber, row.subscriber_id) if row.subscriber_id else None
    if subscriber is None:
        return None
    # Written in the reader's language, as it is when the mail goes.
    # An imported tag (en-GB, pt-BR) counts as its language when it is one of ours.
    with force_locale(known(subscriber.locale) or DEFAULT):
        return _for_reader(session, row, links, subscriber)


def _for_reader(
    session: Session, row: OutboxMessage, links: Links, subscriber: Subscriber
) -> EmailMessage | None:
    if row.kind == MailKind.CONFIRMATION:
        pairs = [(sid, str(nonce)) for sid, nonce in row.payload.get("subscriptions", [])]  # type: ignore[union-attr]
        pending = subscriptions.still_confirmable(subscriber, pairs)
        if not pending:
            return None
        imported = row.payload.get("reason") == subscriptions.IMPORTED
        return compose.confirmation(
            links,
            subscriber,
            pending,
            row.message_key,
            imported=imported,
            since=_on_list_since([s for s, _ in pending], row) if imported else None,
        )
    if row.kind == MailKind.WELCOME:
        confirmed = [
            s
            for s in _welcomed(session, row.payload)
            if s.status == SubscriptionStatus.CONFIRMED and s.subscriber_id == subscriber.id
        ]
        return compose.welcome(links, confirmed, row.message_key) if confirmed else None
    if row.kind == MailKind.LEAVE_LINK:
        subscription = session.get(Subscription, row.payload.get("subscription"))
        if subscription is None or not subscriptions.can_unsubscribe(subscription):
            return None  # left already: nothing to ask
        return compose.leave_link(links, subscription, row.message_key)
    raise ValueError(f"unknown mail kind {row.kind!r}")


def _welcomed(session: Session, payload: dict[str, object]) -> list[Subscription]:
    """The subscriptions a welcome row is about: {"subscriptions": [ids]}, or one (older rows)."""
    ids = payload.get("subscriptions")
    if not isinstance(ids, list):
        ids = [payload.get("subscription")]
    found = (session.get(Subscription, sid) for sid in ids if isinstance(sid, int))
    return [s for s in found if s is not None]


def _on_list_since(pending: list[Subscription], row: OutboxMessage) -> datetime | None:
    """When an imported reader was on the lists from, if the import gave a date before it ran."""
    since = min(s.subscribed_at for s in pending)
    return since if since.date() < row.created_at.date() else None


def _digest_test(session: Session, row: OutboxMessage, links: Links) -> EmailMessage | None:
    """An editor's test copy of a digest, as a reader would get it, marked as a test."""
    digest = session.get(Digest, row.payload.get("digest"))
    if digest is None or digest.newsletter is None:
        return None
    reader = session.scalar(
        select(Subscriber).where(Subscriber.email_key == row.to_address.lower())
    )
    # In the tester's language when they read the list too.
    locale = known(reader.locale if reader else None) or DEFAULT
    with force_locale(locale):
        subject = _("[Test] %(subject)s", subject=digest.subject)
    content = Content(
        digest.newsletter, subject, digest.intro, digest.items, archive.mail_path(digest)
    )
    # Test links, even for a tester who reads the list: following one leaves nothing, and
    # its page says why.
    prepared = PreparedDigest(content, row.message_key, links, locale=locale)
    data = prepared.message(0, row.to_address, TEST_READER)
    message = message_from_bytes(data, policy=compose.POLICY)
    assert isinstance(message, EmailMessage)
    return message

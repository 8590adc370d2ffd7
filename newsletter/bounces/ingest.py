"""Returned mail and complaints coming in: matched to the mail they answer, recorded, acted on.

Every event is kept (`BounceEvent`) and shows in the person's consent trail. A hard bounce
(5.x.x) suppresses the address at once; soft bounces (4.x.x) do once `Rules.soft_limit` of
them came back within `Rules.window` with no good delivery between; a complaint suppresses at
once, which also takes the reader off every list. A mail to the unsubscribe address takes its
reader off the list its tag names. Auto-replies and readers' answers are left alone, counted.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from newsletter import subscriptions, suppression
from newsletter.addresses import address_hash
from newsletter.bounces import parse, sources, webhooks
from newsletter.links import DELIVERY, Links
from newsletter.models import (
    BounceEvent,
    BounceKind,
    ConsentAction,
    ConsentEvent,
    Delivery,
    Digest,
    Newsletter,
    OutboxMessage,
    Subscriber,
    Subscription,
    SuppressionReason,
    utcnow,
)

log = logging.getLogger(__name__)

# What each kind of event does to the address, and what it reads as in the consent trail.
_KINDS = {
    parse.Kind.HARD: BounceKind.HARD,
    parse.Kind.SOFT: BounceKind.SOFT,
    parse.Kind.COMPLAINT: BounceKind.COMPLAINT,
}
_TRAIL = {
    BounceKind.HARD: ConsentAction.HARD_BOUNCE,
    BounceKind.SOFT: ConsentAction.SOFT_BOUNCE,
    BounceKind.COMPLAINT: ConsentAction.COMPLAINED,
}
_SUPPRESSES = {
    BounceKind.HARD: SuppressionReason.BOUNCED,
    BounceKind.SOFT: SuppressionReason.BOUNCED,
    BounceKind.COMPLAINT: SuppressionReason.COMPLAINED,
}


@dataclass(frozen=True)
class Rules:
    """When soft bounces add up to a suppression."""

    soft_limit: int = 3
    window: timedelta = timedelta(days=30)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Rules:
        return cls(soft_limit=max(1, int(config.get("SOFT_BOUNCE_LIMIT") or 3)))


@dataclass(frozen=True)
class Target:
    """The mail an event is about, as far as it could be told, and its address."""

    address: str  # lowercased
    subscriber: Subscriber | None = None
    newsletter_id: int | None = None
    digest_id: int | None = None
    delivery_id: int | None = None
    outbox_message_id: int | None = None
    sent_at: datetime | None = None


# --- finding the mail an event answers ---------------------------------------------------------


def _of_delivery(session: Session, delivery_id: int, key: str | None = None) -> Target | None:
    found = session.execute(
        select(Delivery, Digest.newsletter_id, Digest.message_key, Subscriber)
        .join(Digest, Digest.id == Delivery.digest_id)
        .join(Subscription, Subscription.id == Delivery.subscription_id)
        .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .where(Delivery.id == delivery_id)
    ).first()
    if found is None or (key is not None and found.message_key != key):
        return None
    delivery, newsletter_id, _, subscriber = found
    return Target(
        subscriber.email_key,
        subscriber,
        newsletter_id,
        delivery.digest_id,
        delivery.id,
        sent_at=delivery.sent_at,
    )


def _of_outbox(session: Session, row: OutboxMessage | None) -> Target | None:
    if row is None:
        return None
    subscriber = session.get(Subscriber, row.subscriber_id) if row.subscriber_id else None
    newsletter_id = None
    if row.kind == "welcome":
        subscription = session.get(Subscription, row.payload.get("subscription"))
        newsletter_id = subscription.newsletter_id if subscription else None
    elif row.kind == "confirmation":
        pairs = row.payload.get("subscriptions") or []
        subscription = session.get(Subscription, pairs[0][0]) if pairs else None
        newsletter_id = subscription.newsletter_id if subscription else None
    return Target(
        row.to_address.lower(),
        subscriber,
        newsletter_id,
        outbox_message_id=row.id,
        sent_at=row.sent_at,
    )


def _of_message_id(session: Session, message_id: str | None) -> Target | None:
    """Our Message-IDs: <key.delivery@domain> for a digest, <key@domain> for the outbox."""
    local = (message_id or "").strip().strip("<>").rpartition("@")[0]
    if not local:
        return None
    key, dot, number = local.rpartition(".")
    if dot and number.isdigit() and key:
        return _of_delivery(session, int(number), key)
    row = session.scalar(select(OutboxMessage).where(OutboxMessage.message_key == local))
    return _of_outbox(session, row)


def _of_address(
    session: Session, addresses: Iterable[str], list_id: str | None = None
) -> Target | None:
    for address in addresses:
        key = address.strip().lower()
        subscriber = session.scalar(select(Subscriber).where(Subscriber.email_key == key))
        if subscriber is None:
            continue
        newsletter_id = None
        slug = (list_id or "").strip().strip("<>").partition(".")[0]
        if slug:
            newsletter_id = session.scalar(select(Newsletter.id).where(Newsletter.slug == slug))
        return Target(key, subscriber, newsletter_id)
    return None


def match(
    session: Session,
    links: Links,
    *,
    tag: str | None = None,
    message_id: str | None = None,
    list_id: str | None = None,
    addresses: Iterable[str] = (),
) -> Target | None:
    """The mail an event is about: by its VERP tag, else the original's Message-ID, else the
    address it names (one of ours), with the list its List-Id names."""
    verified = links.read_tag(tag) if tag else None
    if verified is not None:
        if verified.kind == DELIVERY:
            found = _of_delivery(session, verified.row_id)
        else:
            found = _of_outbox(session, session.get(OutboxMessage, verified.row_id))
        if found is not None:
            return found
    return _of_message_id(session, message_id) or _of_address(session, addresses, list_id)


# --- what an event does -------------------------------------------------------------------------


def _soft_limit_reached(session: Session, target: Target, rules: Rules, now: datetime) -> bool:
    """Whether this address's soft bounces since its last good delivery reach the limit.

    A good delivery is a mail sent to the address in the window, before the one this bounce
    answers, for which no bounce came back.
    """
    since = now - rules.window
    hashed = address_hash(target.address)
    events = session.execute(
        select(
            BounceEvent.created_at, BounceEvent.delivery_id, BounceEvent.outbox_message_id
        ).where(
            BounceEvent.email_hash == hashed,
            BounceEvent.kind == BounceKind.SOFT,
            BounceEvent.created_at >= since,
        )
    ).all()
    last_good = None
    if target.subscriber is not None:
        before = target.sent_at or now
        bounced_deliveries = {e.delivery_id for e in events if e.delivery_id}
        bounced_mails = {e.outbox_message_id for e in events if e.outbox_message_id}
        good_delivery = session.scalar(
            select(func.max(Delivery.sent_at))
            .join(Subscription, Subscription.id == Delivery.subscription_id)
            .where(
                Subscription.subscriber_id == target.subscriber.id,
                Delivery.sent_at >= since,
                Delivery.sent_at < before,
                Delivery.id.not_in(bounced_deliveries or {0}),
            )
        )
        good_mail = session.scalar(
            select(func.max(OutboxMessage.sent_at)).where(
                OutboxMessage.subscriber_id == target.subscriber.id,
                OutboxMessage.sent_at >= since,
                OutboxMessage.sent_at < before,
                OutboxMessage.id.not_in(bounced_mails or {0}),
            )
        )
        last_good = max((t for t in (good_delivery, good_mail) if t is not None), default=None)
    count = sum(1 for e in events if last_good is None or e.created_at > last_good)
    return count >= rules.soft_limit


def record(
    session: Session,
    target: Target,
    kind: BounceKind,
    *,
    source: str,
    rules: Rules,
    status: str | None = None,
    diagnostic: str | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> BounceEvent | None:
    """Keep one event and act on it, in the caller's transaction; None for a replay."""
    if event_id is not None:
        seen = session.scalar(select(BounceEvent.id).where(BounceEvent.event_id == event_id))
        if seen is not None:
            return None
    now = utcnow()
    subscriber = target.subscriber
    event = BounceEvent(
        email_hash=address_hash(target.address),
        subscriber_id=subscriber.id if subscriber else None,
        kind=kind,
        status=(status or None) and status[:16],
        diagnostic=(diagnostic or None) and diagnostic[:2000],
        newsletter_id=target.newsletter_id,
        digest_id=target.digest_id,
        delivery_id=target.delivery_id,
        outbox_message_id=target.outbox_message_id,
        source=source[:16],
        event_id=event_id,
        occurred_at=occurred_at,
        created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(event)
    except IntegrityError:
        return None  # the same event, recorded a moment ago by another process
    if subscriber is not None:
        _trail(session, subscriber, kind, source, status, diagnostic)
    stops = kind != BounceKind.SOFT or _soft_limit_reached(session, target, rules, now)
    if stops:
        suppression.suppress(session, target.address, _SUPPRESSES[kind])
        event.suppressed = True
    return event


def _trail(
    session: Session,
    subscriber: Subscriber,
    kind: BounceKind,
    source: str,
    status: str | None,
    diagnostic: str | None,
) -> None:
    """The event in the consent trail of each list the person gets, or is about to."""
    live = session.scalars(
        select(Subscription.id).where(
            Subscription.subscriber_id == subscriber.id,
            Subscription.status.in_(subscriptions.LIVE),
        )
    ).all()
    text = " ".join(part for part in (status, diagnostic) if part)[:1000] or None
    session.add_all(
        ConsentEvent(
            subscription_id=subscription_id,
            action=_TRAIL[kind],
            source=f"bounce:{source}"[:100],
            text_shown=text,
        )
        for subscription_id in live
    )


def _mailto_unsubscribe(session: Session, report: parse.Report, links: Links) -> str:
    """A mail to the unsubscribe address: the list its tag names, or its subject names for
    the subscriber who sent it."""
    subscription = None
    found = links.read_unsubscribe_tag(report.tag) if report.tag else None
    if found is not None:
        subscriber_id, newsletter_id, signature = found
        subscriber = session.get(Subscriber, subscriber_id)
        if subscriber is not None and links.unsubscribe_tag_matches(
            subscriber_id, newsletter_id, signature, subscriber.token_key
        ):
            subscription = next(
                (s for s in subscriber.subscriptions if s.newsletter_id == newsletter_id), None
            )
    elif report.recipients:
        subscription = _named_in_subject(session, report.recipients[0], report.diagnostic)
    if subscription is None:
        return "unmatched"
    origin = subscriptions.Origin(source="mailto")
    before = subscription.status
    subscriptions.unsubscribe(session, subscription, origin, commit=False)
    return "unsubscribe" if before in subscriptions.LIVE else "unchanged"


def _named_in_subject(session: Session, sender: str, subject: str) -> Subscription | None:
    subscriber = session.scalar(
        select(Subscriber).where(Subscriber.email_key == sender.strip().lower())
    )
    if subscriber is None:
        return None
    words = set(subject.lower().replace(",", " ").split())
    named = [s for s in subscriber.subscriptions if s.newsletter.slug in words]
    return named[0] if len(named) == 1 else None


# --- the ways events come in ------------------------------------------------------------------


def refused_at_send(session: Session, row_id: int, exc: Exception, rules: Rules) -> None:
    """An outbox mail whose address the receiving server refused (5xx): a hard bounce; commits."""
    target = _of_outbox(session, session.get(OutboxMessage, row_id))
    if target is not None:
        text = str(exc)
        record(
            session,
            target,
            BounceKind.HARD,
            source="smtp",
            rules=rules,
            status=parse.status_code(text),
            diagnostic=text,
        )
        session.commit()


def ingest_mail(
    session: Session, data: bytes, links: Links, rules: Rules, source: str, *, commit: bool = True
) -> str:
    """Classify, match and record one returned mail; commits unless told not to. Returns what
    it was: hard, soft, complaint, unsubscribe, unchanged, autoreply, other, unmatched or replay."""
    report = parse.parse(
        data, bounce_address=links.bounce_address, unsubscribe_address=links.unsubscribe_mailto
    )
    if report.kind == parse.Kind.UNSUBSCRIBE:
        outcome = _mailto_unsubscribe(session, report, links)
        if commit:
            session.commit()
        return outcome
    kind = _KINDS.get(report.kind)
    if kind is None:
        return str(report.kind)  # an auto-reply or a reader's answer: left alone
    target = match(
        session,
        links,
        tag=report.tag,
        message_id=report.message_id,
        list_id=report.list_id,
        addresses=report.recipients,
    )
    if target is None:
        log.info("returned mail (%s) matches none of ours", kind)
        return "unmatched"
    # The same bytes twice (an mbox read again) are one event.
    event_id = "mail:" + hashlib.sha256(data).hexdigest()
    event = record(
        session,
        target,
        kind,
        source=source,
        rules=rules,
        status=report.status,
        diagnostic=report.diagnostic,
        event_id=event_id,
    )
    if commit:
        session.commit()
    return str(kind) if event is not None else "replay"


def ingest_events(
    session: Session, events: Iterable[webhooks.Event], links: Links, rules: Rules
) -> Counter[str]:
    """Record a provider's events (a webhook's body); commits. Counts what each was."""
    counts: Counter[str] = Counter()
    for item in events:
        kind = _KINDS.get(item.kind)
        target = match(session, links, message_id=item.message_id, addresses=[item.address])
        if kind is None:
            counts["other"] += 1
            continue
        if target is None:
            # Not a reader of ours by that address, yet the address must never be mailed.
            target = Target(item.address.strip().lower())
        event = record(
            session,
            target,
            kind,
            source=item.provider,
            rules=rules,
            status=item.status,
            diagnostic=item.diagnostic,
            event_id=f"{item.provider}:{item.event_id}",
            occurred_at=item.occurred_at,
        )
        counts[str(kind) if event is not None else "replay"] += 1
    session.commit()
    return counts


def ingest_source(
    session: Session,
    source: sources.Source,
    links: Links,
    rules: Rules,
    name: str,
    *,
    batch: int = 200,
) -> Counter[str]:
    """Read every message of a source; each is marked handled once its batch has committed.

    A batch is one transaction, each message in a savepoint of its own: one the database
    refuses stays unhandled and costs the others nothing. A crash before a commit leaves its
    batch unhandled, read again next time, and a message read twice is one event.
    """
    counts: Counter[str] = Counter()
    done: list[sources.Incoming] = []

    def settle() -> None:
        session.commit()
        for incoming in done:
            incoming.handled()
        done.clear()

    for incoming in source:
        try:
            with session.begin_nested():
                outcome = ingest_mail(session, incoming.data, links, rules, name, commit=False)
        except OperationalError:
            # The database is away: every message would fail; they all stay unhandled.
            raise
        except Exception:
            log.exception("returned mail %s could not be recorded", incoming.name)
            counts["error"] += 1
            continue
        done.append(incoming)
        counts[outcome] += 1
        if len(done) >= batch:
            settle()
    settle()
    return counts


def source_name(source: sources.Source) -> str:
    """How a source is named on the events it brings: pipe, mbox, maildir or imap."""
    names = {sources.Stream: "pipe", sources.Mbox: "mbox", sources.Maildir: "maildir"}
    return names.get(type(source), "imap")


class ImapRunner:
    """The worker's runner for returned mail in an IMAP mailbox: read every `every` seconds."""

    def __init__(
        self,
        url: str,
        links: Links,
        rules: Rules,
        every: float = 60.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.links = links
        self.rules = rules
        self.every = every
        self.timer = timer
        self._next = 0.0

    def step(self, session: Session, stop: Any = None) -> int:
        """Read the mailbox if it is time to; how many messages it handled."""
        if self.timer() < self._next:
            return 0
        self._next = self.timer() + self.every
        with sources.Imap.from_url(self.url) as mailbox:
            counts = ingest_source(session, mailbox, self.links, self.rules, "imap")
        if counts:
            log.info("returned mail from IMAP: %s", dict(counts))
        return sum(counts.values())

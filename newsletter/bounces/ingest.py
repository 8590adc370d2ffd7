"""Returned mail and complaints coming in: matched to the mail they answer, recorded, acted on.

Every event is kept (`BounceEvent`) and shows in the person's consent trail. A hard bounce
(5.x.x) suppresses the address at once; soft bounces (4.x.x) do once `Rules.soft_limit` of
them came back within `Rules.window` with no good delivery between; a complaint suppresses at
once, which also takes the reader off every list. A mail to the unsubscribe address takes its
reader off the list its tag names; one written by hand gets the list's unsubscribe link mailed
to the reader. Auto-replies and readers' answers are left alone, counted.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, Text, bindparam, insert, or_, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, selectinload

from newsletter import metrics, subscriptions, suppression
from newsletter.addresses import address_hash
from newsletter.bounces import parse, sources, webhooks
from newsletter.links import DELIVERY, Links
from newsletter.mail import outbox
from newsletter.models import (
    BounceEvent,
    BounceKind,
    ConsentAction,
    ConsentEvent,
    Delivery,
    Digest,
    MailKind,
    Newsletter,
    OutboxMessage,
    Subscriber,
    Subscription,
    SuppressionReason,
    UTCDateTime,
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
    subscriber_id: int | None = None
    newsletter_id: int | None = None
    digest_id: int | None = None
    delivery_id: int | None = None
    outbox_message_id: int | None = None
    sent_at: datetime | None = None


# --- finding the mail an event answers ---------------------------------------------------------


# Deliveries with what an event about one needs: no objects loaded.
_DELIVERIES = (
    select(
        Delivery.id,
        Delivery.digest_id,
        Delivery.sent_at,
        Digest.newsletter_id,
        Digest.message_key,
        Subscriber.id.label("subscriber_id"),
        Subscriber.email_key,
    )
    .join(Digest, Digest.id == Delivery.digest_id)
    .join(Subscription, Subscription.id == Delivery.subscription_id)
    .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
)
_DELIVERY = _DELIVERIES.where(Delivery.id == bindparam("delivery"))


def _delivery_target(found: Any) -> Target:
    return Target(
        found.email_key,
        found.subscriber_id,
        found.newsletter_id,
        found.digest_id,
        found.id,
        sent_at=found.sent_at,
    )


def _of_delivery(session: Session, delivery_id: int, key: str | None = None) -> Target | None:
    found = session.execute(_DELIVERY, {"delivery": delivery_id}).first()
    if found is None or (key is not None and found.message_key != key):
        return None
    return _delivery_target(found)


def _of_deliveries(session: Session, ids: Iterable[int]) -> dict[int, Target]:
    """The deliveries of a batch's tags, in one statement."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    query = _DELIVERIES.where(Delivery.id.in_(wanted))
    return {row.id: _delivery_target(row) for row in session.execute(query)}


def _of_outbox(session: Session, row: OutboxMessage | None) -> Target | None:
    if row is None:
        return None
    newsletter_id = None
    if row.kind in (MailKind.WELCOME, MailKind.LEAVE_LINK):
        # A welcome names its lists ({"subscriptions": [ids]}); older ones and leave links one.
        ids = row.payload.get("subscriptions") or [row.payload.get("subscription")]
        first = ids[0] if isinstance(ids, list) and ids else None
        subscription = session.get(Subscription, first) if isinstance(first, int) else None
        newsletter_id = subscription.newsletter_id if subscription else None
    elif row.kind == MailKind.CONFIRMATION:
        pairs = row.payload.get("subscriptions") or []
        subscription = session.get(Subscription, pairs[0][0]) if pairs else None
        newsletter_id = subscription.newsletter_id if subscription else None
    return Target(
        row.to_address.lower(),
        row.subscriber_id,
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
    row = session.get(OutboxMessage, found) if (found := _sent_outbox_id(session, local)) else None
    return _of_outbox(session, row)


# Only sent mail comes back: the partial index holds sent mail alone, and the condition is
# written as in the index so that it can answer. SQLite is told to use it (without statistics
# it may walk every sent row by status instead).
_SENT_BY_KEY = "SELECT id FROM outbox_message {hint} WHERE message_key = :key AND status = 'sent'"


def _sent_outbox_id(session: Session, key: str) -> int | None:
    conn = session.connection()
    hint = "INDEXED BY ix_outbox_message_key" if conn.dialect.name == "sqlite" else ""
    return conn.execute(text(_SENT_BY_KEY.format(hint=hint)), {"key": key}).scalar()


def _of_address(
    session: Session, addresses: Iterable[str], list_id: str | None = None
) -> Target | None:
    for address in addresses:
        key = address.strip().lower()
        subscriber = session.scalar(select(Subscriber.id).where(Subscriber.email_key == key))
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
    known: Mapping[int, Target] | None = None,
) -> Target | None:
    """The mail an event is about: by its VERP tag, else the original's Message-ID, else the
    address it names (one of ours), with the list its List-Id names. `known` holds the
    deliveries a batch's tags name, looked up together."""
    verified = links.read_tag(tag) if tag else None
    if verified is not None and known is not None and verified.kind == DELIVERY:
        if verified.row_id in known:
            return known[verified.row_id]
    elif verified is not None:
        if verified.kind == DELIVERY:
            found = _of_delivery(session, verified.row_id)
        else:
            found = _of_outbox(session, session.get(OutboxMessage, verified.row_id))
        if found is not None:
            return found
    return _of_message_id(session, message_id) or _of_address(session, addresses, list_id)


# --- what an event does -------------------------------------------------------------------------


def _soft_limits_reached(
    session: Session, targets: Sequence[Target], rules: Rules, now: datetime
) -> list[bool]:
    """Whether each address's soft bounces since its last good delivery reach the limit.

    A good delivery is a mail sent to the address in the window, before the one this bounce
    answers, for which no bounce came back. Three statements for all the targets: the soft
    bounces of their addresses, the deliveries and the outbox mails of their readers.
    """
    if not targets:
        return []
    since = now - rules.window
    hashes = [address_hash(target.address) for target in targets]
    events: dict[str, list[Any]] = {}
    for row in session.execute(_SOFT_EVENTS, {"hashes": sorted(set(hashes)), "since": since}):
        events.setdefault(row.email_hash, []).append(row)
    readers = sorted({t.subscriber_id for t in targets if t.subscriber_id is not None})
    deliveries: dict[int, list[Any]] = {}
    mails: dict[int, list[Any]] = {}
    if readers:
        wanted = {"readers": readers, "since": since}
        for row in session.execute(_SENT_DELIVERIES, wanted):
            deliveries.setdefault(row.subscriber_id, []).append(row)
        for row in session.execute(_SENT_MAILS, wanted):
            mails.setdefault(row.subscriber_id, []).append(row)
    reached = []
    for target, hashed in zip(targets, hashes, strict=True):
        found = events.get(hashed, [])
        last_good = None
        if target.subscriber_id is not None:
            before = target.sent_at or now
            bounced_deliveries = {e.delivery_id for e in found if e.delivery_id}
            bounced_mails = {e.outbox_message_id for e in found if e.outbox_message_id}
            last_good = max(
                (
                    row.sent_at
                    for sent, bounced in (
                        (deliveries.get(target.subscriber_id, []), bounced_deliveries),
                        (mails.get(target.subscriber_id, []), bounced_mails),
                    )
                    for row in sent
                    if row.sent_at < before and row.id not in bounced
                ),
                default=None,
            )
        count = sum(1 for e in found if last_good is None or e.created_at > last_good)
        reached.append(count >= rules.soft_limit)
    return reached


# The soft bounces of some addresses, since a moment.
_SOFT_EVENTS = select(
    BounceEvent.email_hash,
    BounceEvent.created_at,
    BounceEvent.delivery_id,
    BounceEvent.outbox_message_id,
).where(
    BounceEvent.email_hash.in_(bindparam("hashes", expanding=True)),
    BounceEvent.kind == BounceKind.SOFT,
    BounceEvent.created_at >= bindparam("since", type_=UTCDateTime),
)
# Digest deliveries and outbox mails sent to some readers since a moment.
_SENT_DELIVERIES = (
    select(Subscription.subscriber_id, Delivery.id, Delivery.sent_at)
    .join(Subscription, Subscription.id == Delivery.subscription_id)
    .where(
        Subscription.subscriber_id.in_(bindparam("readers", expanding=True)),
        Delivery.sent_at >= bindparam("since", type_=UTCDateTime),
    )
)
_SENT_MAILS = select(OutboxMessage.subscriber_id, OutboxMessage.id, OutboxMessage.sent_at).where(
    OutboxMessage.subscriber_id.in_(bindparam("readers", expanding=True)),
    OutboxMessage.sent_at >= bindparam("since", type_=UTCDateTime),
)


@dataclass(frozen=True)
class Returned:
    """One bounce or complaint to record: what it is, about which mail, where it came from."""

    target: Target
    kind: BounceKind
    source: str
    status: str | None = None
    diagnostic: str | None = None
    event_id: str | None = None  # the same id twice is one event
    occurred_at: datetime | None = None
    # Whether it may change anything: kept and counted either way. Not when anyone could
    # have written it (see `_read`).
    acts: bool = True


# Each event in the consent trail of every list the person gets, or is about to.
_TRAIL_ROWS = insert(ConsentEvent.__table__).from_select(
    ["subscription_id", "action", "source", "text_shown", "created_at"],
    select(
        Subscription.id,
        bindparam("action", type_=String),
        bindparam("source", type_=String),
        bindparam("text", type_=Text),
        bindparam("now", type_=UTCDateTime),
    ).where(
        Subscription.subscriber_id == bindparam("subscriber"),
        # Spelled out: an IN list cannot be run once per row of an executemany.
        or_(*(Subscription.status == status for status in subscriptions.LIVE)),
    ),
)


def record_many(session: Session, items: Sequence[Returned], rules: Rules) -> list[int | None]:
    """Keep events and act on them, in the caller's transaction, a few statements for all.

    Returns each one's event id, None for a replay (an id seen before, or earlier in `items`).
    A hard bounce or a complaint suppresses its address; a soft bounce when the count of them
    since the address's last good delivery reaches the limit. Each event joins the consent
    trail of every list its reader gets or is about to. An event that does not act is only
    kept.
    """
    now = utcnow()
    ids = {item.event_id for item in items if item.event_id is not None}
    seen = set(session.scalars(select(BounceEvent.event_id).where(BounceEvent.event_id.in_(ids))))
    new: list[tuple[int, Returned]] = []
    for position, item in enumerate(items):
        if item.event_id is not None:
            if item.event_id in seen:
                continue
            seen.add(item.event_id)
        new.append((position, item))
    results: list[int | None] = [None] * len(items)
    if not new:
        return results
    rows = [
        {
            "email_hash": address_hash(item.target.address),
            "subscriber_id": item.target.subscriber_id,
            "kind": item.kind,
            "status": (item.status or None) and item.status[:16],
            "diagnostic": (item.diagnostic or None) and item.diagnostic[:2000],
            "newsletter_id": item.target.newsletter_id,
            "digest_id": item.target.digest_id,
            "delivery_id": item.target.delivery_id,
            "outbox_message_id": item.target.outbox_message_id,
            "source": item.source[:16],
            "event_id": item.event_id,
            "suppressed": False,
            "occurred_at": item.occurred_at,
            "created_at": now,
        }
        for _, item in new
    ]
    # One INSERT for all (executemany with RETURNING); a concurrent twin is an IntegrityError
    # the caller answers by recording one at a time.
    created = _insert_events(session, rows)
    trail = [
        {
            "subscriber": item.target.subscriber_id,
            "action": _TRAIL[item.kind],
            "source": f"bounce:{item.source}"[:100],
            "text": " ".join(p for p in (item.status, item.diagnostic) if p)[:1000] or None,
            "now": now,
        }
        for _, item in new
        if item.target.subscriber_id is not None and item.acts
    ]
    if trail:
        session.execute(_TRAIL_ROWS, trail)
    soft = [item.target for _, item in new if item.acts and item.kind == BounceKind.SOFT]
    reached = iter(_soft_limits_reached(session, soft, rules, now))
    suppressing: dict[SuppressionReason, set[str]] = {}
    stopped: list[int] = []
    for event, (position, item) in zip(created, new, strict=True):
        results[position] = event
        if item.kind == BounceKind.COMPLAINT:
            metrics.COMPLAINTS.inc()
        else:
            metrics.BOUNCES.labels(item.kind).inc()
        if not item.acts:
            continue
        if item.kind == BounceKind.SOFT and not next(reached):
            continue
        suppressing.setdefault(_SUPPRESSES[item.kind], set()).add(item.target.address)
        stopped.append(event)
    for reason, addresses in suppressing.items():
        suppression.suppress_many(session, addresses, reason)
    if stopped:
        session.execute(
            update(BounceEvent).where(BounceEvent.id.in_(stopped)).values(suppressed=True)
        )
    return results


def _insert_events(session: Session, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert event rows; their ids, in the order of `rows`."""
    table = BounceEvent.__table__
    if all(row["event_id"] is not None for row in rows):
        # Told apart by their (unique) event ids, the rows may come back in any order, which
        # lets SQLite insert them many to a statement rather than one at a time.
        statement = insert(table).returning(table.c.id, table.c.event_id)
        ids = {event_id: id_ for id_, event_id in session.execute(statement, rows)}
        return [ids[row["event_id"]] for row in rows]
    statement = insert(table).returning(table.c.id, sort_by_parameter_order=True)
    return list(session.execute(statement, rows).scalars())


def record(session: Session, item: Returned, rules: Rules) -> int | None:
    """Keep one event and act on it, in the caller's transaction; its id, None for a replay."""
    return record_many(session, [item], rules)[0]


def _mailto_unsubscribe(session: Session, report: parse.Report, links: Links) -> str:
    """A mail to the unsubscribe address.

    With its tag (the address in our List-Unsubscribe header, signed for the reader and the
    list), it takes the reader off that list. Without, a person wrote by hand, naming the
    list in the subject: their From proves nothing, so the list's unsubscribe link is mailed
    to the address we have, at most once a day.
    """
    found = links.read_unsubscribe_tag(report.tag) if report.tag else None
    if found is None:
        written = report.recipients and _named_in_subject(
            session, report.recipients[0], report.diagnostic
        )
        return _send_leave_link(session, written) if written else "unmatched"
    subscriber_id, newsletter_id, signature = found
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None or not links.unsubscribe_tag_matches(
        subscriber_id, newsletter_id, signature, subscriber.token_key
    ):
        return "unmatched"
    subscription = next(
        (s for s in subscriber.subscriptions if s.newsletter_id == newsletter_id), None
    )
    if subscription is None:
        return "unmatched"
    before = subscription.status
    subscriptions.unsubscribe(
        session, subscription, subscriptions.Origin(source="mailto"), commit=False
    )
    return "unsubscribe" if before in subscriptions.LIVE else "unchanged"


# However many mails ask, a reader gets one leave link a day.
_LEAVE_LINK_EVERY = timedelta(days=1)


def _send_leave_link(session: Session, subscription: Subscription) -> str:
    if not subscriptions.can_unsubscribe(subscription):
        return "unchanged"
    since = utcnow() - _LEAVE_LINK_EVERY
    recent = session.scalar(
        select(OutboxMessage.id)
        .where(
            OutboxMessage.subscriber_id == subscription.subscriber_id,
            OutboxMessage.kind == MailKind.LEAVE_LINK,
            OutboxMessage.created_at >= since,
        )
        .limit(1)
    )
    if recent is not None:
        return "unchanged"
    outbox.enqueue(
        session,
        MailKind.LEAVE_LINK,
        subscription.subscriber_id,
        subscription.subscriber.email,
        {"subscription": subscription.id},
    )
    return "leave-link"


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
        hard = Returned(target, BounceKind.HARD, "smtp", parse.status_code(text), text)
        record(session, hard, rules)
        session.commit()


def _parse(data: bytes, links: Links) -> parse.Report:
    return parse.parse(
        data, bounce_address=links.bounce_address, unsubscribe_address=links.unsubscribe_mailto
    )


def _read(
    session: Session,
    data: bytes,
    report: parse.Report,
    links: Links,
    source: str,
    known: Mapping[int, Target] | None = None,
) -> Returned | str:
    """What one returned mail is: an event to record, or what it was when there is none
    (a mailto unsubscribe, applied here; an auto-reply, a reader's answer, a stranger's)."""
    if report.kind == parse.Kind.UNSUBSCRIBE:
        return _mailto_unsubscribe(session, report, links)
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
        known=known,
    )
    if target is None:
        log.info("returned mail (%s) matches none of ours", kind)
        return "unmatched"
    # With VERP on, returned mail of ours comes back to an address carrying a signed tag.
    # One without names an address or a Message-ID that anyone could write, to have a
    # reader suppressed: it is kept for the figures and changes nothing.
    acts = not links.bounce_address or _tagged(links, report.tag, target)
    if not acts:
        log.info("returned mail (%s) without our tag: kept, not acted on", kind)
    # The same bytes twice (an mbox read again) are one event.
    event_id = "mail:" + hashlib.sha256(data).hexdigest()
    return Returned(target, kind, source, report.status, report.diagnostic, event_id, acts=acts)


def _tagged(links: Links, tag: str | None, target: Target) -> bool:
    """Whether the mail was matched by its signed VERP tag."""
    verified = links.read_tag(tag) if tag else None
    if verified is None:
        return False
    named = target.delivery_id if verified.kind == DELIVERY else target.outbox_message_id
    return named == verified.row_id


def ingest_mail(
    session: Session, data: bytes, links: Links, rules: Rules, source: str, *, commit: bool = True
) -> str:
    """Classify, match and record one returned mail; commits unless told not to. Returns what
    it was: hard, soft, complaint, unsubscribe, leave-link, unchanged, autoreply, other, unmatched
    or replay."""
    read = _read(session, data, _parse(data, links), links, source)
    outcome = read
    if isinstance(read, Returned):
        outcome = str(read.kind) if record(session, read, rules) is not None else "replay"
    if commit:
        session.commit()
    return str(outcome)


# The longest event id the table keeps.
EVENT_ID_LENGTH = BounceEvent.__table__.c.event_id.type.length


def event_key(provider: str, event_id: str) -> str:
    """How a provider's event is kept: its id as sent when that fits on one line in the column,
    else a digest of it, so that a replay of the same event still matches."""
    key = f"{provider}:{event_id}"
    if len(key) <= EVENT_ID_LENGTH and key.isprintable():
        return key
    digest = hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{provider}:sha256:{digest}"


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
        returned = Returned(
            target,
            kind,
            item.provider,
            item.status,
            item.diagnostic,
            event_key(item.provider, item.event_id),
            item.occurred_at,
        )
        event = record(session, returned, rules)
        counts[str(kind) if event is not None else "replay"] += 1
    session.commit()
    return counts


def _batch(
    session: Session, chunk: Sequence[sources.Incoming], links: Links, rules: Rules, name: str
) -> list[str]:
    """A batch of returned mail read and its events recorded together; not committed."""
    reports = [_parse(incoming.data, links) for incoming in chunk]
    tags = [links.read_tag(report.tag) if report.tag else None for report in reports]
    known = _of_deliveries(session, (t.row_id for t in tags if t and t.kind == DELIVERY))
    # Held while the batch is read: the session keeps loaded rows only while they are used.
    readers = _unsubscribing(session, reports, links)
    reads = [
        _read(session, incoming.data, report, links, name, known)
        for incoming, report in zip(chunk, reports, strict=True)
    ]
    del readers
    returned = [read for read in reads if isinstance(read, Returned)]
    ids = iter(record_many(session, returned, rules))
    return [
        (str(read.kind) if next(ids) is not None else "replay")
        if isinstance(read, Returned)
        else read
        for read in reads
    ]


def _unsubscribing(
    session: Session, reports: Sequence[parse.Report], links: Links
) -> list[Subscriber]:
    """The readers a batch's tagged mailto unsubscribes name, with their subscriptions, loaded
    in one statement: each unsubscribe then finds them in the session, and the changes of all
    go to the database together."""
    ids = set()
    for report in reports:
        if report.kind == parse.Kind.UNSUBSCRIBE and report.tag:
            found = links.read_unsubscribe_tag(report.tag)
            if found is not None:
                ids.add(found[0])
    if not ids:
        return []
    query = (
        select(Subscriber)
        .where(Subscriber.id.in_(sorted(ids)))
        .options(selectinload(Subscriber.subscriptions))
    )
    return list(session.scalars(query))


def _one_by_one(
    session: Session, chunk: Sequence[sources.Incoming], links: Links, rules: Rules, name: str
) -> list[str]:
    """The same batch, each message in a savepoint: one the database refuses stays unhandled."""
    outcomes = []
    for incoming in chunk:
        try:
            with session.begin_nested():
                outcomes.append(
                    ingest_mail(session, incoming.data, links, rules, name, commit=False)
                )
        except OperationalError:
            raise
        except Exception:
            log.exception("returned mail %s could not be recorded", incoming.name)
            outcomes.append("error")
    return outcomes


def ingest_source(
    session: Session,
    source: sources.Source,
    links: Links,
    rules: Rules,
    name: str,
    *,
    batch: int = 1000,
) -> Counter[str]:
    """Read every message of a source; each is marked handled once its batch has committed.

    A batch is one transaction and a few statements. Its events land at random places in the
    tables' indexes (an address's hash, an event id), so a larger batch writes fewer pages per
    message; 1000 holds a SQLite write lock for a fraction of a second. Should one of its
    messages be refused (another process recording the same event at that moment), the batch
    is done again a message at a time. A crash before a commit leaves its batch unhandled,
    read again next time; a message read twice is one event. The database away stops the
    run (OperationalError).
    """
    counts: Counter[str] = Counter()
    chunk: list[sources.Incoming] = []

    def settle() -> None:
        try:
            outcomes = _batch(session, chunk, links, rules, name)
            session.commit()
        except OperationalError:
            raise
        except Exception as exc:
            log.warning("a batch of returned mail is recorded one by one: %r", exc)
            session.rollback()
            outcomes = _one_by_one(session, chunk, links, rules, name)
            session.commit()
        for incoming, outcome in zip(chunk, outcomes, strict=True):
            counts[outcome] += 1
            if outcome != "error":
                incoming.handled()
        chunk.clear()

    for incoming in source:
        chunk.append(incoming)
        if len(chunk) >= batch:
            settle()
    if chunk:
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

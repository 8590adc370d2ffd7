"""Subscribers as the admin sees them: search, one person's record, erasure, the audit trail."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask_babel import gettext as _
from flask_babel import lazy_gettext
from sqlalchemy import ColumnElement, Select, delete, distinct, exists, func, select, update
from sqlalchemy.orm import Session

from newsletter import signups, suppression
from newsletter.addresses import address_hash, mask, normalize_email
from newsletter.errors import UserError
from newsletter.models import (
    AuditEvent,
    BounceEvent,
    ConsentEvent,
    Delivery,
    Digest,
    Newsletter,
    OutboxMessage,
    Subscriber,
    Subscription,
    Suppression,
    SuppressionReason,
)

PAGE_SIZE = 50


@dataclass(frozen=True)
class Filter:
    """What the subscriber list is narrowed to."""

    search: str = ""
    newsletter: str = ""  # slug
    status: str = ""

    def as_dict(self) -> dict[str, str]:
        """The filter's set fields, for the audit trail."""
        return {k: v for k, v in vars(self).items() if v}

    def as_query(self) -> dict[str, str]:
        """The filter as the list page's query string names it."""
        names = {"search": "q", "newsletter": "newsletter", "status": "status"}
        return {names[k]: v for k, v in self.as_dict().items()}


def apply(query: Select[Any], where: Filter) -> Select[Any]:
    """Narrow a query over subscriptions joined to subscribers and newsletters."""
    if where.search:
        # Addresses are stored lowercased in email_key; a substring of one matches. The people
        # are found first, from the narrow subscriber table, so a rare address is not looked
        # for through every subscription.
        people = select(Subscriber.id).where(
            Subscriber.email_key.contains(where.search.lower(), autoescape=True)
        )
        query = query.where(Subscription.subscriber_id.in_(people))
    if where.newsletter:
        query = query.where(Newsletter.slug == where.newsletter)
    if where.status:
        query = query.where(Subscription.status == where.status)
    return query


@dataclass(frozen=True)
class Person:
    """One person on the subscriber list: their address and each list with its state."""

    id: int
    email: str
    since: datetime
    lists: list[tuple[str, str]]  # (newsletter name, subscription status)


# Below this many matching people, the page is taken from their ids; above, by walking the
# people newest first and keeping those with a matching subscription (matches are dense).
_FEW = 5000


def _subscription_matches(where: Filter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if where.newsletter:
        by_slug = select(Newsletter.id).where(Newsletter.slug == where.newsletter)
        conditions.append(Subscription.newsletter_id == by_slug.scalar_subquery())
    if where.status:
        conditions.append(Subscription.status == where.status)
    return conditions


def _address_matches(where: Filter) -> ColumnElement[bool]:
    # Addresses are stored lowercased in email_key; a substring of one matches.
    return Subscriber.email_key.contains(where.search.lower(), autoescape=True)


def people_total(session: Session, where: Filter) -> int:
    """How many people the filter matches."""
    conditions = _subscription_matches(where)
    if not conditions:
        query = select(func.count()).select_from(Subscriber)
        if where.search:
            query = query.where(_address_matches(where))
        return session.scalar(query) or 0
    # One subscription per person and list: with a list named, rows are people (an index count).
    people = func.count() if where.newsletter else func.count(distinct(Subscription.subscriber_id))
    query = select(people).where(*conditions)
    if where.search:
        query = query.where(
            Subscription.subscriber_id.in_(select(Subscriber.id).where(_address_matches(where)))
        )
    return session.scalar(query) or 0


def people_page(
    session: Session, where: Filter, before: int | None = None, size: int | None = None
) -> tuple[list[Person], int, int | None]:
    """One page of people, newest first, with every list of each; how many the filter matches;
    and the `before` of the next page, None on the last."""
    size = size or PAGE_SIZE
    conditions = _subscription_matches(where)
    query = select(Subscriber.id).order_by(Subscriber.id.desc())
    if where.search:
        query = query.where(_address_matches(where))
    if where.search:
        # A search reads the addresses once: when it finds few, they are the total and the pages.
        found = session.scalars(_with(query, conditions, sparse=False).limit(_FEW + 1)).all()
        if len(found) <= _FEW:
            ids = [i for i in found if before is None or i < before][: size + 1]
            return _people(session, ids, size), len(found), _next(ids, size)
    total = people_total(session, where)
    query = _with(query, conditions, sparse=total <= _FEW)
    if before is not None:
        query = query.where(Subscriber.id < before)
    ids = list(session.scalars(query.limit(size + 1)))
    return _people(session, ids, size), total, _next(ids, size)


def _with(
    query: Select[Any], conditions: list[ColumnElement[bool]], *, sparse: bool
) -> Select[Any]:
    """People with a subscription matching `conditions`: few of them are looked up by their ids,
    many found by walking the people newest first (a match comes soon)."""
    if not conditions:
        return query
    if sparse:
        return query.where(Subscriber.id.in_(select(Subscription.subscriber_id).where(*conditions)))
    return query.where(exists().where(Subscription.subscriber_id == Subscriber.id, *conditions))


def _next(ids: Sequence[int], size: int) -> int | None:
    return ids[size - 1] if len(ids) > size else None


def _people(session: Session, ids: Sequence[int], size: int) -> list[Person]:
    """The people of a page with every list of each, newest first."""
    ids = list(ids[:size])
    if not ids:
        return []
    lists: dict[int, list[tuple[str, str]]] = {i: [] for i in ids}
    for subscriber_id, name, status in session.execute(
        select(Subscription.subscriber_id, Newsletter.name, Subscription.status)
        .join(Newsletter, Newsletter.id == Subscription.newsletter_id)
        .where(Subscription.subscriber_id.in_(ids))
        .order_by(Newsletter.name)
    ):
        lists[subscriber_id].append((name, str(status)))
    found = session.execute(
        select(Subscriber.id, Subscriber.email, Subscriber.created_at).where(Subscriber.id.in_(ids))
    )
    by_id = {row.id: row for row in found}
    return [Person(i, by_id[i].email, by_id[i].created_at, lists[i]) for i in ids]


def consent_trail(subscriber_id: int) -> Select[Any]:
    """Every consent event of a person, oldest first, with the list it was about."""
    return (
        select(ConsentEvent, Newsletter.name.label("newsletter"))
        .join(Subscription, ConsentEvent.subscription_id == Subscription.id)
        .join(Newsletter, Subscription.newsletter_id == Newsletter.id)
        .where(Subscription.subscriber_id == subscriber_id)
        .order_by(ConsentEvent.created_at, ConsentEvent.id)
    )


def mails(subscriber_id: int) -> Select[Any]:
    """The transactional mails queued for a person, newest first."""
    return (
        select(OutboxMessage)
        .where(OutboxMessage.subscriber_id == subscriber_id)
        .order_by(OutboxMessage.created_at.desc(), OutboxMessage.id.desc())
    )


def digest_mails(subscriber_id: int) -> Select[Any]:
    """A person's rows in the digests' ledgers, with the digest and its list, newest first."""
    return (
        select(
            Delivery,
            Digest.subject,
            Digest.started_at,
            # A combined edition has no list of its own: it is named by its edition.
            func.coalesce(Newsletter.name, "combined " + Digest.frequency).label("newsletter"),
        )
        .join(Subscription, Subscription.id == Delivery.subscription_id)
        .join(Digest, Digest.id == Delivery.digest_id)
        .outerjoin(Newsletter, Newsletter.id == Digest.newsletter_id)
        .where(Subscription.subscriber_id == subscriber_id)
        .order_by(Digest.started_at.desc(), Delivery.id.desc())
    )


@dataclass(frozen=True)
class MailLine:
    """One mail sent, or to be sent, to a person, as their page lists it."""

    queued_at: datetime | None
    what: str
    newsletter: str | None
    status: str
    sent_at: datetime | None
    error: str | None


def mail_history(session: Session, subscriber_id: int) -> list[MailLine]:
    """Every mail a person was sent or is due, transactional and digests, newest first, each
    with the newsletters it was about."""
    queued = session.scalars(mails(subscriber_id)).all()
    about = {m.id: _subscriptions_of(m) for m in queued}
    wanted = {sid for ids in about.values() for sid in ids}
    names = dict(
        session.execute(
            select(Subscription.id, Newsletter.name)
            .join(Newsletter, Newsletter.id == Subscription.newsletter_id)
            .where(Subscription.id.in_(wanted))
        ).all()
    )
    lines = [
        MailLine(
            m.created_at,
            str(m.kind),
            ", ".join(names[sid] for sid in about[m.id] if sid in names) or None,
            str(m.status),
            m.sent_at,
            m.last_error,
        )
        for m in queued
    ]
    lines += [
        MailLine(started, f"digest: {subject}", newsletter, str(d.status), d.sent_at, d.last_error)
        for d, subject, started, newsletter in session.execute(digest_mails(subscriber_id))
    ]
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(lines, key=lambda line: line.queued_at or epoch, reverse=True)


def _subscriptions_of(mail: OutboxMessage) -> list[int]:
    """The subscriptions an outbox mail is about, as its payload names them."""
    payload = mail.payload or {}
    if "subscription" in payload:
        return [int(payload["subscription"])]
    named = payload.get("subscriptions") or []
    return [int(one[0] if isinstance(one, list | tuple) else one) for one in named]


def record(session: Session, admin_user_id: int | None, action: str, **detail: Any) -> None:
    """Add to the audit trail in the caller's transaction."""
    session.add(AuditEvent(admin_user_id=admin_user_id, action=action, detail=detail))


def person_data(session: Session, subscriber: Subscriber) -> dict[str, Any]:
    """Everything kept about one person, as a reader's data request asks for it."""
    events = session.execute(consent_trail(subscriber.id)).all()
    return {
        "email": subscriber.email,
        "name": subscriber.name,
        "locale": subscriber.locale,
        "created_at": subscriber.created_at.isoformat(),
        "subscriptions": [
            {
                "newsletter": s.newsletter.name,
                "status": s.status,
                "source": s.source,
                "subscribed_at": _iso(s.subscribed_at),
                "confirmed_at": _iso(s.confirmed_at),
                "unsubscribed_at": _iso(s.unsubscribed_at),
            }
            for s in subscriber.subscriptions
        ],
        "consent_trail": [
            {
                "newsletter": newsletter,
                "action": event.action,
                "at": _iso(event.created_at),
                "ip": event.ip,
                "user_agent": event.user_agent,
                "source": event.source,
                "text_shown": event.text_shown,
            }
            for event, newsletter in events
        ],
        "mails": [
            {
                "kind": m.kind,
                "status": m.status,
                "queued_at": _iso(m.created_at),
                "sent_at": _iso(m.sent_at),
            }
            for m in session.scalars(mails(subscriber.id))
        ],
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def erase(session: Session, subscriber: Subscriber, admin_user_id: int | None) -> None:
    """Delete a person and everything about them; keep only a hash so no import revives them.

    Commits. Their consent trail goes with them: the erasure itself is what the audit keeps.
    """
    subscriber_id, email_key = subscriber.id, subscriber.email_key
    session.execute(delete(OutboxMessage).where(OutboxMessage.subscriber_id == subscriber_id))
    signups.forget(session, email_key)
    session.delete(subscriber)  # subscriptions and consent events cascade
    # Returned mail stays counted in the figures, without the server's words: they often
    # quote the address.
    session.execute(
        update(BounceEvent)
        .where(BounceEvent.email_hash == address_hash(email_key))
        .values(diagnostic=None, subscriber_id=None)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    suppression.suppress(session, email_key, SuppressionReason.ERASED)
    record(session, admin_user_id, "erase", subscriber_id=subscriber_id)
    session.commit()


def suppressions(session: Session, email: str | None = None, limit: int = 100) -> list[Suppression]:
    """The latest suppressions, newest first; with `email`, that address's only (by its hash)."""
    query = select(Suppression).order_by(Suppression.id.desc()).limit(limit)
    if email is not None:
        try:
            _address, key = normalize_email(email)
        except UserError:
            return []
        query = query.where(Suppression.email_hash == address_hash(key))
    return list(session.scalars(query))


class NotSuppressed(UserError):
    message = lazy_gettext("This address is not suppressed.")


def lift_suppression(
    session: Session, email: str, admin_user_id: int | None, why: str
) -> SuppressionReason:
    """Let a bounced or complained address be mailed again, saying why; audited; commits.

    Returns the reason it was suppressed for. The person signs up again to get mail.
    """
    why = " ".join(why.split())[:500]
    if not why:
        raise UserError(_("Say why the suppression is lifted: it is kept in the audit trail."))
    address, key = normalize_email(email)
    reason = suppression.reason(session, key)
    if reason is None:
        raise NotSuppressed()
    if reason not in suppression.STOPS_MAIL:
        raise UserError(
            _("An erased person's address stays suppressed: imports never bring it back.")
        )
    suppression.lift(session, key)
    record(
        session,
        admin_user_id,
        "lift-suppression",
        address=mask(address),
        reason=str(reason),
        why=why,
    )
    session.commit()
    return reason

"""The subscription state machine: subscribe, confirm, unsubscribe, preferences."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.mail import outbox
from newsletter.models import (
    ConsentAction,
    ConsentEvent,
    MailKind,
    Newsletter,
    OutboxMessage,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    new_nonce,
    utcnow,
)

S = SubscriptionStatus


class SubscriptionError(Exception):
    """A request the subscription rules refuse; the message is fit to show a reader."""

    message = "Something is wrong with this request."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message


class InvalidEmail(SubscriptionError):
    message = "Please, enter correct email address"


class NoNewsletterChosen(SubscriptionError):
    message = "Please, choose at least one newsletter."


class UnknownNewsletter(SubscriptionError):
    message = "We have no newsletter by that name."


class LinkNoLongerValid(SubscriptionError):
    message = "This link is no longer valid."


class TooManyConfirmations(SubscriptionError):
    message = "We have sent several confirmation emails to this address today. Please try tomorrow."


@dataclass(frozen=True)
class Origin:
    """Where a change came from, for the consent trail."""

    source: str
    ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True)
class ConfirmationLimit:
    """At most `count` confirmation mails per address within `window`."""

    count: int = 3
    window: timedelta = timedelta(hours=24)


@dataclass
class SignupResult:
    subscriber: Subscriber
    pending: list[Subscription] = field(default_factory=list)
    mail_queued: bool = False


@dataclass
class ConfirmResult:
    subscriber: Subscriber
    confirmed: list[Subscription] = field(default_factory=list)
    already: list[Subscription] = field(default_factory=list)


def normalize_email(raw: str, *, check_deliverability: bool = False) -> tuple[str, str]:
    """Validate an address; return it normalised and its case-folded lookup key."""
    raw = (raw or "").strip()
    if not raw or len(raw) > 254 or any(c in raw for c in "\r\n\0"):
        raise InvalidEmail()
    try:
        result = validate_email(raw, check_deliverability=check_deliverability)
    except EmailNotValidError as exc:
        raise InvalidEmail() from exc
    return result.normalized, result.normalized.lower()


def box_text(newsletter: Newsletter) -> str:
    """The words the reader saw in the signup box, for the consent trail."""
    return f"{newsletter.name}: {newsletter.prompt_text} [{newsletter.button_text}]"


def _event(
    session: Session,
    subscription: Subscription,
    action: ConsentAction,
    origin: Origin,
    text: str | None = None,
) -> None:
    session.add(
        ConsentEvent(
            subscription=subscription,
            action=action,
            ip=origin.ip,
            user_agent=(origin.user_agent or "")[:400] or None,
            source=origin.source[:100],
            text_shown=text,
        )
    )


def _find_subscriber(session: Session, key: str) -> Subscriber | None:
    return session.scalar(select(Subscriber).where(Subscriber.email_key == key))


def confirmations_sent_since(session: Session, subscriber_id: int, since: datetime) -> int:
    """How many confirmation mails were queued for this person since a moment."""
    return (
        session.scalar(
            select(func.count(OutboxMessage.id)).where(
                OutboxMessage.subscriber_id == subscriber_id,
                OutboxMessage.kind == MailKind.CONFIRMATION,
                OutboxMessage.created_at >= since,
            )
        )
        or 0
    )


def _queue_confirmation(
    session: Session,
    subscriber: Subscriber,
    pending: Sequence[Subscription],
    origin: Origin,
    limit: ConfirmationLimit,
) -> bool:
    """Queue one mail confirming every pending list, unless the address hit its limit."""
    if not pending:
        return False
    session.flush()
    sent = confirmations_sent_since(session, subscriber.id, utcnow() - limit.window)
    if sent >= limit.count:
        return False
    outbox.enqueue(
        session,
        MailKind.CONFIRMATION,
        subscriber,
        {"subscriptions": [[s.id, s.nonce] for s in pending]},
    )
    for subscription in pending:
        _event(session, subscription, ConsentAction.CONFIRMATION_SENT, origin)
    return True


def subscribe(
    session: Session,
    email: str,
    slugs: Iterable[str],
    origin: Origin,
    *,
    limit: ConfirmationLimit = ConfirmationLimit(),
    check_deliverability: bool = False,
    locale: str | None = None,
) -> SignupResult:
    """Sign an address up to newsletters, pending until confirmed; commits."""
    address, key = normalize_email(email, check_deliverability=check_deliverability)
    wanted = list(dict.fromkeys(s.strip() for s in slugs if s and s.strip()))
    if not wanted:
        raise NoNewsletterChosen()
    newsletters = session.scalars(
        select(Newsletter)
        .where(Newsletter.slug.in_(wanted), Newsletter.archived.is_(False))
        .order_by(Newsletter.position, Newsletter.id)
    ).all()
    if len(newsletters) != len(wanted):
        raise UnknownNewsletter()
    try:
        return _subscribe(session, address, key, newsletters, origin, limit, locale)
    except IntegrityError:
        # Two signups for the same new address raced; the other one's rows exist now.
        session.rollback()
        return _subscribe(session, address, key, newsletters, origin, limit, locale)


def _subscribe(
    session: Session,
    address: str,
    key: str,
    newsletters: Sequence[Newsletter],
    origin: Origin,
    limit: ConfirmationLimit,
    locale: str | None,
) -> SignupResult:
    subscriber = _find_subscriber(session, key)
    if subscriber is None:
        subscriber = Subscriber(email=address, email_key=key, locale=locale)
        session.add(subscriber)
        existing: dict[int, Subscription] = {}
    else:
        existing = {s.newsletter_id: s for s in subscriber.subscriptions}
    result = SignupResult(subscriber)
    now = utcnow()
    for newsletter in newsletters:
        subscription = existing.get(newsletter.id)
        if subscription is None:
            subscription = Subscription(
                subscriber=subscriber, newsletter=newsletter, source=origin.source
            )
            session.add(subscription)
        elif subscription.status == S.UNSUBSCRIBED:
            subscription.status = S.PENDING
            subscription.nonce = new_nonce()
            subscription.source = origin.source
            subscription.subscribed_at = now
            subscription.confirmed_at = None
        elif subscription.status != S.PENDING:
            # Confirmed readers get nothing new; bounced and complained addresses stay quiet.
            continue
        _event(session, subscription, ConsentAction.SIGNUP, origin, box_text(newsletter))
        result.pending.append(subscription)
    result.mail_queued = _queue_confirmation(session, subscriber, result.pending, origin, limit)
    session.commit()
    return result


def reader_from_payload(session: Session, payload: object) -> Subscriber:
    """The subscriber a signed link was made for, or LinkNoLongerValid if they are gone."""
    if not isinstance(payload, dict):
        raise LinkNoLongerValid()
    subscriber = session.get(Subscriber, payload.get("s"))
    if subscriber is None or subscriber.token_key != payload.get("k"):
        raise LinkNoLongerValid()
    return subscriber


def _linked_subscriptions(
    subscriber: Subscriber, payload: dict[str, object]
) -> list[tuple[Subscription, str]]:
    by_id = {s.id: s for s in subscriber.subscriptions}
    pairs = payload.get("n")
    if not isinstance(pairs, list):
        raise LinkNoLongerValid()
    found = []
    for pair in pairs:
        if isinstance(pair, list) and len(pair) == 2 and pair[0] in by_id:
            found.append((by_id[pair[0]], str(pair[1])))
    return found


def _mark_confirmed(session: Session, subscription: Subscription, origin: Origin) -> None:
    subscription.status = S.CONFIRMED
    subscription.confirmed_at = utcnow()
    subscription.unsubscribed_at = None
    subscription.nonce = new_nonce()
    _event(session, subscription, ConsentAction.CONFIRMED, origin)
    if subscription.newsletter.welcome_enabled:
        session.flush()  # a subscription made just now needs its id in the payload
        outbox.enqueue(
            session,
            MailKind.WELCOME,
            subscription.subscriber,
            {"subscription": subscription.id},
        )


def confirm(session: Session, payload: object, origin: Origin) -> ConfirmResult:
    """Confirm every list a confirmation link was sent for; commits."""
    subscriber = reader_from_payload(session, payload)
    assert isinstance(payload, dict)
    result = ConfirmResult(subscriber)
    for subscription, nonce in _linked_subscriptions(subscriber, payload):
        if subscription.status == S.PENDING and subscription.nonce == nonce:
            _mark_confirmed(session, subscription, origin)
            result.confirmed.append(subscription)
        elif subscription.status == S.CONFIRMED:
            result.already.append(subscription)
    if not result.confirmed and not result.already:
        raise LinkNoLongerValid()
    session.commit()
    return result


def resend_confirmation(
    session: Session,
    payload: object,
    origin: Origin,
    limit: ConfirmationLimit = ConfirmationLimit(),
) -> list[Subscription]:
    """Send a fresh confirmation for the lists of an expired link still pending; commits."""
    subscriber = reader_from_payload(session, payload)
    assert isinstance(payload, dict)
    pending = [s for s, _ in _linked_subscriptions(subscriber, payload) if s.status == S.PENDING]
    if not pending:
        raise LinkNoLongerValid()
    if not _queue_confirmation(session, subscriber, pending, origin, limit):
        raise TooManyConfirmations()
    session.commit()
    return pending


def _mark_unsubscribed(session: Session, subscription: Subscription, origin: Origin) -> None:
    subscription.status = S.UNSUBSCRIBED
    subscription.unsubscribed_at = utcnow()
    subscription.nonce = new_nonce()
    _event(session, subscription, ConsentAction.UNSUBSCRIBED, origin)


def list_subscription(session: Session, payload: object) -> Subscription:
    """The subscription an unsubscribe link was made for."""
    subscriber = reader_from_payload(session, payload)
    assert isinstance(payload, dict)
    for subscription in subscriber.subscriptions:
        if subscription.newsletter_id == payload.get("l"):
            return subscription
    raise LinkNoLongerValid()


def signup_subscriptions(
    session: Session, payload: object
) -> tuple[Subscriber, list[Subscription]]:
    """The reader and the subscriptions a confirmation link names, whatever their state now."""
    subscriber = reader_from_payload(session, payload)
    assert isinstance(payload, dict)
    return subscriber, [s for s, _ in _linked_subscriptions(subscriber, payload)]


def unsubscribe(session: Session, subscription: Subscription, origin: Origin) -> Subscription:
    """Leave one list; repeating it changes nothing; commits."""
    if subscription.status in (S.PENDING, S.CONFIRMED):
        _mark_unsubscribed(session, subscription, origin)
        session.commit()
    return subscription


def update_preferences(
    session: Session, subscriber: Subscriber, wanted_ids: Iterable[int], origin: Origin
) -> tuple[list[Subscription], list[Subscription]]:
    """Make the reader's confirmed lists exactly `wanted_ids`; return (joined, left); commits.

    The link to the preferences page proves the address, so lists chosen there are
    confirmed at once.
    """
    wanted = set(wanted_ids)
    newsletters = session.scalars(select(Newsletter).where(Newsletter.archived.is_(False))).all()
    current = {s.newsletter_id: s for s in subscriber.subscriptions}
    joined, left = [], []
    for newsletter in newsletters:
        subscription = current.get(newsletter.id)
        active = subscription is not None and subscription.status == S.CONFIRMED
        if newsletter.id in wanted and not active:
            if subscription is None:
                subscription = Subscription(
                    subscriber=subscriber, newsletter=newsletter, source=origin.source
                )
                session.add(subscription)
            _event(session, subscription, ConsentAction.SIGNUP, origin, box_text(newsletter))
            _mark_confirmed(session, subscription, origin)
            joined.append(subscription)
        elif newsletter.id not in wanted and subscription is not None:
            if subscription.status in (S.PENDING, S.CONFIRMED):
                _mark_unsubscribed(session, subscription, origin)
                left.append(subscription)
    session.commit()
    return joined, left

"""The subscription state machine: subscribe, confirm, unsubscribe, preferences."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flask_babel import lazy_gettext
from sqlalchemy import Integer, Row, bindparam, func, insert, select, union, update
from sqlalchemy import text as sql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter import frequencies, suppression
from newsletter.addresses import mailbox_key, normalize_email
from newsletter.errors import UserError
from newsletter.links import ConfirmLink, LinkNoLongerValid, Reader, UnsubscribeLink
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
from newsletter.newsletters import UnknownNewsletter

PENDING = SubscriptionStatus.PENDING
CONFIRMED = SubscriptionStatus.CONFIRMED
UNSUBSCRIBED = SubscriptionStatus.UNSUBSCRIBED
# States in which the address gets mail from this list, or will once confirmed.
LIVE = (PENDING, CONFIRMED)
# States of an address that may never be mailed again: the reader cannot change them.
STOPPED = (SubscriptionStatus.BOUNCED, SubscriptionStatus.COMPLAINED)
# A newsletter's welcome mail goes at most once per subscription in this time, however often
# the reader ticks and unticks the list.
WELCOME_EVERY = timedelta(hours=24)
# How each state reads to the reader, on the preferences page.
READER_LABELS = {
    CONFIRMED: lazy_gettext("subscribed"),
    PENDING: lazy_gettext("waiting for confirmation"),
    UNSUBSCRIBED: lazy_gettext("unsubscribed"),
    SubscriptionStatus.BOUNCED: lazy_gettext("paused: mail to this address bounced"),
    SubscriptionStatus.COMPLAINED: lazy_gettext("unsubscribed (marked as spam)"),
}
NOT_SUBSCRIBED = lazy_gettext("not subscribed")
# The words on the buttons that record consent, kept in the trail with each event in the
# language the reader saw them in.
CONFIRM_TEXT = lazy_gettext("Confirm subscription")
PREFERENCES_TEXT = lazy_gettext("ticked on the preferences page [Save my choices]")
FREQUENCY_TEXT = lazy_gettext(
    "chose on the preferences page how often: %(frequency)s [Save my choices]"
)
COMBINED_TEXT = lazy_gettext("One combined mail per edition for all my newsletters")
COMBINED_ON = lazy_gettext("ticked on the preferences page [Save my choices]")
COMBINED_OFF = lazy_gettext("unticked on the preferences page [Save my choices]")
# The source of subscriptions an import made, and the reason its confirmation mails give:
# the reader did not sign up here, so the mail asks them to confirm to keep receiving.
IMPORTED = "import"
# What a newsletter slug may look like; anything else names no newsletter.
SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class SubscriptionError(UserError):
    """A request the subscription rules refuse; the message is fit to show a reader."""


class NoNewsletterChosen(SubscriptionError):
    message = lazy_gettext("Please, choose at least one newsletter.")


class NothingToConfirm(SubscriptionError):
    message = lazy_gettext("No subscription of this reader is waiting for confirmation.")


class Undeliverable(SubscriptionError):
    message = lazy_gettext(
        "Mail to this address cannot be delivered: it bounced or its owner marked our mail as "
        "spam. Nothing is sent to it until the suppression is lifted."
    )


class TooManyConfirmations(SubscriptionError):
    message = lazy_gettext(
        "We have sent several confirmation emails to this address today. Please try tomorrow."
    )


@dataclass(frozen=True)
class Origin:
    """Where a change came from, for the consent trail."""

    source: str
    ip: str | None = None
    user_agent: str | None = None
    # When the reader asked: a queued signup is applied later, its trail keeps this moment.
    at: datetime | None = None


@dataclass(frozen=True)
class ConfirmationLimit:
    """At most `count` confirmation mails per address within `window`."""

    count: int = 3
    window: timedelta = timedelta(hours=24)


@dataclass
class SignupResult:
    subscriber_id: int | None  # None when the address may not be mailed: nothing was written
    pending: list[int] = field(default_factory=list)  # subscription ids awaiting confirmation
    mail_queued: bool = False


@dataclass
class ConfirmResult:
    subscriber: Subscriber
    confirmed: list[Subscription] = field(default_factory=list)
    already: list[Subscription] = field(default_factory=list)


def still_confirms(subscription: Subscription, nonce: str) -> bool:
    """Whether a confirmation link's (subscription, nonce) would still confirm it.

    Only while it is pending with the nonce the link was made with: every change of state
    makes a new nonce, so an old link cannot confirm again after an unsubscribe.
    """
    return subscription.status == PENDING and subscription.nonce == nonce


def still_confirmable(
    subscriber: Subscriber, pairs: Iterable[tuple[int, str]]
) -> list[tuple[Subscription, str]]:
    """The subscriptions of these (id, nonce) pairs that a link made for them still confirms."""
    return [(s, nonce) for s, nonce in _linked(subscriber, pairs) if still_confirms(s, nonce)]


def box_text(newsletter: Newsletter | Row[Any]) -> str:
    """The words the reader saw in the signup box, for the consent trail."""
    return f"{newsletter.name}: {newsletter.prompt_text} [{newsletter.button_text}]"


# The signup path must be fast: its statements are built once, run on the session's
# connection with plain parameters, and skip the ORM's unit of work.
# Every open list: a site has a handful, and one fixed statement is cheaper to run than a
# filter whose IN list changes from request to request.
OPEN_NEWSLETTERS = (
    select(
        Newsletter.id,
        Newsletter.slug,
        Newsletter.name,
        Newsletter.prompt_text,
        Newsletter.button_text,
        Newsletter.thanks_text,
        Newsletter.frequencies,
        Newsletter.default_frequency,
    )
    .where(Newsletter.archived.is_(False))
    .order_by(Newsletter.position, Newsletter.id)
)
# Locked on PostgreSQL: signups for one address take turns, so its mail limit holds.
SUBSCRIBER_BY_KEY = (
    select(Subscriber.id).where(Subscriber.email_key == bindparam("key")).with_for_update()
)
SUBSCRIPTIONS_OF = select(
    Subscription.id,
    Subscription.newsletter_id,
    Subscription.status,
    Subscription.nonce,
    Subscription.frequency,
).where(Subscription.subscriber_id == bindparam("subscriber_id"))
INSERT_SUBSCRIBER = insert(Subscriber.__table__).returning(Subscriber.__table__.c.id)
INSERT_SUBSCRIPTION = insert(Subscription.__table__).returning(Subscription.__table__.c.id)
REOPEN_SUBSCRIPTION = (
    update(Subscription.__table__)
    .where(Subscription.__table__.c.id == bindparam("subscription_id"))
    .values(
        status=PENDING,
        nonce=bindparam("nonce"),
        source=bindparam("source"),
        subscribed_at=bindparam("now"),
        confirmed_at=None,
        unsubscribed_at=None,
        frequency=bindparam("frequency"),
    )
)
SET_FREQUENCY = (
    update(Subscription.__table__)
    .where(Subscription.__table__.c.id == bindparam("subscription_id"))
    .values(frequency=bindparam("frequency"))
)
INSERT_EVENTS = insert(ConsentEvent.__table__)
# Confirmation mails to one mailbox, whichever of its addresses they went to.
# The address's own row counts even without a mailbox key (an import wrote it); a UNION,
# not an OR, so both sides use their index.
CONFIRMATIONS_SINCE = select(func.count(OutboxMessage.id)).where(
    OutboxMessage.subscriber_id.in_(
        union(
            select(Subscriber.id).where(Subscriber.mailbox_key == bindparam("mailbox")),
            select(bindparam("sid", type_=Integer)),
        )
    ),
    OutboxMessage.kind == MailKind.CONFIRMATION,
    OutboxMessage.created_at >= bindparam("since"),
)


def signup_newsletters(session: Session, slugs: Sequence[str]) -> list[Row[Any]]:
    """The open lists among these slugs, in the site's order, with their box texts."""
    wanted = set(slugs)
    return [row for row in session.connection().execute(OPEN_NEWSLETTERS) if row.slug in wanted]


def _event_row(
    subscription_id: int,
    action: ConsentAction,
    origin: Origin,
    text: str | None = None,
    at: datetime | None = None,
) -> dict[str, object]:
    return {
        "subscription_id": subscription_id,
        "action": action,
        "ip": origin.ip,
        "user_agent": (origin.user_agent or "")[:400] or None,
        "source": origin.source[:100],
        "text_shown": text,
        "created_at": at or origin.at or utcnow(),
    }


def _event(
    session: Session,
    subscription: Subscription,
    action: ConsentAction,
    origin: Origin,
    text: str | None = None,
) -> None:
    if subscription.id is None:
        session.flush()
    session.connection().execute(INSERT_EVENTS, [_event_row(subscription.id, action, origin, text)])


def confirmations_sent_since(
    session: Session, subscriber_id: int, address: str, since: datetime
) -> int:
    """How many confirmation mails went to this address's mailbox since a moment.

    Its `+tag` forms and, at Gmail, its dotted forms count as the same mailbox.
    """
    values = {"mailbox": mailbox_key(address), "sid": subscriber_id, "since": since}
    return session.connection().execute(CONFIRMATIONS_SINCE, values).scalar() or 0


def _lock_mailbox(session: Session, address: str) -> None:
    """On PostgreSQL, signups for one mailbox take turns, whichever form of it they use, so
    its limit holds against workers applying them at once; SQLite writes one at a time."""
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        conn.execute(
            sql("SELECT pg_advisory_xact_lock(hashtext(:mailbox))"),
            {"mailbox": mailbox_key(address)},
        )


def _confirmation(
    session: Session,
    subscriber_id: int,
    to_address: str,
    pending: Sequence[tuple[int, str]],
    origin: Origin,
    limit: ConfirmationLimit,
    *,
    reason: str | None = None,
) -> list[dict[str, object]]:
    """Queue one mail confirming every pending (subscription id, nonce), within the limit.

    Returns the consent events to record: none when no mail was queued.
    """
    if not pending:
        return []
    now = utcnow()
    sent = confirmations_sent_since(session, subscriber_id, to_address, now - limit.window)
    if sent >= limit.count:
        return []
    payload: dict[str, object] = {"subscriptions": [[sid, nonce] for sid, nonce in pending]}
    if reason:
        payload["reason"] = reason
    outbox.enqueue(session, MailKind.CONFIRMATION, subscriber_id, to_address, payload)
    return [_event_row(sid, ConsentAction.CONFIRMATION_SENT, origin, at=now) for sid, _ in pending]


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
    newsletters = signup_newsletters(session, wanted)
    if len(newsletters) != len(wanted):
        raise UnknownNewsletter()
    chosen = [(n.id, box_text(n)) for n in newsletters]
    try:
        result = apply_signup(session, address, key, chosen, origin, limit, locale)
    except IntegrityError:
        # Two signups for the same new address raced; the other one's rows exist now.
        session.rollback()
        result = apply_signup(session, address, key, chosen, origin, limit, locale)
    session.commit()
    return result


def apply_signup(
    session: Session,
    address: str,
    key: str,
    chosen: Sequence[tuple[int, str]],
    origin: Origin,
    limit: ConfirmationLimit,
    locale: str | None,
    *,
    choices: Mapping[int, str] | None = None,
    defaults: Mapping[int, str | None] | None = None,
) -> SignupResult:
    """The rules of a signup to these (newsletter id, box text) lists, in the caller's
    transaction: the suppression, each list's state, the consent trail, the confirmation
    mail within the limit. The caller commits, or rolls back and tries again on an
    IntegrityError (another signup for the same new address came first).

    `choices`: the frequency the reader chose in the box, by list; a new subscription
    without one takes the list's preselected one (`defaults`). A reader who chose another
    frequency than their subscription's changes it, a consent event of its own.
    """
    choices = choices or {}
    defaults = defaults or {}
    conn = session.connection()
    now = origin.at or utcnow()
    if suppression.unmailable(session, key):
        # Bounced or complained: no mail of any kind, and the same reply as any signup.
        return SignupResult(None)
    _lock_mailbox(session, address)
    subscriber_id = conn.execute(SUBSCRIBER_BY_KEY, {"key": key}).scalar()
    new_address = subscriber_id is None
    existing = {}
    if subscriber_id is None:
        subscriber_id = conn.execute(
            INSERT_SUBSCRIBER,
            {
                "email": address,
                "email_key": key,
                "mailbox_key": mailbox_key(key),
                "locale": locale,
                "created_at": now,
            },
        ).scalar_one()
    else:
        rows = conn.execute(SUBSCRIPTIONS_OF, {"subscriber_id": subscriber_id})
        existing = {row.newsletter_id: row for row in rows}
    pending: list[tuple[int, str]] = []
    events = []
    for newsletter_id, text_shown in chosen:
        current = existing.get(newsletter_id)
        frequency = choices.get(newsletter_id) or defaults.get(newsletter_id)
        if current is not None and current.status in (PENDING, CONFIRMED):
            wanted = choices.get(newsletter_id)
            if wanted and wanted != current.frequency:
                conn.execute(SET_FREQUENCY, {"subscription_id": current.id, "frequency": wanted})
                text = frequency_text(text_shown, wanted)
                events.append(_event_row(current.id, ConsentAction.FREQUENCY_CHANGED, origin, text))
        if current is None:
            nonce = new_nonce()
            subscription_id = conn.execute(
                INSERT_SUBSCRIPTION,
                {
                    "subscriber_id": subscriber_id,
                    "newsletter_id": newsletter_id,
                    "status": PENDING,
                    "nonce": nonce,
                    "source": origin.source,
                    "subscribed_at": now,
                    "frequency": frequency,
                },
            ).scalar_one()
        elif current.status == UNSUBSCRIBED or current.status in STOPPED:
            # Left, or stopped by a bounce or complaint whose suppression an admin has lifted:
            # a new signup is new consent, confirmed as a first one is.
            subscription_id, nonce = current.id, new_nonce()
            conn.execute(
                REOPEN_SUBSCRIPTION,
                {
                    "subscription_id": current.id,
                    "nonce": nonce,
                    "source": origin.source,
                    "now": now,
                    "frequency": frequency,
                },
            )
        elif current.status == PENDING:
            # The earlier mail's link stays good; the new mail's link matches it.
            subscription_id, nonce = current.id, current.nonce
            frequency = choices.get(newsletter_id) or current.frequency
        else:
            # Confirmed readers get nothing new.
            continue
        pending.append((subscription_id, nonce))
        text = frequency_text(text_shown, frequency)
        events.append(_event_row(subscription_id, ConsentAction.SIGNUP, origin, text))
    if not pending:
        if events:
            conn.execute(INSERT_EVENTS, events)
        return SignupResult(subscriber_id)
    if not new_address:
        # A first write: on SQLite it takes the database's write lock, so counting this
        # address's confirmations below cannot interleave with another signup's.
        conn.execute(INSERT_EVENTS, events)
        events = []
    sent = _confirmation(session, subscriber_id, address, pending, origin, limit)
    if events or sent:
        conn.execute(INSERT_EVENTS, events + sent)
    return SignupResult(subscriber_id, [sid for sid, _ in pending], mail_queued=bool(sent))


def frequency_text(text: str, frequency: str | None) -> str:
    """The consent trail's words for a choice of how often, after what the reader saw."""
    if not frequency:
        return text
    return f"{text} [how often: {frequency}]"


def reader(session: Session, who: Reader) -> Subscriber:
    """The subscriber a signed link was made for, or LinkNoLongerValid if they are gone."""
    subscriber = session.get(Subscriber, who.subscriber_id)
    if subscriber is None or subscriber.token_key != who.key:
        raise LinkNoLongerValid()
    return subscriber


def _linked(
    subscriber: Subscriber, pairs: Iterable[tuple[int, str]]
) -> list[tuple[Subscription, str]]:
    """The person's subscriptions named by a link's (id, nonce) pairs, with their nonces."""
    by_id = {s.id: s for s in subscriber.subscriptions}
    return [(by_id[sid], nonce) for sid, nonce in pairs if sid in by_id]


def _mark_confirmed(
    session: Session, subscription: Subscription, origin: Origin, text: str
) -> None:
    subscription.status = CONFIRMED
    subscription.confirmed_at = utcnow()
    subscription.unsubscribed_at = None
    subscription.nonce = new_nonce()
    _event(session, subscription, ConsentAction.CONFIRMED, origin, text)


def _welcome(session: Session, confirmed: Sequence[Subscription]) -> None:
    """Queue one welcome mail naming every list just confirmed that sends one and was not
    welcomed within WELCOME_EVERY."""
    session.flush()  # a subscription made just now needs its id in the payload
    lately = _welcomed_lately(session, confirmed)
    welcomed = [s for s in confirmed if s.newsletter.welcome_enabled and s.id not in lately]
    if not welcomed:
        return
    outbox.enqueue(
        session,
        MailKind.WELCOME,
        welcomed[0].subscriber_id,
        welcomed[0].subscriber.email,
        {"subscriptions": [s.id for s in welcomed]},
    )


def _welcomed_lately(session: Session, subscriptions: Sequence[Subscription]) -> set[int]:
    """Which of these subscriptions had a welcome mail queued within WELCOME_EVERY.

    Ticking a list on and off on the preferences page confirms it each time: one welcome
    a day is what the reader gets of it.
    """
    if not subscriptions:
        return set()
    payloads = session.scalars(
        select(OutboxMessage.payload).where(
            OutboxMessage.subscriber_id == subscriptions[0].subscriber_id,
            OutboxMessage.kind == MailKind.WELCOME,
            OutboxMessage.created_at >= utcnow() - WELCOME_EVERY,
        )
    )
    welcomed: set[int] = set()
    for payload in payloads:
        welcomed.update(payload.get("subscriptions") or [payload.get("subscription")])
    return welcomed


def confirmation_preview(session: Session, link: ConfirmLink) -> ConfirmResult:
    """What pressing the confirm button would do, changing nothing.

    `confirmed` lists what the button would confirm, `already` what is confirmed already;
    LinkNoLongerValid when the link can do nothing.
    """
    subscriber = reader(session, link.reader)
    result = ConfirmResult(subscriber)
    for subscription, nonce in _linked(subscriber, link.pairs):
        if still_confirms(subscription, nonce):
            result.confirmed.append(subscription)
        elif subscription.status == CONFIRMED:
            result.already.append(subscription)
    if not result.confirmed and not result.already:
        raise LinkNoLongerValid()
    return result


def confirm(session: Session, link: ConfirmLink, origin: Origin) -> ConfirmResult:
    """Confirm every list a confirmation link was sent for; commits."""
    result = confirmation_preview(session, link)
    taken = [s for s in result.confirmed if _take_pending(session, s)]
    # Another click confirmed the rest between our read and our write: it sent the welcome.
    result.already.extend(s for s in result.confirmed if s not in taken)
    result.confirmed = taken
    for subscription in taken:
        _mark_confirmed(session, subscription, origin, str(CONFIRM_TEXT))
    _welcome(session, taken)
    session.commit()
    return result


def _take_pending(session: Session, subscription: Subscription) -> bool:
    """Move a subscription from pending to confirmed unless another request did it first.

    The write is conditional on the state that was read: of two clicks at once, one
    confirms and queues the welcome mail, the other finds it confirmed.
    """
    taken = session.execute(
        update(Subscription)
        .where(
            Subscription.id == subscription.id,
            Subscription.status == PENDING,
            Subscription.nonce == subscription.nonce,
        )
        .values(status=CONFIRMED)
        .execution_options(synchronize_session=False)
    )
    return taken.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def send_confirmation(
    session: Session,
    subscriber: Subscriber,
    subscriptions: Sequence[Subscription],
    origin: Origin,
    limit: ConfirmationLimit = ConfirmationLimit(),
) -> list[Subscription]:
    """Queue one fresh confirmation for those of these subscriptions still pending; commits."""
    if suppression.unmailable(session, subscriber.email_key):
        raise Undeliverable()
    pending = [s for s in subscriptions if s.status == PENDING]
    if not pending:
        raise NothingToConfirm()
    pairs = [(s.id, s.nonce) for s in pending]
    # Readers an import put on the lists never asked here: theirs is still a re-permission.
    reason = IMPORTED if all(s.source == IMPORTED for s in pending) else None
    events = _confirmation(
        session, subscriber.id, subscriber.email, pairs, origin, limit, reason=reason
    )
    if not events:
        raise TooManyConfirmations()
    session.connection().execute(INSERT_EVENTS, events)
    session.commit()
    return pending


def resend_confirmation(
    session: Session,
    link: ConfirmLink,
    origin: Origin,
    limit: ConfirmationLimit = ConfirmationLimit(),
) -> list[Subscription]:
    """Send a fresh confirmation for the lists of an expired link still pending; commits."""
    subscriber = reader(session, link.reader)
    linked = [s for s, _ in _linked(subscriber, link.pairs)]
    try:
        return send_confirmation(session, subscriber, linked, origin, limit)
    except NothingToConfirm as exc:
        raise LinkNoLongerValid() from exc


def _mark_unsubscribed(session: Session, subscription: Subscription, origin: Origin) -> None:
    subscription.status = UNSUBSCRIBED
    subscription.unsubscribed_at = utcnow()
    subscription.nonce = new_nonce()
    _event(session, subscription, ConsentAction.UNSUBSCRIBED, origin)


def list_subscriptions(session: Session, link: UnsubscribeLink) -> list[Subscription]:
    """The subscriptions an unsubscribe link was made for: one list's, or each of a combined
    mail's lists the reader is still on (one may have been erased or left meanwhile)."""
    subscriber = reader(session, link.reader)
    wanted = set(link.newsletter_ids)
    found = [s for s in subscriber.subscriptions if s.newsletter_id in wanted]
    if not found:
        raise LinkNoLongerValid()
    return sorted(found, key=lambda s: link.newsletter_ids.index(s.newsletter_id))


def can_unsubscribe(subscription: Subscription) -> bool:
    """Whether leaving the list would change anything: it is pending or confirmed."""
    return subscription.status in LIVE


def can_resend_confirmation(subscriber: Subscriber) -> bool:
    """Whether any of the person's subscriptions waits for confirmation."""
    return any(s.status == PENDING for s in subscriber.subscriptions)


@dataclass(frozen=True)
class Choice:
    """One list on a reader's preferences page."""

    newsletter: Newsletter
    subscribed: bool  # ticked
    open: bool  # the reader may change it
    label: str
    # How often they hear from it, when the list offers a choice: what may be chosen and
    # the current choice (None: the list's cadence).
    offered: tuple[str, ...] = ()
    frequency: str | None = None


def choices(
    subscriber: Subscriber, newsletters: Iterable[Newsletter], *, mailable: bool = True
) -> list[Choice]:
    """The lists a reader's preferences page offers, with their state as the reader reads it.

    For an address no mail may go to, none can be ticked.
    """
    current = {s.newsletter_id: s for s in subscriber.subscriptions}
    found = []
    for newsletter in newsletters:
        subscription = current.get(newsletter.id)
        status = subscription.status if subscription is not None else None
        label = str(READER_LABELS[status] if status is not None else NOT_SUBSCRIBED)
        open_ = mailable and status not in STOPPED
        chosen = subscription.frequency if subscription is not None else None
        if subscription is None or subscription.status not in LIVE:
            chosen = frequencies.default(newsletter)
        found.append(
            Choice(
                newsletter,
                status == CONFIRMED,
                open_,
                label,
                frequencies.offered(newsletter),
                chosen,
            )
        )
    return found


def mailable(session: Session, subscriber: Subscriber) -> bool:
    """Whether mail may go to this person's address at all."""
    return not suppression.unmailable(session, subscriber.email_key)


def unsubscribe(
    session: Session, subscription: Subscription, origin: Origin, *, commit: bool = True
) -> Subscription:
    """Leave one list; repeating it changes nothing; commits unless told not to."""
    if can_unsubscribe(subscription):
        _mark_unsubscribed(session, subscription, origin)
        if commit:
            session.commit()
    return subscription


def update_preferences(
    session: Session,
    subscriber: Subscriber,
    wanted_ids: Iterable[int],
    origin: Origin,
    *,
    leave_all: bool = False,
) -> tuple[list[Subscription], list[Subscription]]:
    """Join the lists in `wanted_ids`, leave the confirmed ones not in it; commits.

    The link to the preferences page proves the address, so lists chosen there are
    confirmed at once. A list still waiting for confirmation is left alone unless the
    reader leaves all. An address that bounced or complained joins nothing (no mail may go
    to it) until an admin lifts its suppression. Returns (joined, left).
    """
    mailable = not suppression.unmailable(session, subscriber.email_key)
    wanted = set() if leave_all else set(wanted_ids)
    newsletters = session.scalars(select(Newsletter).where(Newsletter.archived.is_(False))).all()
    current = {s.newsletter_id: s for s in subscriber.subscriptions}
    joined, left = [], []
    for newsletter in newsletters:
        subscription = current.get(newsletter.id)
        status = subscription.status if subscription is not None else None
        if status in STOPPED:
            continue  # a bounce or complaint ended it: only a new signup opens it again
        if newsletter.id in wanted and status != CONFIRMED:
            if not mailable:
                continue  # joining would mail it
            if subscription is None:
                subscription = Subscription(subscriber=subscriber, newsletter=newsletter)
                session.add(subscription)
            subscription.source = origin.source
            subscription.subscribed_at = utcnow()
            text = f"{newsletter.name}: {PREFERENCES_TEXT}"
            _event(session, subscription, ConsentAction.SIGNUP, origin, text)
            _mark_confirmed(session, subscription, origin, text)
            joined.append(subscription)
        elif newsletter.id not in wanted and (
            status == CONFIRMED or (leave_all and status == PENDING)
        ):
            assert subscription is not None
            _mark_unsubscribed(session, subscription, origin)
            left.append(subscription)
    _welcome(session, joined)
    session.commit()
    return joined, left


def set_frequencies(
    session: Session, subscriber: Subscriber, wanted: Mapping[int, str | None], origin: Origin
) -> list[Subscription]:
    """Store how often the reader hears from each list (by newsletter id) they follow or wait
    for, each change a consent event; choices a list does not offer are the caller's to
    refuse and skipped here. Commits; returns the subscriptions changed."""
    changed = []
    for subscription in subscriber.subscriptions:
        if subscription.newsletter_id not in wanted or subscription.status not in LIVE:
            continue
        frequency = wanted[subscription.newsletter_id]
        cadence = subscription.newsletter.cadence
        # The list's cadence chosen by name is what no choice means: nothing changes.
        if (frequency or cadence) == (subscription.frequency or cadence):
            continue
        if frequency is not None and not frequencies.valid_choice(
            subscription.newsletter, frequency
        ):
            continue
        subscription.frequency = frequency
        label = frequencies.EDITION_LABELS.get(
            frequency or subscription.newsletter.cadence, frequency or ""
        )
        text = str(FREQUENCY_TEXT) % {"frequency": label}
        _event(
            session,
            subscription,
            ConsentAction.FREQUENCY_CHANGED,
            origin,
            f"{subscription.newsletter.name}: {text}",
        )
        changed.append(subscription)
    session.commit()
    return changed


def set_combined(session: Session, subscriber: Subscriber, combined: bool, origin: Origin) -> bool:
    """One combined mail per edition for all the reader's lists, or one per list; the change
    is a consent event on each of their subscriptions. Commits; returns whether it changed."""
    if subscriber.combined == combined:
        return False
    subscriber.combined = combined
    text = f"{COMBINED_TEXT}: {COMBINED_ON if combined else COMBINED_OFF}"
    for subscription in subscriber.subscriptions:
        _event(session, subscription, ConsentAction.COMBINED_CHANGED, origin, text)
    session.commit()
    return True


def set_locale(session: Session, subscriber: Subscriber, locale: str) -> bool:
    """Write to a reader in another language from now on; consent is untouched; commits.

    Returns whether it changed.
    """
    if subscriber.locale == locale:
        return False
    subscriber.locale = locale
    session.commit()
    return True

"""Who may never be mailed again, and why: the one place that decides it.

An address that hard-bounced or complained gets no mail of any kind from any list; an
erased person's address is never brought back by an import. Only a hash of the address is
kept (`addresses.address_hash`), enough to recognise it and not to read it back.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.addresses import address_hash, mask
from newsletter.models import (
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
    utcnow,
)

# The reasons that stop all mail to an address until an admin lifts them. An erased person's
# address only keeps imports away: signing up again is new consent.
STOPS_MAIL = (SuppressionReason.BOUNCED, SuppressionReason.COMPLAINED)
# What a suppression does to the person's live subscriptions, by its reason.
_SUBSCRIPTIONS_BECOME = {
    SuppressionReason.BOUNCED: SubscriptionStatus.BOUNCED,
    SuppressionReason.COMPLAINED: SubscriptionStatus.COMPLAINED,
}


def reason(session: Session, email_key: str) -> SuppressionReason | None:
    """Why this address is suppressed, or None when it is not."""
    found = session.scalar(
        select(Suppression.reason).where(Suppression.email_hash == address_hash(email_key))
    )
    return SuppressionReason(found) if found is not None else None


def is_suppressed(session: Session, email_key: str) -> bool:
    """Whether this address may never be mailed or imported again."""
    return reason(session, email_key) is not None


def unmailable(session: Session, email_key: str) -> bool:
    """Whether no mail of any kind may go to this address: it bounced hard or complained."""
    return reason(session, email_key) in STOPS_MAIL


def of_hash(hash_column: ColumnElement[str]) -> ColumnElement[bool]:
    """The join condition from a column of address hashes to their suppressions."""
    return Suppression.email_hash == hash_column


def suppress(session: Session, email_key: str, why: SuppressionReason) -> bool:
    """Suppress an address in the caller's transaction; True when it was not suppressed before.

    Repeating it changes nothing. A bounce or a complaint also ends the person's pending and
    confirmed subscriptions, marked as such.
    """
    digest = address_hash(email_key)
    added = False
    if session.scalar(select(Suppression.id).where(Suppression.email_hash == digest)) is None:
        try:
            # A savepoint: another worker recording the same bounce undoes only this insert.
            with session.begin_nested():
                session.add(Suppression(email_hash=digest, masked=mask(email_key), reason=why))
            added = True
        except IntegrityError:
            pass
    status = _SUBSCRIPTIONS_BECOME.get(why)
    if status is not None:
        person = select(Subscriber.id).where(Subscriber.email_key == email_key.lower())
        session.execute(
            update(Subscription)
            .where(
                Subscription.subscriber_id.in_(person.scalar_subquery()),
                Subscription.status.in_((SubscriptionStatus.PENDING, SubscriptionStatus.CONFIRMED)),
            )
            # Off the list: counted as departures on the dashboard.
            .values(status=status, unsubscribed_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    return added


def lift(session: Session, email_key: str) -> SuppressionReason | None:
    """Let an address be mailed again, in the caller's transaction; the reason it had, if any.

    Its bounced or complained subscriptions stay as they are: the person signs up again,
    through double opt-in, to get mail again.
    """
    found = session.scalar(
        select(Suppression).where(Suppression.email_hash == address_hash(email_key))
    )
    if found is None:
        return None
    was = SuppressionReason(found.reason)
    session.delete(found)
    return was

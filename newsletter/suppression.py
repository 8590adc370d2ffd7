"""Who may never be mailed again, and why: the one place that decides it.

An address that hard-bounced or complained gets no mail of any kind from any list; an
erased person's address is never brought back by an import. Only a hash of the address is
kept (`addresses.address_hash`), enough to recognise it and not to read it back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from newsletter import rows
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


def suppress_many(session: Session, email_keys: Iterable[str], why: SuppressionReason) -> None:
    """`suppress` for many addresses, in a few statements."""
    keys = sorted({key.lower() for key in email_keys})
    if not keys:
        return
    now = utcnow()
    rows.insert_new_many(
        session,
        Suppression.__table__,
        [
            {"email_hash": address_hash(k), "masked": mask(k), "reason": why, "created_at": now}
            for k in keys
        ],
        "email_hash",
    )
    _stop_mail_to_erased(session, [address_hash(k) for k in keys], why, now)
    _end_subscriptions(session, keys, why, now)


def suppress(session: Session, email_key: str, why: SuppressionReason) -> bool:
    """Suppress an address in the caller's transaction; True when mail to it was allowed before.

    Repeating it changes nothing. A bounce or a complaint also ends the person's pending and
    confirmed subscriptions, marked as such, and outranks an erasure: an erased person who
    signed up again and then bounced is not mailed again.
    """
    row = {
        "email_hash": address_hash(email_key),
        "masked": mask(email_key),
        "reason": why,
        "created_at": utcnow(),
    }
    # Another worker recording the same bounce at once: one of the two inserts.
    added = rows.insert_new(session, Suppression.__table__, row, "email_hash") is not None
    if not added:
        added = _stop_mail_to_erased(session, [row["email_hash"]], why, row["created_at"]) > 0  # type: ignore[list-item,arg-type]
    _end_subscriptions(session, [email_key.lower()], why, row["created_at"])  # type: ignore[arg-type]
    return added


def _stop_mail_to_erased(
    session: Session, hashes: Sequence[str], why: SuppressionReason, now: datetime
) -> int:
    """Turn erasure suppressions of these addresses into `why` when it stops mail; how many."""
    if why not in STOPS_MAIL:
        return 0
    result = session.execute(
        update(Suppression)
        .where(
            Suppression.email_hash.in_(hashes),
            Suppression.reason == SuppressionReason.ERASED,
        )
        .values(reason=why, created_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount  # type: ignore[attr-defined,no-any-return]


def _end_subscriptions(
    session: Session, email_keys: Sequence[str], why: SuppressionReason, now: datetime
) -> None:
    """A bounce or a complaint ends these people's pending and confirmed subscriptions."""
    status = _SUBSCRIPTIONS_BECOME.get(why)
    if status is None:
        return
    people = select(Subscriber.id).where(Subscriber.email_key.in_(email_keys))
    session.execute(
        update(Subscription)
        .where(
            Subscription.subscriber_id.in_(people.scalar_subquery()),
            Subscription.status.in_((SubscriptionStatus.PENDING, SubscriptionStatus.CONFIRMED)),
        )
        # Off the list: counted as departures on the dashboard.
        .values(status=status, unsubscribed_at=now)
        .execution_options(synchronize_session=False)
    )


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

"""The delivery ledger's statements, named: one row per reader of a digest.

Snapshot the audience into it, claim batches of it with a lease, mark each row as its
message goes, settle or release what is left. Each statement that matters for speed is a
named value or function here, so it can be read, explained with EXPLAIN and tested alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Exists,
    Insert,
    Select,
    Update,
    and_,
    bindparam,
    exists,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, aliased

from newsletter import frequencies
from newsletter.leases import Leases, Policy
from newsletter.models import (
    AutoDigest,
    CombinedEdition,
    Delivery,
    DeliveryStatus,
    Digest,
    DigestItem,
    Edition,
    Newsletter,
    Subscriber,
    Subscription,
    SubscriptionStatus,
)

# How workers take a digest's rows: bigger batches than the outbox, fewer retries, slower.
# A batch is a second or so of sending: between two, the worker looks at every other queue
# (about 10 ms on PostgreSQL), 5% of its time with batches of 200.
POLICY = Policy(batch_size=1000, max_attempts=8, first_retry=timedelta(minutes=1))
LEASES = Leases(
    Delivery.__table__,
    waiting=DeliveryStatus.QUEUED,
    held=DeliveryStatus.SENDING,
    failed=DeliveryStatus.FAILED,
    # Taken in the order of the due index (ix_delivery_due: waiting rows first, then held
    # ones whose lease ran out), not sorted by id: a sort reads every due row of the digest
    # to take the first batch, so each claim cost as much as the rest of the ledger.
    order_by=lambda table: (),
)
# Statuses of a row still to be sent: waiting, or held by a worker.
UNSENT = (DeliveryStatus.QUEUED, DeliveryStatus.SENDING)
# Rows that count against a reader's alerts of the day: going, or gone.
MAILED = (DeliveryStatus.QUEUED, DeliveryStatus.SENDING, DeliveryStatus.SENT)
# PostgreSQL advisory lock held while an alert's audience is snapshot (any fixed number).
ALERT_LOCK = 0x6E6C_616C


def audience(
    newsletter_id: int, frequency: str | None = None, cadence: str | None = None
) -> ColumnElement[bool]:
    """The readers of a digest of the list: confirmed, and of its edition when it has one.

    Everyone bounced, complained or left is out. A digest of no edition (`frequency` None,
    an editor's mailing to the whole list) goes to every confirmed reader; one of alerts to
    those who chose alerts; one of an edition to the readers of that edition
    (`frequencies.edition_of`, `cadence` being the list's), except those who get the
    combined daily or weekly mail instead.
    """
    where = [
        Subscription.newsletter_id == newsletter_id,
        Subscription.status == SubscriptionStatus.CONFIRMED,
    ]
    if frequency == frequencies.ALERT:
        where.append(Subscription.frequency == frequencies.ALERT)
    elif frequency is not None:
        where.append(frequencies.edition_of(cadence or frequency) == frequency)
        if frequency in frequencies.EDITIONS:
            # Left to the combined edition only while it serves this list's edition.
            served = exists().where(Newsletter.id == newsletter_id, combinable(frequency))
            where.append(or_(~served, ~combined_reader()))
    return and_(*where)


def combined_reader() -> Exists:
    """Whether the subscription's reader chose one combined mail per edition."""
    return exists().where(Subscriber.id == Subscription.subscriber_id, Subscriber.combined)


def combinable(frequency: str) -> ColumnElement[bool]:
    """Whether the combined edition of `frequency` serves a list's edition of it (needs
    Newsletter in the query): the site's combined edition is on, and the list sends that
    edition by itself. A list whose edition an editor reviews, or sends by hand, keeps its
    combined readers in its own digests: nothing goes to them unreviewed, nobody is left out.
    """
    sends = AutoDigest.SEND.value
    own = or_(
        and_(Newsletter.cadence == frequency, Newsletter.auto_digest == sends),
        and_(
            Newsletter.cadence != frequency,
            exists().where(
                Edition.newsletter_id == Newsletter.id,
                Edition.frequency == frequency,
                Edition.auto_digest == sends,
            ),
        ),
    )
    site_on = exists().where(CombinedEdition.frequency == frequency, CombinedEdition.automatic)
    return and_(own, site_on)


def combined_audience(frequency: str, lists: Sequence[int] | None = None) -> ColumnElement[bool]:
    """The subscriptions that bring a reader into a combined edition carrying `lists` (None:
    any list).

    Confirmed, of that edition (`frequencies.edition_of` with each list's own cadence), to
    one of its lists, of a reader who chose one combined mail. Needs Newsletter joined.
    """
    where = [
        Subscription.status == SubscriptionStatus.CONFIRMED,
        frequencies.edition_of(Newsletter.cadence) == frequency,
        combined_reader(),
        combinable(frequency),
    ]
    if lists is not None:
        where.append(Subscription.newsletter_id.in_(lists))
    return and_(*where)


def combined_snapshot(
    digest_id: int, frequency: str, lists: Sequence[int], now: datetime
) -> Insert:
    """One INSERT … SELECT: a queued row for every reader of the combined edition now.

    One row per reader, not per subscription: the reader's subscription with the lowest id
    among those that bring them in stands for them (grouped by reader, so it is one, and
    the ledger's unique (digest, subscription) keeps it one). What lists their mail carries
    is read when it is sent (`reader_lists`).
    """
    readers = (
        _queued_rows(digest_id, now, func.min(Subscription.id))
        .join(Newsletter, Newsletter.id == Subscription.newsletter_id)
        .where(combined_audience(frequency, lists))
        .group_by(Subscription.subscriber_id)
    )
    return _queue(readers)


def _queued_rows(
    digest_id: int, now: datetime, subscription: ColumnElement[int] | None = None
) -> Select[Any]:
    """The SELECT of a snapshot: a queued, untried, due row of the digest per subscription."""
    return select(
        literal(digest_id),
        Subscription.id if subscription is None else subscription,
        literal(DeliveryStatus.QUEUED.value),
        literal(0),
        literal(now, Delivery.next_attempt_at.type),
    )


def _queue(rows: Select[Any]) -> Insert:
    """The INSERT … SELECT that writes a snapshot's rows into the ledger."""
    return insert(Delivery).from_select(
        ["digest_id", "subscription_id", "status", "attempts", "next_attempt_at"], rows
    )


def combined_size(frequency: str, lists: Sequence[int]) -> Select[tuple[int]]:
    """How many readers a combined edition carrying `lists` would go to if it started now."""
    return select(func.count(func.distinct(Subscription.subscriber_id))).where(
        Newsletter.id == Subscription.newsletter_id, combined_audience(frequency, lists)
    )


def reader_lists(
    session: Session, frequency: str, lists: Sequence[int], subscriber_ids: Sequence[int]
) -> dict[int, frozenset[int]]:
    """Of each reader, the lists of a combined edition they follow now; readers who follow
    none of them any more (left, bounced, erased) are missing."""
    found: dict[int, set[int]] = {}
    # The edition's lists are kept here, not in SQL: given them, SQLite would look through
    # every subscription of those lists rather than the few of these readers.
    carried = set(lists)
    rows = session.execute(
        select(Subscription.subscriber_id, Subscription.newsletter_id)
        .join(Newsletter, Newsletter.id == Subscription.newsletter_id)
        .where(
            Subscription.subscriber_id.in_(list(subscriber_ids)),
            combined_audience(frequency),
        )
    )
    for subscriber_id, newsletter_id in rows:
        if newsletter_id in carried:
            found.setdefault(subscriber_id, set()).add(newsletter_id)
    return {subscriber_id: frozenset(ids) for subscriber_id, ids in found.items()}


def audience_size(
    newsletter_id: int, frequency: str | None = None, cadence: str | None = None
) -> Select[tuple[int]]:
    """How many readers a digest of the list would go to if it started now."""
    return (
        select(func.count())
        .select_from(Subscription)
        .where(audience(newsletter_id, frequency, cadence))
    )


def snapshot(
    digest_id: int,
    newsletter_id: int,
    now: datetime,
    frequency: str | None = None,
    cadence: str | None = None,
) -> Insert:
    """One INSERT … SELECT: a queued row for every reader in the audience now."""
    return _queue(_queued_rows(digest_id, now).where(audience(newsletter_id, frequency, cadence)))


def alert_snapshot(digest_id: int, newsletter_id: int, now: datetime, cap: int) -> Insert:
    """One INSERT … SELECT for a breaking alert: the list's readers of alerts, but not twice.

    Left out: a reader already in the ledger of an alert of the same item (they follow it on
    another list: one mail is enough), and a reader who had `cap` alerts in the last 24 hours
    (the item waits for their next edition). Both are sets computed once, not per reader.
    Run it under `hold_alerts`.
    """
    where = [
        audience(newsletter_id, frequencies.ALERT),
        Subscription.subscriber_id.not_in(alerted_readers(digest_id)),
        Subscription.subscriber_id.not_in(capped_readers(now - timedelta(days=1), cap)),
    ]
    if cap <= 0:
        where.append(false())
    return _queue(_queued_rows(digest_id, now).where(*where))


def alerted_readers(digest_id: int) -> Select[tuple[int]]:
    """Readers (subscriber ids) in the ledger of an alert of one of the digest's items."""
    row, reader, mine, theirs = (
        aliased(Delivery),
        aliased(Subscription),
        aliased(DigestItem),
        aliased(DigestItem),
    )
    return (
        select(reader.subscriber_id)
        .select_from(mine)
        .join(theirs, theirs.item_id == mine.item_id)
        .join(Digest, Digest.id == theirs.digest_id)
        .join(row, row.digest_id == theirs.digest_id)
        .join(reader, reader.id == row.subscription_id)
        .where(mine.digest_id == digest_id, Digest.frequency == frequencies.ALERT)
    )


def capped_readers(since: datetime, cap: int) -> Select[tuple[int]]:
    """Readers who had `cap` alerts or more, of any list, going or gone since then."""
    row, reader = aliased(Delivery), aliased(Subscription)
    return (
        select(reader.subscriber_id)
        .select_from(Digest)
        .join(row, row.digest_id == Digest.id)
        .join(reader, reader.id == row.subscription_id)
        .where(
            Digest.frequency == frequencies.ALERT,
            Digest.started_at > since,
            row.status.in_(MAILED),
        )
        .group_by(reader.subscriber_id)
        .having(func.count() >= cap)
    )


def hold_alerts(session: Session) -> None:
    """Take alerts' snapshots one at a time, so the cap and the one-mail rule hold.

    Two workers snapshotting at once would each miss the other's rows. On PostgreSQL a
    transaction-long advisory lock; SQLite's writes are one at a time already.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(ALERT_LOCK)))


def claim(
    session: Session,
    digest_id: int,
    token: str,
    policy: Policy,
    *,
    size: int | None = None,
    now: datetime | None = None,
) -> list[int]:
    """Take up to a batch of the digest's due rows for one claim, with a lease; commits."""
    where = Delivery.digest_id == digest_id
    return LEASES.claim(session, token, policy, where, limit=size, now=now)


class Recipient(NamedTuple):
    """A claimed row with what its message needs."""

    delivery_id: int
    # The subscription's, as last read: a reader may have left since the digest started.
    # None once the reader was erased.
    status: SubscriptionStatus | None
    subscriber_id: int
    address: str
    token_key: str
    attempts: int
    locale: str | None = None  # the language the reader reads mail in
    # Of a combined edition: the lists the reader's mail carries.
    lists: frozenset[int] = frozenset()


# The claimed rows' readers, in the ledger's order; rows whose reader was erased are missing.
RECIPIENTS = (
    select(
        Delivery.id,
        Subscription.status,
        Subscriber.id,
        Subscriber.email,
        Subscriber.token_key,
        Delivery.attempts,
        Subscriber.locale,
    )
    .join(Subscription, Subscription.id == Delivery.subscription_id)
    .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
    .where(Delivery.id.in_(bindparam("rows", expanding=True)))
    .order_by(Delivery.id)
)


def recipients(session: Session, rows: Sequence[int]) -> list[Recipient]:
    """The readers of claimed rows, as `Recipient`s."""
    return [Recipient(*row) for row in session.execute(RECIPIENTS, {"rows": list(rows)})]


def combined_recipients(
    session: Session, rows: Sequence[int], frequency: str, lists: Sequence[int]
) -> list[Recipient]:
    """The readers of a combined edition's claimed rows, each with the lists they follow now.

    A reader is confirmed while they follow one of the edition's lists at its frequency;
    the subscription that stands for them may have gone while others stay.
    """
    found = recipients(session, rows)
    follows = reader_lists(session, frequency, lists, [r.subscriber_id for r in found])
    return [_as_combined(r, follows.get(r.subscriber_id, frozenset())) for r in found]


def _as_combined(recipient: Recipient, lists: frozenset[int]) -> Recipient:
    if lists:
        return recipient._replace(status=SubscriptionStatus.CONFIRMED, lists=lists)
    status = recipient.status
    if status == SubscriptionStatus.CONFIRMED:
        # Still on the list that stood for them, but no longer at this edition's frequency.
        status = SubscriptionStatus.UNSUBSCRIBED
    return recipient._replace(status=status, lists=lists)


# The subscriptions' statuses of rows still to send, read again while a batch goes out.
STATUSES = (
    select(Delivery.id, Subscription.status)
    .join(Subscription, Subscription.id == Delivery.subscription_id)
    .where(Delivery.id.in_(bindparam("rows", expanding=True)))
)


def statuses(session: Session, rows: Sequence[int]) -> dict[int, SubscriptionStatus]:
    """Each row's subscription status now; rows whose reader was erased are missing."""
    found = session.execute(STATUSES, {"rows": list(rows)})
    return {row: SubscriptionStatus(status) for row, status in found}


# Per message, the one statement a worker runs: built once; Core, not ORM (the ORM's UPDATE
# would look for loaded objects to refresh, three times the cost of the write itself).
MARK_SENT = LEASES.settle_statement(DeliveryStatus.SENT, one=True, sent_at=bindparam("now"))


def skip_unsent(digest_id: int, why: str) -> Update:
    """Skip every row not sent yet, held ones too (a cancel); their claim stays.

    A worker that dies holding rows would leave them `sending` for good. The claim stays so
    a message a live worker is sending right now is still marked sent.
    """
    return (
        update(Delivery)
        .where(Delivery.digest_id == digest_id, Delivery.status.in_(UNSENT))
        .values(status=DeliveryStatus.SKIPPED, last_error=why)
        .execution_options(synchronize_session=False)
    )


def unsent(digest_id: int) -> Exists:
    """Whether any row of the digest waits or is held."""
    return exists().where(Delivery.digest_id == digest_id, Delivery.status.in_(UNSENT))


def counts_by_status(digest_id: int) -> Select[Any]:
    """(status, rows) of the digest's ledger."""
    return (
        select(Delivery.status, func.count())
        .where(Delivery.digest_id == digest_id)
        .group_by(Delivery.status)
    )


def counts(session: Session, digest_id: int) -> dict[DeliveryStatus, int]:
    """How many of the digest's rows are in each status."""
    found = {status: 0 for status in DeliveryStatus}
    for status, count in session.execute(counts_by_status(digest_id)):
        found[DeliveryStatus(status)] = count
    return found


def retrying(digest_id: int) -> Select[tuple[int]]:
    """Rows put back after a failure, waiting to be tried again."""
    return (
        select(func.count())
        .select_from(Delivery)
        .where(
            Delivery.digest_id == digest_id,
            Delivery.status == DeliveryStatus.QUEUED,
            Delivery.attempts > 0,
        )
    )


def last_refusal(digest_id: int) -> Select[tuple[str | None]]:
    """The last error of one row put back for a retry, if any."""
    return (
        select(Delivery.last_error)
        .where(
            Delivery.digest_id == digest_id,
            Delivery.status == DeliveryStatus.QUEUED,
            Delivery.last_error.is_not(None),
        )
        .limit(1)
    )

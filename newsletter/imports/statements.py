"""An import's statements: a batch of checked rows written by INSERT … SELECT.

A batch goes to the database as JSON parameters expanded to rows there (json_each on SQLite,
json_array_elements on PostgreSQL), and every write is one INSERT … SELECT over them: per
row, Python only checks the address; the database does the rest without a round trip or a
type conversion per value. `rows` holds arrays of FIELDS, for the statements that need
more than the address; `keys` holds the lookup keys alone, which cost least to expand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    FromClause,
    Insert,
    Integer,
    Select,
    String,
    Text,
    and_,
    bindparam,
    cast,
    column,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ColumnElement

from newsletter import suppression
from newsletter.models import (
    ConsentAction,
    ConsentEvent,
    ImportMode,
    MailKind,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    UTCDateTime,
)
from newsletter.subscriptions import IMPORTED

SOURCE = IMPORTED
FIELDS = ("number", "address", "key", "locale", "subscribed_at", "hash", "name")


def batch_rows(dialect: Dialect) -> FromClause:
    """The `rows` parameter (a JSON array of [number, address, key, …]) as a table."""
    if dialect.name == "postgresql":
        value = (
            func.json_array_elements(cast(bindparam("rows"), JSON))
            .table_valued(column("value", postgresql.JSON))
            .alias("j")
            .c.value
        )
        texts = [value[i].astext for i in range(len(FIELDS))]
        texts[0] = cast(texts[0], Integer)
        texts[4] = cast(texts[4], UTCDateTime)
        return select(
            *(cell.label(name) for cell, name in zip(texts, FIELDS, strict=True))
        ).subquery("b")
    value = func.json_each(bindparam("rows")).table_valued("value").alias("j").c.value
    return select(
        *(func.json_extract(value, f"$[{i}]").label(name) for i, name in enumerate(FIELDS))
    ).subquery("b")


def batch_keys(dialect: Dialect) -> FromClause:
    """The `keys` parameter (a JSON array of lookup keys) as a table with one column, key."""
    if dialect.name == "postgresql":
        elements = func.json_array_elements_text(cast(bindparam("keys"), JSON))
    else:
        elements = func.json_each(bindparam("keys"))
    value = elements.table_valued("value").alias("k").c.value
    return select(value.label("key")).subquery("b")


def random_key(dialect: Dialect) -> ColumnElement[str]:
    """A random hex string made by the database, one per row (tokens, nonces, Message-IDs)."""
    if dialect.name == "postgresql":
        return func.replace(cast(func.gen_random_uuid(), Text), "-", "")
    return func.lower(func.hex(func.randomblob(12)))


def confirmation_payload(dialect: Dialect) -> ColumnElement[Any]:
    """An imported reader's confirmation payload, {"subscriptions": [[id, nonce]], "reason":
    "import"}: the mail asks them to confirm to keep receiving (subscriptions.IMPORTED)."""
    pair = (Subscription.id, Subscription.nonce)
    if dialect.name == "postgresql":
        return func.json_build_object(
            "subscriptions",
            func.json_build_array(func.json_build_array(*pair)),
            "reason",
            cast(literal(IMPORTED), Text),
        )
    return func.json_object(
        "subscriptions", func.json_array(func.json_array(*pair)), "reason", IMPORTED
    )


NOW = bindparam("now", type_=UTCDateTime)
CUSTOM_PLANS = text("SET LOCAL plan_cache_mode = force_custom_plan")
NEWSLETTER = bindparam("newsletter_id", type_=Integer)


def not_to_add(b: FromClause) -> Select[Any]:
    """The rows of a batch an import leaves alone: suppressed, or on the list in any state."""
    return (
        select(b.c.number, b.c.address, Suppression.reason, Subscription.status)
        .select_from(b)
        .outerjoin(Suppression, suppression.of_hash(b.c.hash))
        .outerjoin(Subscriber, Subscriber.email_key == b.c.key)
        .outerjoin(
            Subscription,
            and_(
                Subscription.subscriber_id == Subscriber.id,
                Subscription.newsletter_id == NEWSLETTER,
            ),
        )
        .where(or_(Suppression.id.is_not(None), Subscription.id.is_not(None)))
    )


def insert_subscribers(b: FromClause, dialect: Dialect) -> Insert:
    """A subscriber for every address of the batch that has none yet, with its name.

    A subscriber who exists keeps the name they have: an import only adds people.
    """
    return insert(Subscriber).from_select(
        ["email", "email_key", "name", "locale", "token_key", "created_at"],
        select(b.c.address, b.c.key, b.c.name, b.c.locale, random_key(dialect), NOW).where(
            ~exists().where(Subscriber.email_key == b.c.key)
        ),
        include_defaults=False,
    )


def insert_subscriptions(b: FromClause, dialect: Dialect, mode: ImportMode) -> Insert:
    """A subscription to the list for every row of the batch: pending, or confirmed."""
    since = func.coalesce(b.c.subscribed_at, NOW)
    confirmed = mode == ImportMode.CONSENTED
    return insert(Subscription).from_select(
        ["subscriber_id", "newsletter_id", "status", "nonce", "source", "subscribed_at"]
        + (["confirmed_at"] if confirmed else []),
        select(
            Subscriber.id,
            NEWSLETTER,
            literal(
                SubscriptionStatus.CONFIRMED if confirmed else SubscriptionStatus.PENDING, String
            ),
            random_key(dialect),
            literal(SOURCE, String),
            since,
            *([since] if confirmed else []),
        ).join_from(b, Subscriber, Subscriber.email_key == b.c.key),
        include_defaults=False,
    )


def _new_subscriptions(b: FromClause) -> Select[Any]:
    """The batch's rows with their subscriber and their subscription to the list."""
    return (
        select(Subscriber.id, Subscriber.email, Subscription.id, Subscription.nonce)
        .join_from(b, Subscriber, Subscriber.email_key == b.c.key)
        .join(
            Subscription,
            and_(
                Subscription.subscriber_id == Subscriber.id,
                # "+ 0" keeps the planner off the (newsletter, status) index: through it,
                # a fresh SQLite database without statistics reads the whole list per batch.
                Subscription.newsletter_id + 0 == NEWSLETTER,
            ),
        )
    )


def insert_events(b: FromClause, action: ConsentAction) -> Insert:
    """One consent event per row of the batch, with the import's consent note."""
    return insert(ConsentEvent).from_select(
        ["subscription_id", "action", "created_at", "source", "text_shown"],
        _new_subscriptions(b).with_only_columns(
            Subscription.id,
            literal(action, String),
            NOW,
            literal(SOURCE, String),
            bindparam("note", type_=Text),
        ),
        include_defaults=False,
    )


def insert_confirmations(b: FromClause, dialect: Dialect) -> Insert:
    """One confirmation mail in the outbox per row of the batch, for the worker to send."""
    return insert(OutboxMessage).from_select(
        [
            "kind",
            "subscriber_id",
            "to_address",
            "payload",
            "message_key",
            "status",
            "attempts",
            "next_attempt_at",
            "created_at",
        ],
        _new_subscriptions(b).with_only_columns(
            literal(MailKind.CONFIRMATION, String),
            Subscriber.id,
            Subscriber.email,
            confirmation_payload(dialect),
            random_key(dialect),
            literal(OutboxStatus.QUEUED, String),
            literal(0, Integer),
            NOW,
            NOW,
        ),
        include_defaults=False,
    )


@dataclass(frozen=True)
class Statements:
    """The statements of one import, built once for its database and mode."""

    not_to_add: Select[Any]
    writes: tuple[Insert, ...]

    @classmethod
    def build(cls, dialect: Dialect, mode: ImportMode) -> Statements:
        b, k = batch_rows(dialect), batch_keys(dialect)
        writes = [insert_subscribers(b, dialect), insert_subscriptions(b, dialect, mode)]
        writes.append(insert_events(k, ConsentAction.SIGNUP))
        if mode == ImportMode.CONSENTED:
            writes.append(insert_events(k, ConsentAction.CONFIRMED))
        else:
            writes.append(insert_events(k, ConsentAction.CONFIRMATION_SENT))
            writes.append(insert_confirmations(k, dialect))
        return cls(not_to_add(b), tuple(writes))


def driver_moment(dialect: Dialect) -> Callable[[datetime], object]:
    """A UTC moment as this database compares it inside a JSON batch."""
    convert = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    if convert is None or dialect.name == "postgresql":
        return lambda moment: moment.isoformat()
    return convert

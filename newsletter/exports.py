"""Subscriber lists as CSV that spreadsheets open without running anything."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TextIO

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from newsletter.models import Newsletter, Subscriber, Subscription
from newsletter.subscribers import Filter, apply, record

COLUMNS = (
    "email",
    "newsletter",
    "status",
    "subscribed_at",
    "confirmed_at",
    "unsubscribed_at",
    "source",
    # Last, so that scripts reading the columns by position before names were kept still work.
    "name",
)

# A spreadsheet runs a cell that starts with one of these as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: object) -> str:
    """A cell's text, with a leading quote when a spreadsheet would take it for a formula."""
    if value is None:
        return ""
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def subscriptions_query(where: Filter | None = None) -> Select:
    """The export's columns for every subscription, filtered, in a stable order."""
    query = (
        select(
            Subscriber.email,
            Newsletter.slug,
            Subscription.status,
            Subscription.subscribed_at,
            Subscription.confirmed_at,
            Subscription.unsubscribed_at,
            Subscription.source,
            Subscriber.name,
        )
        .join(Subscriber, Subscription.subscriber_id == Subscriber.id)
        .join(Newsletter, Subscription.newsletter_id == Newsletter.id)
        .order_by(Subscription.id)
    )
    return apply(query, where or Filter())


def subscription_rows(session: Session, query: Select) -> Iterator[tuple[object, ...]]:
    """Stream the rows of a query, a thousand at a time."""
    for row in session.execute(query.execution_options(yield_per=1000)):
        yield tuple(row)


def audited_rows(
    session: Session, where: Filter, admin_user_id: int | None
) -> Iterator[tuple[object, ...]]:
    """The rows of an export of subscriptions; the export is recorded first (commits).

    From the command line there is no account: the record names none.
    """
    record(session, admin_user_id, "export", filter=where.as_dict())
    session.commit()
    return subscription_rows(session, subscriptions_query(where))


def write_csv(rows: Iterable[tuple[object, ...]], out: TextIO) -> int:
    """Write a header and the rows, every cell neutralised; return the row count."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    count = 0
    for row in rows:
        writer.writerow([neutralise(cell) for cell in row])
        count += 1
    return count


def csv_chunks(rows: Iterable[tuple[object, ...]], per_chunk: int = 500) -> Iterator[str]:
    """The same CSV as write_csv, as text chunks for a streamed response."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for count, row in enumerate(rows, 1):
        writer.writerow([neutralise(cell) for cell in row])
        if count % per_chunk == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()

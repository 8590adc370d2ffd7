"""The dashboard's figures: counts per status, recent activity, growth per day, the SVG chart."""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from jinja2 import Environment
from markupsafe import Markup
from sqlalchemy import event, text

from newsletter.charts import growth_svg
from newsletter.extensions import db as _db
from newsletter.models import Newsletter, Subscriber, Subscription
from newsletter.stats import Activity, activity, combined, growth, growth_each, status_counts

from factories import make_newsletter

NOW = datetime(2025, 3, 15, 12, 0, tzinfo=UTC)
TODAY = NOW.date()
SVG = "{http://www.w3.org/2000/svg}"
_readers = itertools.count(1)


def ago(days: float = 0, **delta: float) -> datetime:
    return NOW - timedelta(days=days, **delta)


def add(
    newsletter: Newsletter,
    status: str = "confirmed",
    *,
    subscribed: datetime | None = None,
    confirmed: datetime | None = None,
    unsubscribed: datetime | None = None,
) -> None:
    """A new reader's subscription with these times (signed up a year ago unless given)."""
    address = f"reader{next(_readers)}@example.com"
    _db.session.add(
        Subscription(
            subscriber=Subscriber(email=address, email_key=address),
            newsletter=newsletter,
            status=status,
            subscribed_at=subscribed or ago(365),
            confirmed_at=confirmed,
            unsubscribed_at=unsubscribed,
        )
    )


def days_back(*counts: int) -> list[tuple[date, int]]:
    """Growth points ending today: the last count is today's, the one before yesterday's…"""
    return [(TODAY - timedelta(days=len(counts) - 1 - i), n) for i, n in enumerate(counts)]


@pytest.fixture
def statements(app) -> Iterator[list[tuple[str, Any]]]:  # type: ignore[no-untyped-def]
    """The SQL statements, with their parameters, sent to the database while the test runs."""
    sent: list[tuple[str, Any]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        sent.append((statement, parameters))

    event.listen(_db.engine, "before_cursor_execute", record)
    yield sent
    event.remove(_db.engine, "before_cursor_execute", record)


def test_status_counts_every_open_newsletter_with_zeros(db, newsletters):
    daily, ukraine, culture = newsletters
    old = make_newsletter("old", archived=True)
    for status in ["pending"] * 2 + ["confirmed"] * 3 + ["unsubscribed", "bounced", "complained"]:
        add(daily, status)
    add(culture, "confirmed")
    for _ in range(5):
        add(old, "confirmed")
    db.session.commit()

    counts = status_counts(db.session)

    zero = {"pending": 0, "confirmed": 0, "unsubscribed": 0, "bounced": 0, "complained": 0}
    assert counts == {
        daily.id: {
            "pending": 2,
            "confirmed": 3,
            "unsubscribed": 1,
            "bounced": 1,
            "complained": 1,
        },
        ukraine.id: zero,
        culture.id: {**zero, "confirmed": 1},
    }
    assert list(counts) == [daily.id, ukraine.id, culture.id]


def test_activity_windows_end_now_and_reach_back_24h_7d_30d(db, newsletters):
    daily, ukraine, culture = newsletters
    old = make_newsletter("old", archived=True)
    second = timedelta(seconds=1)
    for moment in [
        NOW,
        ago(1) + second,
        ago(1),  # exactly 24 h ago: the window is open at its start
        ago(1) - second,
        ago(7) + second,
        ago(7) - second,
        ago(30) + second,
        ago(30) - second,
        NOW + second,  # a clock ahead of ours: not yet
    ]:
        add(daily, "pending", subscribed=moment)
    for moment in [ago(hours=1), ago(hours=25), ago(31)]:
        add(daily, "unsubscribed", confirmed=ago(300), unsubscribed=moment)
    add(culture, "pending", subscribed=ago(2))
    add(old, "pending", subscribed=ago(hours=1))
    db.session.commit()

    figures = activity(db.session, NOW)

    assert figures == {
        daily.id: Activity(
            signups_24h=2,
            signups_7d=5,
            signups_30d=7,
            unsubscribes_24h=1,
            unsubscribes_7d=2,
            unsubscribes_30d=2,
        ),
        ukraine.id: Activity(),
        culture.id: Activity(signups_7d=1, signups_30d=1),
    }


def test_growth_counts_a_reader_from_confirmation_until_the_day_they_leave(db, newsletters):
    add(newsletters[0], "unsubscribed", confirmed=ago(10), unsubscribed=ago(3))
    db.session.commit()

    points = growth(db.session, NOW, days=14)

    #                   -13 -12 -11 -10 -9 -8 -7 -6 -5 -4 -3 -2 -1  0
    assert points == days_back(0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0)


def test_growth_starts_from_the_readers_confirmed_before_the_window(db, newsletters):
    daily = newsletters[0]
    add(daily, "confirmed", confirmed=ago(100))
    add(daily, "unsubscribed", confirmed=ago(200), unsubscribed=ago(95))
    add(daily, "unsubscribed", confirmed=ago(120), unsubscribed=ago(5))
    add(daily, "bounced", confirmed=ago(200), unsubscribed=ago(10))
    add(daily, "pending", subscribed=ago(2))
    add(daily, "pending", confirmed=ago(50))  # pending again: not counted, whatever its times
    add(daily, "unsubscribed", unsubscribed=ago(2))  # left before confirming: never counted
    db.session.commit()

    points = growth(db.session, NOW, days=30)

    # Left 5 and 10 days ago: counted up to the end of day -6 and day -11.
    expected = [1 + (k >= 6) + (k >= 11) for k in range(29, -1, -1)]
    assert points == days_back(*expected)
    assert points[-1] == (TODAY, 1)


def test_growth_of_all_newsletters_and_of_one(db, newsletters):
    daily, ukraine, culture = newsletters
    add(daily, "confirmed", confirmed=ago(10))
    add(daily, "confirmed", confirmed=ago(5))
    add(culture, "confirmed", confirmed=ago(3))
    db.session.commit()

    assert growth(db.session, NOW, days=7) == days_back(1, 2, 2, 3, 3, 3, 3)
    assert growth(db.session, NOW, days=7, newsletter_id=daily.id) == days_back(1, 2, 2, 2, 2, 2, 2)
    assert growth(db.session, NOW, days=7, newsletter_id=culture.id) == days_back(
        0, 0, 0, 1, 1, 1, 1
    )
    assert growth(db.session, NOW, days=7, newsletter_id=ukraine.id) == days_back(
        0, 0, 0, 0, 0, 0, 0
    )


def test_growth_of_each_newsletter_in_one_pass_adds_up_to_the_whole(db, newsletters, statements):
    daily, ukraine, culture = newsletters
    add(daily, "confirmed", confirmed=ago(40))
    add(daily, "confirmed", confirmed=ago(10))
    add(daily, "unsubscribed", confirmed=ago(9), unsubscribed=ago(2))
    add(culture, "confirmed", confirmed=ago(3))
    db.session.commit()
    statements.clear()

    each = growth_each(db.session, NOW, days=30)
    # Two statements, however many newsletters there are.
    assert len(statements) == 2
    for newsletter in newsletters:
        assert each[newsletter.id] == growth(db.session, NOW, days=30, newsletter_id=newsletter.id)
    assert combined(each) == growth(db.session, NOW, days=30)
    assert each[daily.id][-1] == (TODAY, 2) and each[ukraine.id][-1] == (TODAY, 0)


def test_growth_days_are_utc_days_whatever_the_zones(db, newsletters):
    yesterday_end = datetime.combine(TODAY, datetime.min.time(), UTC) - timedelta(microseconds=1)
    add(newsletters[0], "confirmed", confirmed=yesterday_end)
    add(newsletters[0], "confirmed", confirmed=yesterday_end + timedelta(microseconds=1))
    db.session.commit()
    if db.engine.dialect.name == "postgresql":
        # A server whose clock talks New Zealand time still counts UTC days.
        db.session.execute(text("SET LOCAL TIME ZONE 'Pacific/Auckland'"))
    # 02:00 on the next day in Kiribati is still today in UTC.
    kiribati_now = NOW.astimezone(timezone(timedelta(hours=14)))

    assert growth(db.session, kiribati_now, days=3) == days_back(0, 1, 2)


def test_growth_default_is_90_days_ending_today(db, newsletters):
    add(newsletters[0], "confirmed", confirmed=ago(400))
    db.session.commit()

    points = growth(db.session, NOW)

    assert len(points) == 90
    assert points[0] == (TODAY - timedelta(days=89), 1) and points[-1] == (TODAY, 1)
    assert growth(db.session, NOW, days=1) == [(TODAY, 1)]
    with pytest.raises(ValueError):
        growth(db.session, NOW, days=0)
    with pytest.raises(ValueError):
        growth(db.session, NOW.replace(tzinfo=None))


def test_the_number_of_statements_does_not_grow_with_newsletters(db, newsletters, statements):
    for newsletter in newsletters:
        add(newsletter, "confirmed", subscribed=ago(2), confirmed=ago(1))
    db.session.commit()
    statements.clear()

    status_counts(db.session)
    assert len(statements) == 1
    activity(db.session, NOW)
    assert len(statements) == 2
    growth(db.session, NOW)
    assert len(statements) == 4  # the count before the window, the changes of each day


def test_every_count_reads_one_covering_index_range(db, newsletters, statements):
    if db.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL plans tiny test tables with sequential scans")
    daily_id = newsletters[0].id
    statements.clear()
    status_counts(db.session)
    activity(db.session, NOW)
    growth(db.session, NOW)
    growth(db.session, NOW, newsletter_id=daily_id)
    growth_each(db.session, NOW)
    assert len(statements) == 8

    conn = db.session.connection()
    for statement, parameters in list(statements):
        plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
        steps = [step for *_, step in plan if " subscription " in f"{step} "]
        # Without its index, a count per day is a scan of the table per day.
        assert steps and all("USING COVERING INDEX" in step for step in steps), (statement, plan)


# The chart


def parse(svg: Markup) -> ET.Element:
    """The chart as XML: it must be well-formed to parse at all."""
    return ET.fromstring(str(svg))


def labels(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}text")]


def test_chart_is_an_accessible_svg_image():
    points = [(date(2025, 1, 1) + timedelta(days=i), 1000 + 10 * i) for i in range(90)]

    svg = growth_svg(points, title="Daily Briefing")

    assert isinstance(svg, Markup)
    root = parse(svg)
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img"
    assert root.get("viewBox") == "0 0 640 200"
    title, desc = root.find(f"{SVG}title"), root.find(f"{SVG}desc")
    assert title is not None and title.text == "Daily Briefing"
    assert desc is not None and desc.text == (
        "From 2025-01-01 (1,000) to 2025-03-31 (1,890); lowest 1,000, highest 1,890."
    )
    assert root.get("aria-labelledby") == f"{title.get('id')} {desc.get('id')}"
    assert labels(root) == ["1,000", "2025-01-01", "1,890", "2025-03-31"]
    line = root.find(f"{SVG}polyline")
    assert line is not None and len((line.get("points") or "").split()) == 90


def test_chart_title_is_escaped():
    title = 'Kate\'s <script>alert("x")</script> & friends'

    svg = growth_svg([(date(2025, 1, 1), 1), (date(2025, 1, 2), 2)], title=title)

    assert "<script" not in svg
    assert "&lt;script&gt;" in svg
    assert parse(svg).find(f"{SVG}title").text == title  # type: ignore[union-attr]
    # Jinja's autoescape leaves the chart as it is and would escape a plain string.
    page = Environment(autoescape=True).from_string("{{ chart }}").render(chart=svg)
    assert page == str(svg)


@pytest.mark.parametrize(
    "points",
    [
        [],
        [(date(2025, 1, 1), 7)],
        [(date(2025, 1, 1) + timedelta(days=i), 0) for i in range(90)],
    ],
    ids=["empty", "one-point", "all-zero"],
)
def test_chart_draws_small_and_flat_series(points):
    svg = growth_svg(points, title="Culture", width=320, height=120)

    root = parse(svg)
    assert root.get("viewBox") == "0 0 320 120"
    assert root.find(f"{SVG}title").text == "Culture"  # type: ignore[union-attr]
    numbers = [
        float(n)
        for element in root.iter()
        for name in ("x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "points")
        for n in (element.get(name) or "").replace(",", " ").split()
    ]
    assert all(math.isfinite(n) and 0 <= n <= 320 for n in numbers)
    if not points:
        assert labels(root) == ["No data yet"]
        assert root.find(f"{SVG}polyline") is None
    else:
        assert labels(root) == [
            f"{points[0][1]}",
            points[0][0].isoformat(),
            *([points[-1][0].isoformat()] if len(points) > 1 else []),
        ]

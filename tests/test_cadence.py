"""Cadences: the next moment of a newsletter's digest, and automatic digests by the worker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from newsletter.digests import cadence
from newsletter.models import AutoDigest, Delivery, Digest, DigestStatus, utcnow

from factories import add_item, add_reader, make_newsletter


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("kind", "time", "zone", "weekday", "after", "expected"),
    [
        # Daily at 07:30 in Kyiv (UTC+2 in winter): 05:30 UTC, today if not yet past.
        ("daily", "07:30", "Europe/Kyiv", 0, "2026-11-25T04:00", "2026-11-25T05:30"),
        ("daily", "07:30", "Europe/Kyiv", 0, "2026-11-25T05:30", "2026-11-26T05:30"),
        # Weekly on Monday (0) at 09:00 UTC; 2026-11-25 is a Wednesday.
        ("weekly", "09:00", "UTC", 0, "2026-11-25T12:00", "2026-11-30T09:00"),
        # Monthly on the 1st.
        ("monthly", "06:00", "UTC", 0, "2026-11-25T12:00", "2026-12-01T06:00"),
        # A zone ahead of UTC whose local date is already tomorrow.
        ("daily", "08:00", "Pacific/Auckland", 0, "2026-11-25T23:00", "2026-11-26T19:00"),
        # Across the end of summer time in Kyiv (25 October 2026): 07:30 is 04:30 UTC, then 05:30.
        ("daily", "07:30", "Europe/Kyiv", 0, "2026-10-24T05:00", "2026-10-25T05:30"),
        ("daily", "07:30", "Europe/Kyiv", 0, "2026-10-23T05:00", "2026-10-24T04:30"),
    ],
)
def test_next_run(kind, time, zone, weekday, after, expected):  # type: ignore[no-untyped-def]
    assert cadence.next_run(kind, time, zone, weekday, at(after)) == at(expected)


@pytest.mark.parametrize(
    ("time", "zone", "message"),
    [
        ("7:30", "UTC", "time of day"),
        ("24:00", "UTC", "time of day"),
        ("07:30", "Mars/Base", "time zone"),
    ],
)
def test_bad_settings_are_explained(time, zone, message):  # type: ignore[no-untyped-def]
    with pytest.raises(cadence.CadenceError, match=message):
        cadence.next_run("daily", time, zone, 0, utcnow())


def test_plan_sets_and_clears_the_next_moment(app):  # type: ignore[no-untyped-def]
    newsletter = make_newsletter("daily", cadence="daily", send_time="08:00", timezone="UTC")
    cadence.plan(newsletter, at("2026-11-25T09:00"))
    assert newsletter.next_digest_at is None
    newsletter.auto_digest = AutoDigest.DRAFT
    cadence.plan(newsletter, at("2026-11-25T09:00"))
    assert newsletter.next_digest_at == at("2026-11-26T08:00")


def _due(db, auto):  # type: ignore[no-untyped-def]
    newsletter = make_newsletter("daily", cadence="daily", auto_digest=auto)
    newsletter.next_digest_at = utcnow() - timedelta(minutes=1)
    db.session.commit()
    return newsletter


def test_due_cadence_makes_a_draft_of_new_items(db):  # type: ignore[no-untyped-def]
    newsletter = _due(db, AutoDigest.DRAFT)
    add_item(db, newsletter, "Story")
    add_reader(db, newsletter, "r@example.com")
    [digest] = cadence.run_due(db.session)
    assert digest.status == DigestStatus.DRAFT and digest.automatic
    assert [i.title for i in digest.items] == ["Story"]
    db.session.refresh(newsletter)
    assert newsletter.next_digest_at > utcnow()
    # The run is taken: a second worker finds nothing due.
    assert cadence.run_due(db.session) == []
    assert db.session.scalar(select(func.count(Digest.id))) == 1


def test_due_cadence_sends_when_set_to(db):  # type: ignore[no-untyped-def]
    newsletter = _due(db, AutoDigest.SEND)
    add_item(db, newsletter, "Story")
    add_reader(db, newsletter, "r@example.com")
    [digest] = cadence.run_due(db.session)
    assert digest.status == DigestStatus.SENDING
    assert db.session.scalar(select(func.count(Delivery.id))) == 1


def test_no_new_items_no_digest(db):  # type: ignore[no-untyped-def]
    newsletter = _due(db, AutoDigest.SEND)
    add_reader(db, newsletter, "r@example.com")
    assert cadence.run_due(db.session) == []
    db.session.refresh(newsletter)
    assert newsletter.next_digest_at > utcnow()


def test_saving_settings_plans_the_next_digest_and_archiving_stops_it(db):  # type: ignore[no-untyped-def]
    from newsletter import newsletters

    newsletter = make_newsletter("daily", cadence="daily")
    assert newsletter.next_digest_at is None
    newsletters.save(
        db.session,
        newsletter,
        {"auto_digest": AutoDigest.DRAFT, "send_time": "06:15", "timezone": "Europe/Kyiv"},
    )
    planned = newsletter.next_digest_at
    assert planned is not None and planned > utcnow()
    assert planned.astimezone(cadence.zone("Europe/Kyiv")).strftime("%H:%M") == "06:15"
    newsletters.set_archived(db.session, newsletter, True)
    assert newsletter.next_digest_at is None
    newsletters.set_archived(db.session, newsletter, False)
    assert newsletter.next_digest_at == planned

"""The dashboard: growth of all newsletters and of each, its numbers written alike everywhere."""

from __future__ import annotations

import re
from datetime import timedelta

from newsletter.models import Subscriber, Subscription, utcnow

from factories import sign_in


def _confirmed(db, newsletter, count: int, days_ago: int) -> None:  # type: ignore[no-untyped-def]
    when = utcnow() - timedelta(days=days_ago)
    for n in range(count):
        person = Subscriber(
            email=f"{newsletter.slug}{n}@example.com", email_key=f"{newsletter.slug}{n}@example.com"
        )
        db.session.add(
            Subscription(
                subscriber=person,
                newsletter=newsletter,
                status="confirmed",
                subscribed_at=when,
                confirmed_at=when,
            )
        )
    db.session.commit()


def test_growth_is_charted_for_all_newsletters_and_for_each(client, db, admin, newsletters):
    daily, ukraine, culture = newsletters
    _confirmed(db, daily, 3, days_ago=5)
    _confirmed(db, culture, 2, days_ago=2)
    sign_in(client)
    page = client.get("/admin/").get_data(as_text=True)
    assert "<title" in page and "Confirmed subscribers, last 90 days</title>" in page
    for n in newsletters:
        assert f"Confirmed subscribers of {n.name}, last 90 days</title>" in page
        assert f'<h3 id="growth-{n.id}">{n.name}</h3>' in page
    # Each chart ends on its own list's count: 5 together, 3 and 2 apart, 0 for the third.
    descriptions = re.findall(r"<desc [^>]*>([^<]*)</desc>", page)
    assert [d.split("(")[-1].split(")")[0] for d in descriptions] == ["5", "3", "0", "2"]


def test_the_dashboards_numbers_read_alike_in_table_and_chart(client, db, admin, newsletters):
    daily = newsletters[0]
    _confirmed(db, daily, 1234, days_ago=3)
    sign_in(client)
    for language, written in (("en", "1,234"), ("uk", "1\u00a0234")):
        page = client.get("/admin/", headers={"Accept-Language": language}).get_data(as_text=True)
        # The status table, the growth table and the chart's top label and description.
        assert f"<td>0</td><td>{written}</td>" in page
        assert f"<td>{written}</td></tr></tbody>" in page
        assert f'dy="0.7em">{written}</text>' in page
        assert f"({written})" in page

"""Times in the newsletter's time zone: in digest mails, on the admin's pages, in the item form."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime

from sqlalchemy import select

from newsletter.digests import states
from newsletter.mail.transport import MemoryTransport
from newsletter.models import Item

from factories import (
    add_item,
    add_reader,
    csrf_token,
    html_part,
    make_newsletter,
    send_all,
    sign_in,
    text_part,
)

# 06:30 UTC on 1 July is 09:30 in Kyiv (summer time) and 02:30 in New York.
PUBLISHED = datetime(2026, 7, 1, 6, 30, tzinfo=UTC)


def _story(db, newsletter):  # type: ignore[no-untyped-def]
    item = add_item(db, newsletter, "Story")
    item.published_at = PUBLISHED
    db.session.commit()
    return item


def test_digest_mails_give_item_times_in_the_newsletters_zone(app, db):
    kyiv = make_newsletter("daily", "Daily Briefing", timezone="Europe/Kyiv")
    _story(db, kyiv)
    add_reader(db, kyiv, "reader@example.com")
    states.start(db.session, states.compose(db.session, kyiv))
    transport = MemoryTransport()
    send_all(db, transport)
    [mail] = transport.messages
    assert "1 July 2026, 09:30" in text_part(mail)
    assert "1 July 2026, 09:30" in html_part(mail)
    assert "06:30" not in text_part(mail) and "UTC" not in text_part(mail)


def test_the_admin_shows_item_and_digest_times_in_the_newsletters_zone(client, db, editor):
    new_york = make_newsletter("us", "US Edition", timezone="America/New_York")
    _story(db, new_york)
    digest = states.compose(db.session, new_york)
    sign_in(client, "writer@news.example.org")
    page = html.unescape(client.get(f"/admin/digests/{digest.id}").get_data(as_text=True))
    assert "1 July 2026, 02:30" in page
    assert "Times are in the newsletter's time zone, America/New_York." in page
    listing = client.get("/admin/items").get_data(as_text=True)
    assert '1 Jul 2026, 02:30<br><span class="small">America/New_York</span>' in listing


def test_the_item_form_reads_and_shows_the_time_in_the_chosen_zone(client, db, editor):
    make_newsletter("daily", "Daily Briefing", timezone="Europe/Kyiv")
    make_newsletter("us", "US Edition", timezone="America/New_York")
    sign_in(client, "writer@news.example.org")
    form = client.get("/admin/items/new").get_data(as_text=True)
    zones = re.search(r'<select id="zone" name="zone"[^>]*>(.*?)</select>', form, re.S)
    assert zones is not None
    assert re.findall(r'<option[^>]*value="([^"]+)"', zones.group(1)) == [
        "America/New_York",
        "Europe/Kyiv",
    ]
    created = client.post(
        "/admin/items/new",
        data={
            "csrf_token": csrf_token(client, "/admin/items/new"),
            "title": "Kyiv marks Independence Day",
            "url": "https://news.example.org/independence",
            "published_at": "2026-07-01T09:30",
            "zone": "Europe/Kyiv",
            "newsletters": ["daily"],
        },
    )
    assert created.status_code == 302
    item = db.session.scalars(select(Item)).one()
    assert item.published_at == PUBLISHED
    edit = client.get(f"/admin/items/{item.id}/edit").get_data(as_text=True)
    assert 'value="2026-07-01T09:30"' in edit
    assert '<option selected value="Europe/Kyiv">' in edit


def test_the_time_zone_is_chosen_from_a_list(client, db, admin):
    sign_in(client)
    page = client.get("/admin/newsletters/new").get_data(as_text=True)
    select_box = re.search(r'<select id="timezone" name="timezone"[^>]*>(.*?)</select>', page, re.S)
    assert select_box is not None
    options = re.findall(r'value="([^"]+)"', select_box.group(1))
    assert "Europe/Kyiv" in options and "UTC" in options and len(options) > 300
    assert options == sorted(options)
    assert "<datalist" not in page

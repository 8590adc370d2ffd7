"""The archive: each sent edition's web version, a list's editions a page at a time, the Atom
feed, "View in browser" in every digest mail, and archives kept for readers."""

from __future__ import annotations

import re
from datetime import timedelta
from xml.etree import ElementTree as ET

import pytest
from sqlalchemy import select, update

from newsletter.digests import states
from newsletter.links import TEST_READER, reader_of
from newsletter.mail.transport import MemoryTransport
from newsletter.models import (
    Digest,
    DigestStatus,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    utcnow,
)

from factories import (
    BASE_URL,
    add_item,
    add_reader,
    app_links,
    csrf_token,
    html_part,
    make_admin,
    make_newsletter,
    send_all,
    sign_in,
    text_part,
)

ATOM = "{http://www.w3.org/2005/Atom}"
_VIEW_TEXT = re.compile(r"View in browser:\n(\S+)")
_VIEW_HTML = re.compile(r'<a href="([^"]+)"[^>]*>View in browser</a>')


def _sent(db, newsletter, subject="Morning news", readers=("reader@example.com",), **fields):
    """A digest of the list sent to these readers; returns it and the mails."""
    add_item(db, newsletter, f"Story of {subject}", **fields)
    for address in readers:
        subscriber = db.session.scalar(select(Subscriber).where(Subscriber.email_key == address))
        if subscriber is None:
            add_reader(db, newsletter, address)
        elif newsletter not in [s.newsletter for s in subscriber.subscriptions]:
            db.session.add(
                Subscription(
                    subscriber=subscriber,
                    newsletter=newsletter,
                    status=SubscriptionStatus.CONFIRMED,
                )
            )
            db.session.commit()
    digest = states.compose(db.session, newsletter, subject=subject)
    states.start(db.session, digest)
    transport = MemoryTransport()
    send_all(db, transport)
    db.session.refresh(digest)
    return digest, transport.messages


def _subscriptions(db, newsletter):
    return list(
        db.session.scalars(select(Subscription).where(Subscription.newsletter_id == newsletter.id))
    )


def _view_links(mail) -> tuple[str, str]:
    text = _VIEW_TEXT.search(text_part(mail))
    html = _VIEW_HTML.search(html_part(mail))
    assert text and html, "View in browser in both parts"
    return text[1], html[1].replace("&amp;", "&")


def _path(url: str) -> str:
    assert url.startswith(BASE_URL)
    return url[len(BASE_URL) :]


def test_a_sent_digest_mail_leads_to_its_web_version(db, client, daily):
    digest, mails = _sent(db, daily, readers=("one@example.com", "two@example.com"))
    assert digest.status == DigestStatus.SENT
    day = digest.started_at.date().isoformat()
    expected = f"{BASE_URL}/archive/daily/{digest.id}-{day}"
    # The same link for every reader of a public archive, in both parts.
    assert {_view_links(mail) for mail in mails} == {(expected, expected)}

    page = client.get(_path(expected))
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert "Morning news" in body and "Story of Morning news" in body
    assert "This is the web version of an edition of Daily Briefing." in body
    assert 'href="https://news.example.org/archive/daily"' in body
    # Its policy: inline styles as in the mail, no script at all.
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy


def test_the_web_version_has_no_personal_link(db, client, daily):
    digest, mails = _sent(db, daily, readers=("one@example.com", "two@example.com"))
    page = client.get(_path(_view_links(mails[0])[0])).get_data(as_text=True)
    # No reader's unsubscribe or preferences link, nor any token of theirs.
    assert "/unsubscribe/" not in page and "/preferences/" not in page
    assert "Unsubscribe" not in page and "Manage your newsletters" not in page
    assert "View in browser" not in page
    links = app_links()
    for mail in mails:
        personal = re.findall(
            r"https://news\.example\.org/(?:unsubscribe|preferences)/(\S+)", text_part(mail)
        )
        assert personal
        for token in personal:
            assert token not in page
    for subscription in _subscriptions(db, daily):
        reader = reader_of(subscription.subscriber)
        assert links.unsubscribe_token(reader, daily.id) not in page
        assert links.preferences_token(reader) not in page
        assert subscription.subscriber.token_key not in page
        assert subscription.subscriber.email not in page


def test_the_list_shows_sent_editions_newest_first_a_page_at_a_time(db, client, daily):
    add_reader(db, daily, "reader@example.com")
    for n in range(23):
        add_item(db, daily, f"Story {n}")
        digest = states.compose(db.session, daily, subject=f"Edition {n}")
        states.start(db.session, digest)
        db.session.execute(
            update(Digest)
            .where(Digest.id == digest.id)
            .values(status=DigestStatus.SENT, started_at=utcnow() - timedelta(days=30 - n))
        )
        db.session.commit()
    # Not listed: a draft, a cancelled digest.
    add_item(db, daily, "Draft story")
    states.compose(db.session, daily, subject="Still a draft")

    first = client.get("/archive/daily")
    assert first.status_code == 200
    body = first.get_data(as_text=True)
    subjects = re.findall(r"Edition (\d+)</a>", body)
    assert subjects == [str(n) for n in range(22, 2, -1)]
    assert "Still a draft" not in body
    assert 'href="/archive/daily?page=2"' in body and "Older editions" in body
    assert 'rel="alternate" type="application/atom+xml"' in body

    second = client.get("/archive/daily?page=2").get_data(as_text=True)
    assert re.findall(r"Edition (\d+)</a>", second) == ["2", "1", "0"]
    assert 'href="/archive/daily?page=1"' in second and "Older editions" not in second


@pytest.mark.parametrize(
    "page",
    ["3", "0", "-1", "two", "1e3", "99999999999"],
    ids=["past", "zero", "neg", "word", "exp", "huge"],
)
def test_a_page_that_is_not_there_is_not_found(db, client, daily, page):
    _sent(db, daily)
    response = client.get(f"/archive/daily?page={page}")
    assert response.status_code == 404
    assert "This archive has no such page." in response.get_data(as_text=True)


def test_an_empty_archive_says_so(db, client, daily):
    response = client.get("/archive/daily")
    assert response.status_code == 200
    assert "No edition has been sent yet." in response.get_data(as_text=True)


def test_the_atom_feed_lists_the_editions(db, client, daily):
    first, _ = _sent(db, daily, subject="First edition")
    second, _ = _sent(db, daily, subject="Second <edition> & more")
    response = client.get("/archive/daily/feed.atom")
    assert response.status_code == 200
    assert response.mimetype == "application/atom+xml"
    feed = ET.fromstring(response.data)
    assert feed.tag == f"{ATOM}feed"
    assert feed.findtext(f"{ATOM}id") == f"{BASE_URL}/archive/daily"
    assert feed.findtext(f"{ATOM}title") == "Daily Briefing"
    assert feed.findtext(f"{ATOM}updated")
    assert feed.find(f"{ATOM}author/{ATOM}name").text
    entries = feed.findall(f"{ATOM}entry")
    assert [e.findtext(f"{ATOM}title") for e in entries] == [
        "Second <edition> & more",
        "First edition",
    ]
    for entry, digest in zip(entries, (second, first), strict=True):
        url = f"{BASE_URL}/archive/daily/{digest.id}-{digest.started_at.date().isoformat()}"
        assert entry.findtext(f"{ATOM}id") == url
        assert entry.find(f"{ATOM}link").get("href") == url
        assert entry.findtext(f"{ATOM}updated")
        assert client.get(_path(url)).status_code == 200
    # The raw document escapes what the editor wrote.
    assert b"Second &lt;edition&gt; &amp; more" in response.data


@pytest.mark.parametrize(
    "path",
    [
        "/archive/nope",
        "/archive/nope/feed.atom",
        "/archive/nope/1-2026-01-01",
        "/archive/daily/999999-2026-01-01",
        "/archive/daily/not-an-edition",
        "/archive/daily/99999999999999",
    ],
    ids=["list", "feed", "edition-of-unknown-list", "unknown-id", "junk", "huge-id"],
)
def test_unknown_lists_and_editions_are_not_found(db, client, daily, path):
    _sent(db, daily)
    response = client.get(path)
    assert response.status_code == 404
    assert response.mimetype == "text/html"


def test_an_edition_of_another_list_a_draft_an_alert_or_a_cancelled_one_has_no_page(
    db, client, daily
):
    other = make_newsletter("culture")
    elsewhere, _ = _sent(db, other, subject="Culture news")
    add_item(db, daily, "Draft")
    draft = states.compose(db.session, daily)
    assert client.get(f"/archive/daily/{elsewhere.id}").status_code == 404
    assert client.get(f"/archive/daily/{draft.id}").status_code == 404
    alert, mails = _sent(db, daily, subject="Breaking")
    db.session.execute(update(Digest).where(Digest.id == alert.id).values(frequency="alert"))
    cancelled, _ = _sent(db, daily, subject="Withdrawn")
    db.session.execute(
        update(Digest).where(Digest.id == cancelled.id).values(status=DigestStatus.CANCELLED)
    )
    db.session.commit()
    for digest in (alert, cancelled):
        assert client.get(f"/archive/daily/{digest.id}").status_code == 404
    listing = client.get("/archive/daily").get_data(as_text=True)
    assert "Breaking" not in listing and "Withdrawn" not in listing


def test_an_alert_mail_has_no_view_in_browser(db, daily):
    add_item(db, daily, "Breaking story")
    reader = add_reader(db, daily, "reader@example.com")
    reader.subscriptions[0].frequency = "alert"
    digest = states.compose(db.session, daily, subject="Breaking")
    digest.frequency = "alert"
    db.session.commit()
    states.start(db.session, digest)
    transport = MemoryTransport()
    send_all(db, transport)
    (mail,) = transport.messages
    assert "View in browser" not in text_part(mail) and "View in browser" not in html_part(mail)


def test_a_shortened_or_misdated_address_leads_to_the_edition(db, client, daily):
    digest, mails = _sent(db, daily)
    url = _view_links(mails[0])[0]
    for wrong in (f"/archive/daily/{digest.id}", f"/archive/daily/{digest.id}-1999-01-01"):
        response = client.get(wrong)
        assert response.status_code == 301
        assert response.headers["Location"] == url


def test_what_an_edition_says_is_escaped_on_the_web(db, client, daily):
    digest, mails = _sent(
        db,
        daily,
        subject="<script>alert(1)</script>",
        summary='"><img src=x onerror=alert(1)>',
        url='https://news.example.org/a"><script>alert(2)</script>',
    )
    for path in (_path(_view_links(mails[0])[0]), "/archive/daily"):
        body = client.get(path).get_data(as_text=True)
        assert "<script>" not in body and "<img src=x" not in body
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_a_private_archive_opens_with_the_readers_link_only(db, client, daily):
    daily.archive_public = False
    db.session.commit()
    digest, mails = _sent(db, daily, readers=("one@example.com", "two@example.com"))
    views = [_view_links(mail) for mail in mails]
    # A link of each reader's own, the same in both parts.
    assert all(text == html for text, html in views)
    assert len({text for text, _ in views}) == 2
    url = views[0][0]
    public = f"/archive/daily/{digest.id}-{digest.started_at.date().isoformat()}"
    assert _path(url).startswith(public + "?key=")

    for path in (public, "/archive/daily", "/archive/daily/feed.atom"):
        refused = client.get(path)
        assert refused.status_code == 403
        assert "open to its readers only" in refused.get_data(as_text=True)
    broken = client.get(public + "?key=forged.token")
    assert broken.status_code == 403
    assert "This link is broken." in broken.get_data(as_text=True)

    opened = client.get(_path(url))
    assert opened.status_code == 200
    body = opened.get_data(as_text=True)
    assert "Story of Morning news" in body
    # The reader's key only: none of their other links.
    assert "/unsubscribe/" not in body and "/preferences/" not in body
    assert opened.headers["Cache-Control"] == "no-store"
    assert opened.headers["Referrer-Policy"] == "no-referrer"
    key = _path(url).split("?key=", 1)[1]
    # The list's page and the feed open with the same key, and keep it in their links.
    listing = client.get(f"/archive/daily?key={key}")
    assert listing.status_code == 200
    assert f"key={key}" in listing.get_data(as_text=True)
    feed = ET.fromstring(client.get(f"/archive/daily/feed.atom?key={key}").data)
    (entry,) = feed.findall(f"{ATOM}entry")
    assert entry.find(f"{ATOM}link").get("href") == url
    # Not another list's archive.
    other = make_newsletter("culture", archive_public=False)
    assert client.get(f"/archive/{other.slug}?key={key}").status_code == 403


def test_a_reader_who_left_no_longer_opens_a_private_archive(db, client, daily):
    daily.archive_public = False
    db.session.commit()
    _, mails = _sent(db, daily)
    url = _view_links(mails[0])[0]
    (subscription,) = _subscriptions(db, daily)
    subscription.status = SubscriptionStatus.UNSUBSCRIBED
    db.session.commit()
    response = client.get(_path(url))
    assert response.status_code == 403
    assert "This link is no longer valid." in response.get_data(as_text=True)


def test_a_test_copys_link_opens_no_private_archive(db, client, daily):
    daily.archive_public = False
    db.session.commit()
    url = app_links().archive_url("/archive/daily", TEST_READER, daily.id)
    response = client.get(_path(url))
    assert response.status_code == 403
    assert "This was a test copy" in response.get_data(as_text=True)


def test_a_test_copy_and_the_preview_show_view_in_browser(db, client, daily, mailbox):
    make_admin()
    sign_in(client)
    add_item(db, daily, "Story")
    digest = states.compose(db.session, daily, subject="Draft")
    html = client.get(f"/admin/digests/{digest.id}/preview.html").get_data(as_text=True)
    # Not sent yet: the link goes to the list's archive, where the edition will be.
    assert f'href="{BASE_URL}/archive/daily"' in html and "View in browser" in html


def test_the_home_page_links_to_public_archives(db, client, daily):
    make_newsletter("culture", "Culture", archive_public=False)
    body = client.get("/").get_data(as_text=True)
    assert 'href="/archive/daily"' in body
    assert "Daily Briefing: the archive" in body
    assert "/archive/culture" not in body


def test_the_editor_keeps_an_archive_for_readers(db, client, daily):
    make_admin()
    sign_in(client)
    form = client.get(f"/admin/newsletters/{daily.id}/edit").get_data(as_text=True)
    (checkbox,) = re.findall(r'<input[^>]*name="archive_public"[^>]*>', form)
    assert "checked" in checkbox
    data = {
        "csrf_token": csrf_token(client, f"/admin/newsletters/{daily.id}/edit"),
        "name": daily.name,
        "slug": daily.slug,
        "cadence": daily.cadence,
        "prompt_text": daily.prompt_text,
        "button_text": daily.button_text,
        "thanks_text": daily.thanks_text,
        "send_time": "08:00",
        "timezone": "UTC",
        "send_weekday": "0",
        "auto_digest": "off",
    }
    response = client.post(f"/admin/newsletters/{daily.id}/edit", data=data)
    assert response.status_code == 302, response.get_data(as_text=True)
    db.session.refresh(daily)
    assert daily.archive_public is False
    assert client.get("/archive/daily").status_code == 403


def test_the_archive_speaks_the_readers_language(db, client, daily):
    digest, mails = _sent(db, daily)
    uk = {"Accept-Language": "uk"}
    listing = client.get("/archive/daily", headers=uk).get_data(as_text=True)
    assert "«Daily Briefing»: архів" in listing
    page = client.get(_path(_view_links(mails[0])[0]), headers=uk).get_data(as_text=True)
    assert 'lang="uk"' in page and "Усі випуски" in page
    # A reader's key opens a private archive in the language stored for them.
    daily.archive_public = False
    (subscription,) = _subscriptions(db, daily)
    subscription.subscriber.locale = "uk"
    db.session.commit()
    url = app_links().archive_url("/archive/daily", reader_of(subscription.subscriber), daily.id)
    assert "«Daily Briefing»: архів" in client.get(_path(url)).get_data(as_text=True)


def test_an_empty_archive_has_a_valid_feed(db, client, daily):
    feed = ET.fromstring(client.get("/archive/daily/feed.atom").data)
    assert feed.findtext(f"{ATOM}id") == f"{BASE_URL}/archive/daily"
    assert feed.findtext(f"{ATOM}updated")
    assert feed.findall(f"{ATOM}entry") == []


def test_a_retired_list_keeps_its_archive_off_the_home_page(db, client, daily):
    _, mails = _sent(db, daily)
    daily.archived = True
    db.session.commit()
    assert client.get(_path(_view_links(mails[0])[0])).status_code == 200
    assert client.get("/archive/daily").status_code == 200
    assert "/archive/daily" not in client.get("/").get_data(as_text=True)

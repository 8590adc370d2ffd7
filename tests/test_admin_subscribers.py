"""The admin's subscriber pages: search, filter, pages, one person's record, actions, export."""

from __future__ import annotations

import csv
import io
import json

import pytest
from sqlalchemy import func, select

from newsletter.addresses import address_hash
from newsletter.models import (
    AuditEvent,
    ConsentEvent,
    OutboxMessage,
    Subscriber,
    Subscription,
    Suppression,
)

from factories import apply_signups, csrf_token, links, make_admin, sign_in, signup, statuses


@pytest.fixture
def admin_client(client, newsletters):  # type: ignore[no-untyped-def]
    make_admin()
    sign_in(client)
    return client


def person_id(db, email: str) -> int:  # type: ignore[no-untyped-def]
    return db.session.scalar(select(Subscriber.id).where(Subscriber.email_key == email))


def test_subscribers_pages_are_for_admins_only(client, newsletters):
    assert client.get("/admin/subscribers").status_code == 302
    make_admin("writer@news.example.org", "editor")
    sign_in(client, "writer@news.example.org")
    assert client.get("/admin/subscribers").status_code == 403
    assert client.get("/admin/subscribers/export.csv").status_code == 403


def test_search_filter_and_pages(admin_client, db, app):
    for n in range(7):
        signup(admin_client, f"reader{n}@example.com", "daily")
    signup(admin_client, "other@elsewhere.org", "culture")
    page = admin_client.get("/admin/subscribers?q=EXAMPLE.com").get_data(as_text=True)
    assert page.count("reader") == 7 and "other@elsewhere.org" not in page
    page = admin_client.get("/admin/subscribers?newsletter=culture").get_data(as_text=True)
    assert "other@elsewhere.org" in page and "reader0" not in page
    page = admin_client.get("/admin/subscribers?status=confirmed").get_data(as_text=True)
    assert "No subscriber matches." in page
    # A literal % or _ in the search is not a wildcard.
    assert "No subscriber matches." in admin_client.get("/admin/subscribers?q=%25").get_data(
        as_text=True
    )

    from newsletter import subscribers as people

    people.PAGE_SIZE, saved = 3, people.PAGE_SIZE
    try:
        first = admin_client.get("/admin/subscribers?q=reader").get_data(as_text=True)
        assert [f"reader{n}@" in first for n in (6, 5, 4, 3)] == [True, True, True, False]
        older = first.split('href="/admin/subscribers?before=')[1].split('"')[0]
        second = admin_client.get("/admin/subscribers?before=" + older.replace("&amp;", "&"))
        text = second.get_data(as_text=True)
        assert "reader3@" in text and "reader6@" not in text
    finally:
        people.PAGE_SIZE = saved


def test_subscriber_page_shows_subscriptions_trail_and_mails(admin_client, db, mailbox):
    signup(admin_client, "reader@example.com", "daily", "culture")
    mailbox.deliver()
    page = admin_client.get(f"/admin/subscribers/{person_id(db, 'reader@example.com')}")
    text = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Daily Briefing" in text and "Culture" in text
    assert "confirmation_sent" in text and "Enter your email to subscribe" in text
    assert "confirmation" in text and "sent" in text


def test_admin_unsubscribes_one_list(admin_client, db):
    signup(admin_client, "reader@example.com", "daily", "culture")
    pid = person_id(db, "reader@example.com")
    daily = db.session.scalars(
        select(Subscription).where(Subscription.subscriber_id == pid)
    ).first()
    token = csrf_token(admin_client, f"/admin/subscribers/{pid}")
    response = admin_client.post(
        f"/admin/subscribers/{pid}/unsubscribe/{daily.id}", data={"csrf_token": token}
    )
    assert response.status_code == 302
    assert statuses(db) == {"daily": "unsubscribed", "culture": "pending"}
    event = db.session.scalars(
        select(ConsentEvent).where(ConsentEvent.action == "unsubscribed")
    ).one()
    assert event.source == "admin:editor@news.example.org"


def test_resend_respects_the_per_address_limit(admin_client, db, mailbox, app):
    signup(admin_client, "reader@example.com", "daily")
    pid = person_id(db, "reader@example.com")
    token = csrf_token(admin_client, f"/admin/subscribers/{pid}")
    first = admin_client.post(f"/admin/subscribers/{pid}/resend", data={"csrf_token": token})
    assert "Confirmation mail queued for Daily Briefing." in admin_client.get(
        first.headers["Location"]
    ).get_data(as_text=True)
    admin_client.post(f"/admin/subscribers/{pid}/resend", data={"csrf_token": token})
    third = admin_client.post(f"/admin/subscribers/{pid}/resend", data={"csrf_token": token})
    page = admin_client.get(third.headers["Location"]).get_data(as_text=True)
    assert "several confirmation emails" in page
    assert len(mailbox.deliver()) == 3
    assert all(links(m, "/confirm/") for m in mailbox.messages)


def test_person_data_export_is_json_and_recorded(admin_client, db):
    signup(admin_client, "reader@example.com", "daily")
    pid = person_id(db, "reader@example.com")
    response = admin_client.get(f"/admin/subscribers/{pid}/data.json")
    assert response.status_code == 200
    assert "attachment" in response.headers["Content-Disposition"]
    data = json.loads(response.data)
    assert data["email"] == "reader@example.com"
    assert data["subscriptions"][0]["newsletter"] == "Daily Briefing"
    assert [e["action"] for e in data["consent_trail"]] == ["signup", "confirmation_sent"]
    assert data["mails"][0]["kind"] == "confirmation"
    audit = db.session.scalars(select(AuditEvent)).all()
    assert [(a.action, a.detail) for a in audit] == [("export_person", {"subscriber_id": pid})]


def test_erase_deletes_everything_but_a_hash_and_needs_confirmation(admin_client, db, mailbox):
    signup(admin_client, "Reader@Example.com", "daily", "culture")
    pid = person_id(db, "reader@example.com")
    token = csrf_token(admin_client, f"/admin/subscribers/{pid}")
    unconfirmed = admin_client.post(f"/admin/subscribers/{pid}/erase", data={"csrf_token": token})
    assert unconfirmed.status_code == 302
    assert db.session.get(Subscriber, pid) is not None

    admin_client.post(
        f"/admin/subscribers/{pid}/erase", data={"csrf_token": token, "confirm": "erase"}
    )
    db.session.expire_all()
    for model in (Subscriber, Subscription, ConsentEvent, OutboxMessage):
        assert db.session.scalar(select(func.count()).select_from(model)) == 0, model
    suppression = db.session.scalars(select(Suppression)).one()
    assert suppression.email_hash == address_hash("reader@example.com")
    assert suppression.reason == "erased"
    audit = db.session.scalars(select(AuditEvent)).one()
    assert (audit.action, audit.detail) == ("erase", {"subscriber_id": pid})
    assert mailbox.deliver() == []


def test_export_streams_the_filtered_list_neutralised_and_recorded(admin_client, db):
    signup(admin_client, "reader@example.com", "daily")
    admin_client.post(
        "/subscribe",
        data={"email": "=cmd@example.com", "newsletter": "culture", "source": "@SUM(A1)"},
    )
    apply_signups()
    response = admin_client.get("/admin/subscribers/export.csv?newsletter=culture")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [(r["email"], r["newsletter"], r["source"]) for r in rows] == [
        ("'=cmd@example.com", "culture", "'@SUM(A1)")
    ]
    audit = db.session.scalars(select(AuditEvent)).one()
    assert audit.action == "export" and audit.detail == {"filter": {"newsletter": "culture"}}
    assert audit.admin_user_id is not None


def test_unknown_subscriber_is_a_404(admin_client):
    assert admin_client.get("/admin/subscribers/999").status_code == 404
    token = csrf_token(admin_client, "/admin/")
    assert (
        admin_client.post(
            "/admin/subscribers/999/erase", data={"csrf_token": token, "confirm": "erase"}
        ).status_code
        == 404
    )


def test_a_persons_page_lists_their_digest_mails_with_why_one_failed(admin_client, db):
    from newsletter.digests import states
    from newsletter.mail.transport import MemoryTransport
    from newsletter.models import Newsletter

    from factories import add_item, add_reader, send_all

    daily = db.session.scalar(select(Newsletter).where(Newsletter.slug == "daily"))
    add_item(db, daily, "Story")
    reader = add_reader(db, daily, "reader@example.com")
    states.start(db.session, states.compose(db.session, daily, subject="Morning news"))
    # A reply-to saved before addresses were checked: no mail of the digest can be built.
    daily.reply_to = "réponse@example.org"
    db.session.commit()
    send_all(db, MemoryTransport())

    page = admin_client.get(f"/admin/subscribers/{reader.id}").get_data(as_text=True)
    assert "digest: Morning news" in page and "Daily Briefing" in page
    assert "failed" in page and "cannot build:" in page


@pytest.mark.parametrize("few", [5000, 0], ids=["by-ids", "by-walking"])
def test_the_list_shows_one_row_per_person_with_their_lists_and_a_total(
    admin_client, db, monkeypatch, few
):
    from newsletter import subscribers as people

    monkeypatch.setattr(people, "_FEW", few)
    signup(admin_client, "both@example.com", "daily", "culture")
    signup(admin_client, "one@example.com", "culture")
    db.session.execute(
        Subscription.__table__.update()
        .where(Subscription.subscriber_id == person_id(db, "both@example.com"))
        .where(Subscription.newsletter_id == 1)
        .values(status="confirmed")
    )
    db.session.commit()

    page = admin_client.get("/admin/subscribers").get_data(as_text=True)
    assert "2 people" in page
    assert page.count("both@example.com") == 1 and page.count("one@example.com") == 1
    row = page.split("both@example.com")[1].split("</tr>")[0]
    assert "Culture: <span" in row and "Daily Briefing: <span" in row
    assert ">confirmed<" in row and ">pending<" in row

    confirmed = admin_client.get("/admin/subscribers?status=confirmed").get_data(as_text=True)
    assert "1 person" in confirmed and "both@example.com" in confirmed
    assert "one@example.com" not in confirmed
    culture = admin_client.get("/admin/subscribers?newsletter=culture&q=one").get_data(as_text=True)
    assert "1 person" in culture and "both@example.com" not in culture


def test_a_persons_mails_name_their_newsletters_and_the_trail_names_the_browser(
    admin_client, db, mailbox
):
    firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
    admin_client.post(
        "/subscribe",
        data={"email": "reader@example.com", "newsletter": ["daily", "culture"]},
        headers={"User-Agent": firefox},
    )
    mailbox.deliver()
    text = admin_client.get(f"/admin/subscribers/{person_id(db, 'reader@example.com')}").get_data(
        as_text=True
    )
    mails = text.split("<h2>Mails</h2>")[1]
    assert "<td>confirmation</td><td>Culture, Daily Briefing</td>" in mails or (
        "<td>confirmation</td><td>Daily Briefing, Culture</td>" in mails
    )
    assert f'title="{firefox}">Firefox 133, Linux</td>' in text

"""The admin's digest pages: compose, edit, preview, test, send, schedule, watch, stop."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from newsletter.digests import states
from newsletter.mail.transport import MemoryTransport
from newsletter.models import (
    Delivery,
    Digest,
    DigestStatus,
    MailKind,
    OutboxMessage,
    Subscription,
    SubscriptionStatus,
    utcnow,
)

from factories import (
    add_item,
    add_reader,
    csrf_token,
    make_newsletter,
    send_all,
    sign_in,
    text_part,
)

EDITOR = "writer@news.example.org"


@pytest.fixture
def daily(app):  # type: ignore[no-untyped-def]
    return make_newsletter("daily", "Daily Briefing", timezone="Europe/Kyiv")


@pytest.fixture
def signed_in(client, editor):  # type: ignore[no-untyped-def]
    """The client, signed in as an editor (not an admin): digests are an editor's work."""
    sign_in(client, EDITOR)
    return client


def post(client, path, data=None):  # type: ignore[no-untyped-def]
    """Post a form as the browser does, with the page's CSRF token."""
    return client.post(path, data={"csrf_token": csrf_token(client, "/admin/"), **(data or {})})


def confirmation_form(response):  # type: ignore[no-untyped-def]
    """The hidden fields of a confirmation page's form, as a browser would post them."""
    page = response.get_data(as_text=True)
    return dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">', page))


def send_now(client, digest_id):  # type: ignore[no-untyped-def]
    """Press "Send now", then confirm on the confirmation page."""
    asked = client.get(f"/admin/digests/{digest_id}/send")
    assert asked.status_code == 200
    return client.post(f"/admin/digests/{digest_id}/start", data=confirmation_form(asked))


def edit_form(digest, **fields):  # type: ignore[no-untyped-def]
    """The edit form as it stands for this digest, with these fields changed."""
    data = {"subject": digest.subject, "intro": digest.intro}
    for n, item in enumerate(digest.items, start=1):
        data[f"position-{item.id}"] = str(n)
    return {**data, **fields}


def draft(db, newsletter, *titles):  # type: ignore[no-untyped-def]
    """A draft of items with these titles, the first one newest."""
    for hours, title in enumerate(titles, start=1):
        add_item(db, newsletter, title, hours_ago=hours)
    return states.compose(db.session, newsletter)


def reread(db, digest):  # type: ignore[no-untyped-def]
    db.session.expire_all()
    return db.session.get(Digest, digest.id)


def page_text(response) -> str:  # type: ignore[no-untyped-def]
    return html.unescape(response.get_data(as_text=True))


@pytest.mark.parametrize(
    "path",
    [
        "/admin/digests",
        "/admin/digests/1",
        "/admin/digests/1/preview",
        "/admin/digests/1/progress",
    ],
)
def test_strangers_are_sent_to_sign_in(client, db, daily, path):
    draft(db, daily, "Story")
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login?next=")


def test_strangers_cannot_start_a_digest(client, db, daily):
    digest = draft(db, daily, "Story")
    add_reader(db, daily, "reader@example.com")
    response = client.post(f"/admin/digests/{digest.id}/start")
    assert response.status_code in (302, 400)
    assert reread(db, digest).status == DigestStatus.DRAFT


def test_editor_sees_the_list_with_a_new_digest_button_per_newsletter(signed_in, db, daily):
    make_newsletter("culture", "Culture")
    make_newsletter("old", "Old List", archived=True)
    digest = draft(db, daily, "Story")
    response = signed_in.get("/admin/digests")
    assert response.status_code == 200
    text = page_text(response)
    assert '<a href="/admin/digests">Digests</a>' in text
    assert "New digest of Daily Briefing" in text and "New digest of Culture" in text
    assert "New digest of Old List" not in text
    assert f'href="/admin/digests/{digest.id}">Daily Briefing: Story</a>' in text

    only_culture = page_text(signed_in.get("/admin/digests?newsletter=culture"))
    assert "Daily Briefing: Story" not in only_culture
    assert "New digest of Daily Briefing" not in only_culture


def test_newsletter_page_links_to_its_digests(signed_in, daily):
    page = page_text(signed_in.get(f"/admin/newsletters/{daily.id}"))
    assert 'href="/admin/digests?newsletter=daily"' in page


def test_post_without_csrf_token_is_refused(signed_in, db, daily):
    response = signed_in.post("/admin/digests/new", data={"newsletter": daily.id})
    assert response.status_code == 400
    assert db.session.scalar(select(func.count(Digest.id))) == 0


def test_new_digest_preselects_new_items_newest_first(signed_in, db, daily):
    add_item(db, daily, "Older", hours_ago=5)
    add_item(db, daily, "Newest", hours_ago=1)
    add_item(db, daily, "Middle", hours_ago=3)
    response = post(signed_in, "/admin/digests/new", {"newsletter": daily.id})
    digest = db.session.scalar(select(Digest))
    assert response.status_code == 302
    assert response.headers["Location"] == f"/admin/digests/{digest.id}"
    assert [i.title for i in digest.items] == ["Newest", "Middle", "Older"]
    assert digest.status == DigestStatus.DRAFT

    page = page_text(signed_in.get(f"/admin/digests/{digest.id}"))
    assert page.index("Newest") < page.index("Middle") < page.index("Older")
    assert 'value="Daily Briefing: Newest"' in page


def test_new_digest_of_an_archived_newsletter_is_refused_with_a_message(signed_in, db):
    closed = make_newsletter("closed", "Closed", archived=True)
    response = post(signed_in, "/admin/digests/new", {"newsletter": closed.id})
    assert response.status_code == 302
    assert "Closed is archived" in page_text(signed_in.get(response.headers["Location"]))
    assert db.session.scalar(select(func.count(Digest.id))) == 0


def test_edit_reorders_removes_and_adds_items(signed_in, db, daily):
    digest = draft(db, daily, "A", "B", "C")
    a, b, c = digest.items
    extra = add_item(db, daily, "Extra", hours_ago=10)
    page = page_text(signed_in.get(f"/admin/digests/{digest.id}"))
    assert f'name="add" value="{extra.id}"' in page
    assert f'name="position-{a.id}" value="1"' in page

    response = post(
        signed_in,
        f"/admin/digests/{digest.id}",
        {
            "subject": "  Our   week ",
            "intro": "Good morning.\r\nHere is the week.",
            # C moves up to 1, before A which keeps its number; B goes.
            f"position-{a.id}": "1",
            f"position-{b.id}": "2",
            f"position-{c.id}": "1",
            f"remove-{b.id}": "1",
            "add": str(extra.id),
        },
    )
    assert response.status_code == 302
    assert response.headers["Location"] == f"/admin/digests/{digest.id}"
    saved = reread(db, digest)
    assert saved.subject == "Our week"
    assert saved.intro == "Good morning.\nHere is the week."
    assert [i.title for i in saved.items] == ["C", "A", "Extra"]
    assert "Saved." in page_text(signed_in.get(response.headers["Location"]))


def test_moving_an_item_down_puts_it_after_the_one_it_displaced(signed_in, db, daily):
    digest = draft(db, daily, "A", "B", "C")
    a, b, c = digest.items
    post(
        signed_in,
        f"/admin/digests/{digest.id}",
        {
            "subject": "Week",
            f"position-{a.id}": "2",
            f"position-{b.id}": "2",
            f"position-{c.id}": "not a number",
        },
    )
    assert [i.title for i in reread(db, digest).items] == ["B", "A", "C"]


@pytest.mark.parametrize(
    ("subject", "intro", "message"),
    [
        ("", "", "A digest needs a subject."),
        ("   ", "", "A digest needs a subject."),
        ("x" * 301, "", "Field cannot be longer than 300 characters."),
        ("Fine", "y" * 10_001, "Field cannot be longer than 10000 characters."),
    ],
    ids=["empty", "blank", "long-subject", "long-intro"],
)
def test_invalid_edit_shows_the_message_and_keeps_the_digest(
    signed_in, db, daily, subject, intro, message
):
    digest = draft(db, daily, "Story")
    first = digest.items[0]
    response = post(
        signed_in,
        f"/admin/digests/{digest.id}",
        {"subject": subject, "intro": intro, f"remove-{first.id}": "1"},
    )
    assert response.status_code == 422
    assert message in page_text(response)
    saved = reread(db, digest)
    assert saved.subject == "Daily Briefing: Story" and len(saved.items) == 1


def test_a_digest_on_its_way_cannot_be_edited(signed_in, db, daily):
    digest = draft(db, daily, "Story")
    states.start(db.session, digest)
    response = post(signed_in, f"/admin/digests/{digest.id}", {"subject": "Changed"})
    assert response.status_code == 302
    assert "can no longer be changed" in page_text(signed_in.get(response.headers["Location"]))
    assert reread(db, digest).subject == "Daily Briefing: Story"


def test_preview_shows_the_html_in_a_sandboxed_frame_and_the_text(signed_in, db, daily):
    add_item(
        db,
        daily,
        "<script>alert(1)</script> & more",
        summary='"><img src=x onerror=alert(2)>',
    )
    digest = states.compose(db.session, daily, intro="Hello, readers.")
    response = signed_in.get(f"/admin/digests/{digest.id}/preview")
    assert response.status_code == 200
    raw = response.get_data(as_text=True)
    frame = re.search(r"<iframe[^>]*>", raw)
    assert frame is not None
    tag = frame.group(0)
    assert 'sandbox=""' in tag
    assert "allow-scripts" not in tag and "allow-same-origin" not in tag
    assert "<script>" not in raw and "<img" not in raw
    # The mail's HTML comes from its own address, framed by the admin and nobody else, with no
    # script allowed whatever the mail says.
    src = re.search(r'src="([^"]*)"', tag)
    assert src is not None
    frame_response = signed_in.get(html.unescape(src.group(1)))
    assert frame_response.status_code == 200
    policy = frame_response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'self'" in policy and "script-src" not in policy
    assert "default-src 'none'" in policy and "sandbox" in policy
    mail_html = frame_response.get_data(as_text=True)
    assert "Hello, readers." in mail_html
    # The preview's links are a test's: they say so and change nothing.
    unsubscribe = re.search(r'href="https://news.example.org(/unsubscribe/[^"]+)"', mail_html)
    assert unsubscribe is not None
    followed = signed_in.get(unsubscribe.group(1))
    assert followed.status_code == 200
    assert "This was a test copy" in page_text(followed)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in mail_html
    text = re.search(r"<pre[^>]*>(.*?)</pre>", raw, re.S)
    assert text is not None
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp;amp; more" not in text.group(1)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in text.group(1)
    assert "https://news.example.org/unsubscribe/" in text.group(1)


def test_send_a_test_queues_one_mail_to_the_signed_in_editor(signed_in, db, daily):
    digest = draft(db, daily, "Story")
    add_reader(db, daily, "reader@example.com")
    response = post(signed_in, f"/admin/digests/{digest.id}/test")
    assert response.status_code == 302
    assert response.headers["Location"] == f"/admin/digests/{digest.id}/preview"
    rows = db.session.scalars(select(OutboxMessage)).all()
    assert [(r.kind, r.to_address) for r in rows] == [(MailKind.DIGEST_TEST, EDITOR)]
    assert f"A test copy is queued for {EDITOR}" in page_text(
        signed_in.get(response.headers["Location"])
    )
    assert reread(db, digest).status == DigestStatus.DRAFT
    assert db.session.scalar(select(func.count(Delivery.id))) == 0


def test_new_digest_without_new_items_is_refused_as_on_the_command_line(signed_in, db, daily):
    response = post(signed_in, "/admin/digests/new", {"newsletter": str(daily.id)})
    assert response.status_code == 302
    page = page_text(signed_in.get(response.headers["Location"]))
    assert "Daily Briefing has no new items since its last digest." in page
    assert db.session.scalar(select(func.count(Digest.id))) == 0


def test_send_a_test_of_an_empty_digest_says_why_not(signed_in, db, daily):
    # Every item removed by the editor.
    digest = states.compose(db.session, daily, items=[])
    response = post(signed_in, f"/admin/digests/{digest.id}/test")
    assert response.status_code == 302
    assert "has no items" in page_text(signed_in.get(response.headers["Location"]))
    assert db.session.scalar(select(func.count(OutboxMessage.id))) == 0


def test_send_now_asks_first_then_fills_the_ledger(signed_in, db, daily):
    digest = draft(db, daily, "Story")
    add_reader(db, daily, "one@example.com")
    add_reader(db, daily, "two@example.com")
    add_reader(db, daily, "pending@example.com", SubscriptionStatus.PENDING)
    page = page_text(signed_in.get(f"/admin/digests/{digest.id}"))
    assert "Send now to 2 confirmed readers" in page

    # The button saves the form, then asks.
    pressed = post(signed_in, f"/admin/digests/{digest.id}", edit_form(digest, then="send"))
    assert pressed.status_code == 302
    assert pressed.headers["Location"] == f"/admin/digests/{digest.id}/send"
    asked = signed_in.get(pressed.headers["Location"])
    assert asked.status_code == 200
    question = page_text(asked)
    assert "Send this digest now?" in question
    assert "<dt>Newsletter</dt><dd>Daily Briefing</dd>" in question
    assert "<dt>Subject</dt><dd>Daily Briefing: Story</dd>" in question
    assert '<strong data-figure="readers">2</strong>' in question
    assert "(Europe/Kyiv time)" in question
    assert "Yes, send it now to 2 readers" in question
    assert reread(db, digest).status == DigestStatus.DRAFT
    assert db.session.scalar(select(func.count(Delivery.id))) == 0

    response = signed_in.post(f"/admin/digests/{digest.id}/start", data=confirmation_form(asked))
    assert response.status_code == 302
    assert response.headers["Location"] == f"/admin/digests/{digest.id}"
    saved = reread(db, digest)
    assert saved.status == DigestStatus.SENDING and saved.recipients == 2
    assert db.session.scalar(select(func.count(Delivery.id))) == 2

    progress = page_text(signed_in.get(response.headers["Location"]))
    assert "Sending to 2 readers." in progress
    assert 'role="progressbar"' in progress and 'aria-valuenow="0"' in progress
    assert 'data-progress-url="/admin/digests/1/progress"' in progress
    assert ">Pause</button>" in progress

    # The same confirmation once more: already sent, refused, nothing twice.
    again = signed_in.post(f"/admin/digests/{digest.id}/start", data=confirmation_form(asked))
    assert again.status_code == 302
    assert "already been sent" in page_text(signed_in.get(again.headers["Location"]))
    assert db.session.scalar(select(func.count(Delivery.id))) == 2


def test_the_confirmation_counts_only_readers_who_may_be_mailed(signed_in, db, daily):
    from newsletter import suppression
    from newsletter.models import SuppressionReason

    digest = draft(db, daily, "Story")
    add_reader(db, daily, "one@example.com")
    add_reader(db, daily, "bounced@example.com")
    add_reader(db, daily, "left@example.com", SubscriptionStatus.UNSUBSCRIBED)
    suppression.suppress(db.session, "bounced@example.com", SuppressionReason.BOUNCED)
    db.session.commit()
    asked = signed_in.get(f"/admin/digests/{digest.id}/send")
    assert '<strong data-figure="readers">1</strong>' in page_text(asked)
    signed_in.post(f"/admin/digests/{digest.id}/start", data=confirmation_form(asked))
    assert reread(db, digest).recipients == 1


@pytest.mark.parametrize(
    "confirmation",
    [None, "", "forged.token.value"],
    ids=["missing", "empty", "forged"],
)
def test_a_send_without_a_valid_confirmation_sends_nothing(signed_in, db, daily, confirmation):
    digest = draft(db, daily, "Story")
    add_reader(db, daily, "one@example.com")
    data = {} if confirmation is None else {"confirmation": confirmation}
    response = post(signed_in, f"/admin/digests/{digest.id}/start", data)
    assert response.status_code == 302
    assert response.headers["Location"] == f"/admin/digests/{digest.id}/send"
    assert reread(db, digest).status == DigestStatus.DRAFT
    assert db.session.scalar(select(func.count(Delivery.id))) == 0
    page = page_text(signed_in.get(response.headers["Location"]))
    assert "Send this digest now?" in page
    assert "confirm" in page.lower()


def test_a_confirmation_for_another_digest_sends_nothing(signed_in, db, daily):
    first = draft(db, daily, "Story")
    second = states.compose(db.session, daily, items=first.items)
    add_reader(db, daily, "one@example.com")
    asked = signed_in.get(f"/admin/digests/{first.id}/send")
    response = signed_in.post(f"/admin/digests/{second.id}/start", data=confirmation_form(asked))
    assert response.headers["Location"] == f"/admin/digests/{second.id}/send"
    assert reread(db, second).status == DigestStatus.DRAFT
    assert "not valid" in page_text(signed_in.get(response.headers["Location"]))


def test_a_stale_confirmation_is_refused_with_a_message(signed_in, db, daily):
    digest = draft(db, daily, "Story", "Other")
    add_reader(db, daily, "one@example.com")
    asked = signed_in.get(f"/admin/digests/{digest.id}/send")
    # Another editor changes the subject meanwhile.
    post(signed_in, f"/admin/digests/{digest.id}", edit_form(digest, subject="Changed"))
    response = signed_in.post(f"/admin/digests/{digest.id}/start", data=confirmation_form(asked))
    assert response.status_code == 302
    assert response.headers["Location"] == f"/admin/digests/{digest.id}"
    assert "changed after you were asked to confirm" in page_text(
        signed_in.get(response.headers["Location"])
    )
    saved = reread(db, digest)
    assert saved.status == DigestStatus.DRAFT and saved.subject == "Changed"
    assert db.session.scalar(select(func.count(Delivery.id))) == 0


def test_an_item_changed_since_the_confirmation_makes_it_stale(signed_in, db, daily):
    digest = draft(db, daily, "Story")
    asked = signed_in.get(f"/admin/digests/{digest.id}/send")
    item = digest.items[0]
    item.title = "Story, corrected"
    db.session.commit()
    signed_in.post(f"/admin/digests/{digest.id}/start", data=confirmation_form(asked))
    assert reread(db, digest).status == DigestStatus.DRAFT


def test_send_now_without_items_says_why_not(signed_in, db, daily):
    # Every item removed by the editor.
    digest = states.compose(db.session, daily, items=[])
    add_reader(db, daily, "one@example.com")
    response = post(signed_in, f"/admin/digests/{digest.id}", edit_form(digest, then="send"))
    asked = signed_in.get(response.headers["Location"])
    assert asked.status_code == 302
    assert "has no items" in page_text(signed_in.get(asked.headers["Location"]))
    assert reread(db, digest).status == DigestStatus.DRAFT


def test_save_and_preview_shows_what_is_in_the_form(signed_in, db, daily):
    digest = draft(db, daily, "Story")
    response = post(
        signed_in,
        f"/admin/digests/{digest.id}",
        edit_form(digest, subject="Fresh subject", intro="Typed just now.", then="preview"),
    )
    assert response.status_code == 302
    assert response.headers["Location"] == f"/admin/digests/{digest.id}/preview"
    page = page_text(signed_in.get(response.headers["Location"]))
    assert "Saved. The preview shows the digest as saved." in page
    assert "Fresh subject" in page and "Typed just now." in page


def test_save_and_send_a_test_sends_what_is_in_the_form(signed_in, db, daily, mailbox):
    digest = draft(db, daily, "Story")
    add_reader(db, daily, EDITOR)
    response = post(
        signed_in,
        f"/admin/digests/{digest.id}",
        edit_form(digest, subject="Fresh subject", then="test"),
    )
    assert response.status_code == 302
    assert response.headers["Location"] == f"/admin/digests/{digest.id}"
    assert f"Saved, and a test copy of the saved digest is queued for {EDITOR}" in page_text(
        signed_in.get(response.headers["Location"])
    )
    sent = mailbox.deliver()
    assert [m["Subject"] for m in sent] == ["[Test] Fresh subject"]
    assert reread(db, digest).status == DigestStatus.DRAFT
    # The test copy's unsubscribe link says it is a test, and the editor stays on the list.
    unsubscribe = re.search(r"https://news.example.org(/unsubscribe/\S+)", text_part(sent[0]))
    assert unsubscribe is not None
    for follow in (signed_in.get, signed_in.post):
        answer = follow(unsubscribe.group(1))
        assert answer.status_code == 200
        assert "This was a test copy" in page_text(answer)
    db.session.expire_all()
    assert [s.status for s in db.session.scalars(select(Subscription))] == ["confirmed"]


def test_schedule_in_the_past_is_refused(signed_in, db, daily):
    digest = draft(db, daily, "Story")
    response = post(
        signed_in,
        f"/admin/digests/{digest.id}",
        edit_form(digest, then="schedule", when="2020-01-01T08:00"),
    )
    assert response.status_code == 422
    assert "This time has passed" in page_text(response)
    assert 'value="Daily Briefing: Story"' in page_text(response)
    saved = reread(db, digest)
    assert saved.status == DigestStatus.DRAFT and saved.scheduled_at is None


@pytest.mark.parametrize("when", ["", "tomorrow", "2030-13-01T08:00"], ids=["empty", "word", "bad"])
def test_schedule_without_a_valid_time_is_refused(signed_in, db, daily, when):
    digest = draft(db, daily, "Story")
    response = post(
        signed_in, f"/admin/digests/{digest.id}", edit_form(digest, then="schedule", when=when)
    )
    assert response.status_code == 422
    assert reread(db, digest).status == DigestStatus.DRAFT


def test_schedule_without_items_shows_why(signed_in, db, daily):
    # Every item removed by the editor.
    digest = states.compose(db.session, daily, items=[])
    asked = signed_in.get(f"/admin/digests/{digest.id}/schedule?when=2030-07-01T09:30")
    assert asked.status_code == 302
    assert "This digest has no items" in page_text(signed_in.get(asked.headers["Location"]))


def test_schedule_asks_first_with_the_time_in_the_newsletters_zone(signed_in, db, daily):
    digest = draft(db, daily, "Story")
    add_reader(db, daily, "one@example.com")
    page = page_text(signed_in.get(f"/admin/digests/{digest.id}"))
    assert "(Europe/Kyiv time)" in page
    pressed = post(
        signed_in,
        f"/admin/digests/{digest.id}",
        edit_form(digest, then="schedule", when="2030-07-01T09:30"),
    )
    assert pressed.status_code == 302
    assert pressed.headers["Location"] == (
        f"/admin/digests/{digest.id}/schedule?when=2030-07-01T09:30"
    )
    asked = signed_in.get(pressed.headers["Location"])
    question = page_text(asked)
    assert "Schedule this digest?" in question
    assert "<strong>1 July 2030, 09:30</strong> (Europe/Kyiv time), 06:30 UTC" in question
    assert '<strong data-figure="readers">1</strong>' in question
    assert reread(db, digest).status == DigestStatus.DRAFT

    # Without the page's token: nothing scheduled, the question again.
    direct = post(signed_in, f"/admin/digests/{digest.id}/schedule", {"when": "2030-07-01T09:30"})
    assert direct.status_code == 302 and "/schedule?when=" in direct.headers["Location"]
    assert reread(db, digest).status == DigestStatus.DRAFT

    response = signed_in.post(f"/admin/digests/{digest.id}/schedule", data=confirmation_form(asked))
    assert response.status_code == 302
    saved = reread(db, digest)
    assert saved.status == DigestStatus.SCHEDULED
    # Kyiv is three hours ahead of UTC in summer.
    assert saved.scheduled_at == datetime(2030, 7, 1, 6, 30, tzinfo=UTC)
    page = page_text(signed_in.get(f"/admin/digests/{digest.id}"))
    assert "1 July 2030, 09:30" in page and "06:30 UTC" in page

    back = post(signed_in, f"/admin/digests/{digest.id}/unschedule")
    assert back.status_code == 302
    saved = reread(db, digest)
    assert saved.status == DigestStatus.DRAFT and saved.scheduled_at is None


def test_pause_resume_and_cancel(signed_in, db, daily):
    digest = draft(db, daily, "Story")
    add_reader(db, daily, "one@example.com")
    states.start(db.session, digest)
    url = f"/admin/digests/{digest.id}"

    resume_early = post(signed_in, f"{url}/resume")
    assert resume_early.status_code == 302
    assert "Only a paused digest can resume." in page_text(signed_in.get(url))

    post(signed_in, f"{url}/pause")
    assert reread(db, digest).status == DigestStatus.PAUSED
    page = page_text(signed_in.get(url))
    assert ">Resume</button>" in page and ">Pause</button>" not in page

    post(signed_in, f"{url}/resume")
    assert reread(db, digest).status == DigestStatus.SENDING

    asked = signed_in.get(f"{url}/cancel")
    assert asked.status_code == 200
    assert "Readers not mailed yet get nothing of it" in page_text(asked)
    assert reread(db, digest).status == DigestStatus.SENDING
    post(signed_in, f"{url}/cancel", {"confirm": "yes"})
    saved = reread(db, digest)
    assert saved.status == DigestStatus.CANCELLED and saved.skipped_count == 1
    page = page_text(signed_in.get(url))
    assert "Cancelled" in page and ">Resume</button>" not in page

    again = post(signed_in, f"{url}/cancel", {"confirm": "yes"})
    assert again.status_code == 302
    assert "already been sent or cancelled" in page_text(signed_in.get(url))


def test_a_draft_is_cancelled_only_once_confirmed(signed_in, db, daily):
    digest = draft(db, daily, "Story")
    page = page_text(signed_in.get(f"/admin/digests/{digest.id}"))
    assert f'href="/admin/digests/{digest.id}/cancel">Cancel this digest</a>' in page
    # A post without the answer only asks.
    asked = post(signed_in, f"/admin/digests/{digest.id}/cancel")
    assert asked.status_code == 200
    assert "Cancel this digest?" in page_text(asked) and "Yes, cancel it" in page_text(asked)
    assert reread(db, digest).status == DigestStatus.DRAFT
    post(signed_in, f"/admin/digests/{digest.id}/cancel", {"confirm": "yes"})
    assert reread(db, digest).status == DigestStatus.CANCELLED


def test_progress_json_follows_the_ledger(signed_in, db, daily):
    digest = draft(db, daily, "Story")
    for n in range(3):
        add_reader(db, daily, f"r{n}@example.com")
    send_now(signed_in, digest.id)

    before = signed_in.get(f"/admin/digests/{digest.id}/progress")
    assert before.status_code == 200 and before.headers["Cache-Control"] == "no-store"
    assert before.json["queued"] == 3 and before.json["sent"] == 0
    assert before.json["finished"] is False and before.json["status"] == "sending"

    send_all(db, MemoryTransport(), rounds=1, batch_size=2)
    halfway = signed_in.get(f"/admin/digests/{digest.id}/progress").json
    assert (halfway["sent"], halfway["queued"], halfway["finished"]) == (2, 1, False)

    send_all(db, MemoryTransport())
    after = signed_in.get(f"/admin/digests/{digest.id}/progress").json
    assert after["status"] == "sent" and after["finished"] is True
    assert (after["recipients"], after["sent"], after["queued"]) == (3, 3, 0)
    assert (after["failed"], after["skipped"]) == (0, 0)
    # Done: the page no longer counts down.
    assert "Time left" not in page_text(signed_in.get(f"/admin/digests/{digest.id}"))


def test_a_digest_being_sent_renders_its_figures_without_javascript(signed_in, db, daily):
    digest = draft(db, daily, "Story")
    for n in range(4):
        add_reader(db, daily, f"r{n}@example.com")
    states.start(db.session, digest)
    send_all(db, MemoryTransport(), rounds=1, batch_size=1)
    page = page_text(signed_in.get(f"/admin/digests/{digest.id}"))
    assert 'aria-valuenow="25"' in page
    assert '<dd data-figure="sent">1</dd>' in page
    assert '<span data-figure="queued">3</span>' in page
    assert "digest.js" in page


def test_a_finished_digest_shows_its_kept_figures(signed_in, db, daily):
    digest = draft(db, daily, "Story")
    readers = [add_reader(db, daily, f"r{n}@example.com") for n in range(3)]
    states.start(db.session, digest)
    send_all(db, MemoryTransport())
    readers[0].subscriptions[0].status = SubscriptionStatus.UNSUBSCRIBED
    readers[0].subscriptions[0].unsubscribed_at = utcnow() + timedelta(seconds=1)
    db.session.commit()
    saved = reread(db, digest)
    saved.started_at = saved.finished_at - timedelta(seconds=6)
    db.session.commit()

    response = signed_in.get(f"/admin/digests/{digest.id}")
    assert response.status_code == 200
    page = page_text(response)
    assert "Sent</strong>" in page
    assert 'aria-valuenow="100"' in page
    assert '<dd data-figure="sent">3</dd>' in page
    assert '<dd data-figure="failed">0</dd>' in page
    assert '<dd data-figure="unsubscribed_since">1</dd>' in page
    assert "<dt>Duration</dt><dd>6 s</dd>" in page
    assert "<dt>Average rate</dt><dd>0.5 messages/s</dd>" in page
    # Done: nothing left to poll.
    assert "digest.js" not in page
    listed = page_text(signed_in.get("/admin/digests"))
    assert "3 / 0" in listed

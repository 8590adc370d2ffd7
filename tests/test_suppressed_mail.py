"""An address that bounced hard or complained gets no mail of any kind, from any list."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from newsletter import subscriptions, suppression
from newsletter.digests import states
from newsletter.links import Reader
from newsletter.models import (
    AuditEvent,
    OutboxMessage,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    SuppressionReason,
)

from factories import (
    add_item,
    add_reader,
    app_links,
    csrf_token,
    links,
    make_admin,
    sign_in,
    signup,
    statuses,
)


def queued(db) -> int:  # type: ignore[no-untyped-def]
    return db.session.scalar(select(func.count(OutboxMessage.id))) or 0


@pytest.fixture
def bounced(client, db, newsletters, mailbox):  # type: ignore[no-untyped-def]
    """A reader of the first list whose address then bounced hard."""
    signup(client, "gone@example.com", "daily")
    [mail] = mailbox.deliver()
    client.post(links(mail, "/confirm/")[0])
    mailbox.deliver()
    suppression.suppress(db.session, "gone@example.com", SuppressionReason.BOUNCED)
    db.session.commit()
    return db.session.scalar(select(Subscriber).where(Subscriber.email_key == "gone@example.com"))


@pytest.mark.parametrize("reason", [SuppressionReason.BOUNCED, SuppressionReason.COMPLAINED])
def test_a_signup_to_another_list_queues_nothing_and_answers_the_same(
    client, db, newsletters, mailbox, reason
):
    signup(client, "gone@example.com", "daily")
    mailbox.deliver()
    suppression.suppress(db.session, "gone@example.com", reason)
    db.session.commit()
    before = queued(db)

    fresh = signup(client, "new@example.com", "culture")
    again = signup(client, "Gone@Example.com", "culture")

    assert again.status_code == fresh.status_code == 200
    assert again.get_data(as_text=True) == fresh.get_data(as_text=True).replace(
        "new@example.com", "Gone@example.com"
    )
    assert queued(db) == before + 1  # the new reader's confirmation only
    assert statuses(db)["culture"] == SubscriptionStatus.PENDING  # new@example.com's
    gone = db.session.scalar(select(Subscriber).where(Subscriber.email_key == "gone@example.com"))
    assert {s.newsletter.slug for s in gone.subscriptions} == {"daily"}
    assert mailbox.deliver()[0]["To"] == "new@example.com"


def test_the_preferences_page_says_mail_cannot_be_delivered_and_offers_no_list(
    client, db, bounced, mailbox
):
    token = app_links().preferences_token(Reader(bounced.id, bounced.token_key))
    page = client.get(f"/preferences/{token}").get_data(as_text=True)
    assert "Mail to this address cannot be delivered" in page
    assert "Save my choices" not in page
    assert page.count('name="newsletter"') == 3 and page.count("disabled") == 3

    ids = [str(n) for n in db.session.scalars(select(Subscription.newsletter_id))]
    response = client.post(f"/preferences/{token}", data={"newsletter": ids, "action": "save"})
    assert response.status_code == 200
    assert mailbox.deliver() == []
    db.session.expire_all()
    assert {s.status for s in bounced.subscriptions} == {SubscriptionStatus.BOUNCED}


def test_the_admin_cannot_resend_a_confirmation_to_it(client, db, newsletters, mailbox):
    make_admin()
    sign_in(client)
    signup(client, "gone@example.com", "daily")
    mailbox.deliver()
    suppression.suppress(db.session, "gone@example.com", SuppressionReason.COMPLAINED)
    db.session.commit()
    person = db.session.scalar(select(Subscriber))
    before = queued(db)
    response = client.post(
        f"/admin/subscribers/{person.id}/resend",
        data={"csrf_token": csrf_token(client, f"/admin/subscribers/{person.id}")},
        follow_redirects=True,
    )
    assert "Mail to this address cannot be delivered" in response.get_data(as_text=True)
    assert queued(db) == before


def test_mail_queued_before_the_bounce_is_withheld_when_it_would_go(
    client, db, newsletters, mailbox
):
    signup(client, "gone@example.com", "daily", "culture")
    suppression.suppress(db.session, "gone@example.com", SuppressionReason.BOUNCED)
    db.session.commit()
    assert mailbox.deliver() == []
    row = db.session.scalars(select(OutboxMessage)).one()
    assert (row.status, row.last_error) == ("skipped", "address suppressed: bounced")


def test_an_editor_whose_address_bounced_gets_no_test_copy(db, daily):
    add_item(db, daily, "Story")
    suppression.suppress(db.session, "editor@news.example.org", SuppressionReason.BOUNCED)
    db.session.commit()
    digest = states.compose(db.session, daily)
    with pytest.raises(states.DigestError, match="cannot be delivered"):
        states.send_test(db.session, digest, "editor@news.example.org")
    assert queued(db) == 0


def test_a_digest_leaves_out_a_reader_who_bounced_after_the_snapshot(db, daily, mailbox):
    from newsletter.mail.transport import MemoryTransport

    from factories import send_all

    add_item(db, daily, "Story")
    add_reader(db, daily, "stays@example.com")
    add_reader(db, daily, "gone@example.com")
    digest = states.compose(db.session, daily)
    states.start(db.session, digest)
    suppression.suppress(db.session, "gone@example.com", SuppressionReason.BOUNCED)
    db.session.commit()
    transport = MemoryTransport()
    send_all(db, transport)
    assert [m["To"] for m in transport.messages] == ["stays@example.com"]


def test_an_erased_reader_may_sign_up_again_but_no_import_brings_them_back(
    client, db, newsletters, mailbox
):
    from newsletter import subscribers as people

    signup(client, "back@example.com", "daily")
    person = db.session.scalar(select(Subscriber))
    people.erase(db.session, person, None)
    assert suppression.reason(db.session, "back@example.com") == SuppressionReason.ERASED
    assert not suppression.unmailable(db.session, "back@example.com")

    signup(client, "back@example.com", "daily")
    [mail] = mailbox.deliver()
    assert mail["To"] == "back@example.com" and links(mail, "/confirm/")


def test_lifting_a_suppression_is_audited_and_a_new_signup_is_confirmed_again(
    client, db, bounced, mailbox
):
    from newsletter import subscribers as people

    with pytest.raises(subscriptions.UserError, match="Say why"):
        people.lift_suppression(db.session, "gone@example.com", None, "  ")
    people.lift_suppression(db.session, "gone@example.com", None, "The mailbox works again.")
    [audit] = db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "lift-suppression")
    ).all()
    assert audit.detail == {
        "address": "g***@example.com",
        "reason": "bounced",
        "why": "The mailbox works again.",
    }
    assert not suppression.is_suppressed(db.session, "gone@example.com")

    signup(client, "gone@example.com", "daily")
    [mail] = mailbox.deliver()
    client.post(links(mail, "/confirm/")[0])
    assert statuses(db)["daily"] == SubscriptionStatus.CONFIRMED


def test_admin_lists_suppressions_masked_and_lifts_one(client, db, bounced):
    make_admin()
    sign_in(client)
    page = client.get("/admin/suppressions").get_data(as_text=True)
    assert "g***@example.com" in page and "gone@example.com" not in page
    found = client.get("/admin/suppressions?q=Gone@Example.com").get_data(as_text=True)
    assert "Lift the suppression" in found
    token = csrf_token(client, "/admin/suppressions?q=gone@example.com")
    response = client.post(
        "/admin/suppressions/lift",
        data={"email": "gone@example.com", "why": "Reader called us", "csrf_token": token},
    )
    assert response.status_code == 302
    assert not suppression.is_suppressed(db.session, "gone@example.com")
    audit = db.session.scalars(select(AuditEvent)).all()[-1]
    assert audit.action == "lift-suppression" and audit.admin_user_id is not None


def test_editors_cannot_see_or_lift_suppressions(client, db, bounced):
    make_admin("writer@news.example.org", "editor")
    sign_in(client, "writer@news.example.org")
    assert client.get("/admin/suppressions").status_code == 403

"""What the mails and the thank-you texts say: one list or several, a signup or an import."""

from __future__ import annotations

import io

import pytest
from sqlalchemy import select

from newsletter.imports import importer
from newsletter.imports import jobs as import_jobs
from newsletter.models import ImportMode, MailKind, OutboxMessage, Subscriber

from factories import csrf_token, html_part, links, sign_in, signup, text_part

UK_THANKS_ONE = "Дякуємо за підписку! Ми надіслали вам листа"


def _confirm_all(client, mailbox):  # type: ignore[no-untyped-def]
    (mail,) = mailbox.deliver()
    (link,) = links(mail, "/confirm/")
    assert client.post(link).status_code == 200
    return mailbox.deliver()


def test_confirming_several_lists_sends_one_welcome_naming_each(client, db, mailbox, newsletters):
    newsletters[0].welcome_text = "Every evening at six, the day in ten minutes."
    newsletters[1].description = "History and culture behind the headlines."
    db.session.commit()
    signup(client, "reader@example.com", "daily", "explaining-ukraine", "culture")
    (welcome,) = _confirm_all(client, mailbox)
    assert welcome["Subject"] == (
        "Welcome to Daily Briefing, Explaining Ukraine with Kate Tsurkan, and Culture"
    )
    text, html = text_part(welcome), html_part(welcome)
    assert "Welcome to your newsletters" in text
    for name in ("Daily Briefing", "Explaining Ukraine with Kate Tsurkan", "Culture"):
        assert f"* {name}" in text and f">{name}</h2>" in html
        assert f"Unsubscribe from {name}" in text
    # Each list's own welcome text, or ours, under its name.
    assert "* Daily Briefing\n  Every evening at six, the day in ten minutes." in text
    assert "History and culture behind the headlines." in text
    assert "The next issue will reach you soon." in text
    # No header names several lists: each list's leave link is in the body, and each works.
    assert welcome["List-Id"] is None and welcome["List-Unsubscribe"] is None
    leave = links(welcome, "/unsubscribe/")
    assert len(leave) == 3
    page = client.post(leave[1]).get_data(as_text=True)
    assert "Explaining Ukraine with Kate Tsurkan" in page and "You are unsubscribed" in page
    (preferences,) = links(welcome, "/preferences/")
    assert client.get(preferences).status_code == 200


def test_a_list_without_a_welcome_is_left_out_of_the_combined_one(client, db, mailbox, newsletters):
    newsletters[2].welcome_enabled = False
    db.session.commit()
    signup(client, "reader@example.com", "daily", "culture")
    (welcome,) = _confirm_all(client, mailbox)
    # One list left: the mail of one list, with its headers.
    assert welcome["Subject"] == "Welcome to Daily Briefing"
    assert "Culture" not in text_part(welcome)
    assert welcome["List-Id"] == "Daily Briefing <daily.news.example.org>"
    assert welcome["List-Unsubscribe"].startswith("<https://news.example.org/unsubscribe/")


def test_lists_joined_on_the_preferences_page_get_one_welcome(client, db, mailbox, newsletters):
    signup(client, "reader@example.com", "daily")
    (welcome,) = _confirm_all(client, mailbox)
    (preferences,) = links(welcome, "/preferences/")
    ids = [str(n.id) for n in newsletters]
    client.post(preferences, data={"newsletter": ids, "action": "save"})
    (second,) = mailbox.deliver()
    assert second["Subject"] == "Welcome to Explaining Ukraine with Kate Tsurkan and Culture"


def _import(db, text, slug="daily"):  # type: ignore[no-untyped-def]
    job = import_jobs.create_job(db.session, slug, "people.csv", ImportMode.CONFIRM, None)
    importer.run(db.session, job, io.StringIO(text, newline=""), io.StringIO())


def test_imported_readers_are_asked_to_confirm_to_keep_receiving(db, mailbox, newsletters):
    _import(db, "email,subscribed_at\nolena@example.com,2021-03-04\ntaras@example.com,\n")
    mails = {m["To"]: m for m in mailbox.deliver()}
    olena, taras = mails["olena@example.com"], mails["taras@example.com"]
    assert olena["Subject"] == "Do you want to keep receiving Daily Briefing?"
    text = text_part(olena)
    assert "Your address is on our list for this newsletter since March 4, 2021:" in text
    assert "To keep receiving it, please confirm" in text
    assert "If you do not confirm, we will send you nothing more." in text
    assert "Someone, hopefully you" not in text and "Someone, hopefully you" not in html_part(olena)
    # No date in the file: the import's own day says nothing, so none is given.
    assert "Your address is on our list for this newsletter:" in text_part(taras)
    assert "since" not in text_part(taras)


def test_a_resent_confirmation_of_an_imported_reader_still_asks_to_keep(
    client, db, mailbox, newsletters, admin
):
    _import(db, "email\nolena@example.com\n")
    mailbox.deliver()
    sign_in(client)
    person = db.session.scalar(select(Subscriber).where(Subscriber.email == "olena@example.com"))
    token = csrf_token(client, f"/admin/subscribers/{person.id}")
    client.post(f"/admin/subscribers/{person.id}/resend", data={"csrf_token": token})
    (again,) = mailbox.deliver()
    assert again["Subject"] == "Do you want to keep receiving Daily Briefing?"
    assert "Someone, hopefully you" not in text_part(again)


def test_a_signup_by_an_imported_reader_is_their_own_request(client, db, mailbox, newsletters):
    _import(db, "email\nolena@example.com\n")
    mailbox.deliver()
    signup(client, "olena@example.com", "daily")
    (mail,) = mailbox.deliver()
    assert "Someone, hopefully you, asked to receive this newsletter" in text_part(mail)
    row = db.session.scalars(
        select(OutboxMessage).where(OutboxMessage.kind == MailKind.CONFIRMATION)
    ).all()
    assert [r.payload.get("reason") for r in row] == ["import", None]


@pytest.mark.parametrize(
    ("lang", "slugs", "thanks"),
    [
        ("en", ["daily"], "Thank you for signing up for this newsletter."),
        ("en", ["daily", "culture"], "Thank you for signing up for these newsletters."),
        ("uk", ["daily"], UK_THANKS_ONE),
        ("uk", ["daily", "culture"], "Дякуємо за підписку на ці розсилки!"),
    ],
    ids=["en-one", "en-several", "uk-one", "uk-several"],
)
def test_the_thank_you_text_says_one_or_several(client, newsletters, lang, slugs, thanks):
    page = signup(client, "reader@example.com", *slugs, lang=lang).get_data(as_text=True)
    assert thanks in page
    json = client.post(
        "/subscribe", json={"email": "js@example.com", "newsletters": slugs, "lang": lang}
    ).get_json()
    assert thanks in json["message"]


def test_an_editors_shared_thank_you_text_is_kept_for_several(client, db, newsletters):
    for newsletter in newsletters:
        newsletter.thanks_text = "Check your inbox, and the spam folder too."
    db.session.commit()
    page = signup(client, "reader@example.com", "daily", "culture").get_data(as_text=True)
    assert "Check your inbox, and the spam folder too." in page


@pytest.mark.parametrize(
    ("lang", "slugs", "title", "lead"),
    [
        (
            "en",
            ["daily"],
            "Please confirm your subscription\n",
            "asked to receive this newsletter",
        ),
        (
            "en",
            ["daily", "culture"],
            "Please confirm your subscriptions\n",
            "asked to receive these newsletters",
        ),
        ("uk", ["daily"], "Підтвердьте, будь ласка, підписку\n", "таку розсилку"),
        ("uk", ["daily", "culture"], "Підтвердьте, будь ласка, підписки\n", "такі розсилки"),
    ],
    ids=["en-one", "en-several", "uk-one", "uk-several"],
)
def test_the_confirmation_says_one_or_several(
    client, mailbox, newsletters, lang, slugs, title, lead
):
    signup(client, "reader@example.com", *slugs, lang=lang)
    (mail,) = mailbox.deliver()
    text = text_part(mail)
    assert title in text and lead in text
    (link,) = links(mail, "/confirm/")
    client.post(link)
    (welcome,) = mailbox.deliver()
    several = len(slugs) > 1
    if lang == "uk":
        expected = "Вітаємо у ваших розсилках" if several else "Вітаємо в розсилці «Daily Briefing»"
    else:
        expected = "Welcome to your newsletters" if several else "Welcome to Daily Briefing"
    assert expected in text_part(welcome)

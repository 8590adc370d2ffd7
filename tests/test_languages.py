"""English and Ukrainian: pages, boxes, mails, the admin, and the catalogues behind them."""

from __future__ import annotations

import logging
import os
import re
from email.message import EmailMessage
from gettext import c2py
from pathlib import Path

import pytest
from babel.messages.frontend import CommandLineInterface
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po
from sqlalchemy import select

from newsletter import create_app
from newsletter.digests import states
from newsletter.extensions import babel
from newsletter.mail.transport import MemoryTransport
from newsletter.models import Newsletter, NewsletterText, Subscriber, Subscription

from factories import (
    add_item,
    add_reader,
    apply_signups,
    csrf_token,
    html_part,
    links,
    make_config,
    send_all,
    sign_in,
    signup,
    text_part,
)

ROOT = Path(__file__).resolve().parent.parent
TRANSLATIONS = ROOT / "newsletter" / "translations"
UK_PO = TRANSLATIONS / "uk" / "LC_MESSAGES" / "messages.po"
UK = {"Accept-Language": "uk-UA,uk;q=0.9,en;q=0.5"}


def page(response) -> str:  # type: ignore[no-untyped-def]
    return response.get_data(as_text=True)


def reader(db, email: str) -> Subscriber:  # type: ignore[no-untyped-def]
    db.session.expire_all()
    found = db.session.scalar(select(Subscriber).where(Subscriber.email_key == email))
    assert found is not None
    return found


def mail_text(message: EmailMessage) -> str:
    return text_part(message) + html_part(message)


# Pages: the language from the browser, from the page's address, from the box


def test_pages_are_english_by_default(client, newsletters):
    home = page(client.get("/"))
    assert '<html lang="en">' in home
    assert "Enter your email to subscribe" in home and "* indicates required" in home


def test_pages_follow_the_browsers_language(client, newsletters):
    home = page(client.get("/", headers=UK))
    assert '<html lang="uk">' in home
    assert "Введіть свою електронну адресу, щоб підписатися" in home
    assert "* — обов’язкове поле" in home
    assert ">Підписатися</button>" in home
    # The box says which language it was shown in, so the reader is written to in it.
    assert '<input type="hidden" name="lang" value="uk">' in home


def test_pages_follow_the_lang_in_their_address(client, newsletters):
    home = page(client.get("/?lang=uk", headers={"Accept-Language": "en"}))
    assert "Стрічка новин" in home and '<html lang="uk">' in home
    assert "News Feed" in page(client.get("/?lang=en", headers=UK))


def test_a_language_we_do_not_write_falls_back_to_english(client, newsletters):
    home = page(client.get("/", headers={"Accept-Language": "de-DE,fr;q=0.8"}))
    assert '<html lang="en">' in home and "Enter your email to subscribe" in home


def test_error_pages_and_messages_in_ukrainian(client, newsletters):
    missing = client.get("/no-such-page", headers=UK)
    assert missing.status_code == 404
    assert "Сторінку не знайдено" in page(missing)
    assert "За цією адресою сторінки немає." in page(missing)
    bad = signup(client, "not an address", "daily", lang="uk")
    assert bad.status_code == 422
    assert "Введіть правильну адресу електронної пошти" in page(bad)
    broken = client.get("/confirm/not-a-token", headers=UK)
    assert broken.status_code == 400 and "Посилання пошкоджене" in page(broken)


def test_api_problems_in_the_callers_language(client, newsletters):
    response = client.post(
        "/api/v1/subscriptions",
        json={"email": "nope", "newsletters": ["daily"]},
        headers=UK,
    )
    assert response.status_code == 422
    body = response.get_json()
    assert body["title"] == "Деякі поля заповнено неправильно"
    assert body["detail"] == "Перевірте поля: email."
    assert body["errors"][0]["message"] == "Введіть правильну адресу електронної пошти"


# Signups: the language is stored with the reader and every mail is written in it


def test_a_ukrainian_signup_gets_ukrainian_mails(client, db, mailbox, newsletters):
    thanks = signup(client, "reader@example.com", "daily", lang="uk")
    assert thanks.status_code == 200
    assert "Підписку оформлено" in page(thanks)
    assert "Дякуємо за підписку! Ми надіслали вам листа" in page(thanks)
    assert reader(db, "reader@example.com").locale == "uk"

    (confirmation,) = mailbox.deliver()
    assert confirmation["Subject"] == "Підтвердьте підписку на розсилку «Daily Briefing»"
    body = mail_text(confirmation)
    assert "сподіваємося, що саме Ви, — попросив надсилати на цю адресу таку розсилку:" in body
    assert "Підтвердити підписку" in body
    assert '<html lang="uk">' in html_part(confirmation)

    # The reader's pages speak their language, whatever the browser says.
    (link,) = links(confirmation, "/confirm/")
    shown = page(client.get(link, headers={"Accept-Language": "en"}))
    assert "Натисніть кнопку, щоб отримувати цю розсилку" in shown
    confirmed = client.post(link)
    assert "Підписку підтверджено" in page(confirmed)

    (welcome,) = mailbox.deliver()
    assert welcome["Subject"] == "Вітаємо в розсилці «Daily Briefing»"
    body = mail_text(welcome)
    assert "Дякуємо, що підтвердили підписку!" in body
    assert "Керувати підписками" in body and "Відписатися" in body
    # The headers a mail client reads stay what they are in any language.
    assert welcome["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_the_browsers_language_is_stored_when_the_box_names_none(client, db, mailbox, newsletters):
    client.post("/subscribe", data={"email": "r@example.com", "newsletter": "daily"}, headers=UK)
    apply_signups()
    assert reader(db, "r@example.com").locale == "uk"
    (confirmation,) = mailbox.deliver()
    assert confirmation["Subject"].startswith("Підтвердьте підписку")


def test_an_english_signup_stays_english(client, db, mailbox, newsletters):
    signup(client, "reader@example.com", "daily", "culture")
    assert reader(db, "reader@example.com").locale == "en"
    (confirmation,) = mailbox.deliver()
    assert confirmation["Subject"] == "Please confirm your newsletter subscriptions"
    assert "asked to receive these newsletters" in text_part(confirmation)


def test_the_json_box_sends_lang(client, db, mailbox, newsletters):
    response = client.post(
        "/subscribe", json={"email": "js@example.com", "newsletter": "daily", "lang": "uk"}
    )
    apply_signups()
    assert response.status_code == 200
    assert response.get_json()["title"] == "Підписку оформлено"
    assert reader(db, "js@example.com").locale == "uk"
    api = client.post(
        "/api/v1/subscriptions",
        json={"email": "api@example.com", "newsletters": ["daily"], "lang": "uk"},
    )
    apply_signups()
    assert api.status_code == 202
    assert reader(db, "api@example.com").locale == "uk"


@pytest.mark.parametrize(
    "lang", ["de", "uk-UA", "", "x" * 300], ids=["other", "region", "empty", "long"]
)
def test_a_lang_we_do_not_write_is_refused_and_nothing_is_stored(client, db, newsletters, lang):
    response = client.post(
        "/api/v1/subscriptions",
        json={"email": "r@example.com", "newsletters": ["daily"], "lang": lang or 5},
    )
    assert response.status_code == 422
    assert [e["field"] for e in response.get_json()["errors"]] == ["lang"]
    form = signup(client, "r@example.com", "daily", lang=lang or "zz")
    assert form.status_code == 422
    # Said in English, or in Ukrainian when the tag names it (uk-UA).
    assert "(en)" in page(form) and "(uk)" in page(form)
    assert db.session.scalar(select(Subscriber)) is None


@pytest.mark.parametrize("lang", [["uk"], {"uk": 1}, [[]]], ids=["list", "object", "nested"])
def test_a_lang_that_is_not_text_is_refused_and_nothing_is_stored(client, db, newsletters, lang):
    api = client.post(
        "/api/v1/subscriptions",
        json={"email": "r@example.com", "newsletters": ["daily"], "lang": lang},
    )
    assert api.status_code == 422
    assert [e["field"] for e in api.get_json()["errors"]] == ["lang"]
    box = client.post(
        "/subscribe", json={"email": "r@example.com", "newsletter": "daily", "lang": lang}
    )
    assert box.status_code == 422
    assert box.get_json()["field"] == "lang"
    assert db.session.scalar(select(Subscriber)) is None


def test_the_reader_changes_their_language_on_the_preferences_page(
    client, db, mailbox, newsletters
):
    signup(client, "reader@example.com", "daily")
    (link,) = links(mailbox.deliver()[0], "/confirm/")
    client.post(link)
    (welcome,) = mailbox.deliver()
    assert welcome["Subject"] == "Welcome to Daily Briefing"
    (prefs,) = links(welcome, "/preferences/")
    assert 'name="locale"' in page(client.get(prefs))

    daily = db.session.scalar(select(Newsletter).where(Newsletter.slug == "daily"))
    culture = db.session.scalar(select(Newsletter).where(Newsletter.slug == "culture"))
    saved = client.post(prefs, data={"newsletter": [daily.id, culture.id], "locale": "uk"})
    assert saved.status_code == 200
    assert "Мову збережено" in page(saved) and '<html lang="uk">' in page(saved)
    assert reader(db, "reader@example.com").locale == "uk"
    # Consent is untouched by the change of language; the new list's welcome is in Ukrainian.
    (joined,) = mailbox.deliver()
    assert joined["Subject"] == "Вітаємо в розсилці «Culture»"
    # Later visits of the page come in the stored language.
    assert "Ваші розсилки" in page(client.get(prefs, headers={"Accept-Language": "en"}))


def test_digest_frame_in_each_readers_language(db, daily):
    add_item(db, daily, "Drones shot down")
    add_reader(db, daily, "en@example.com")
    ukrainian = add_reader(db, daily, "uk@example.com")
    ukrainian.locale = "uk"
    db.session.commit()
    digest = states.compose(db.session, daily, subject="Today")
    states.start(db.session, digest)
    transport = MemoryTransport()
    send_all(db, transport)

    by_reader = {m["To"]: m for m in transport.messages}
    english, uk = by_reader["en@example.com"], by_reader["uk@example.com"]
    assert "You receive Daily Briefing because you subscribed to it" in text_part(english)
    assert "Read more" in html_part(english)
    assert "Ви отримуєте розсилку «Daily Briefing», бо підписалися на неї" in text_part(uk)
    assert "Читати далі" in html_part(uk) and "Керувати підписками" in html_part(uk)
    # Dates as the language writes them: the month's name in Ukrainian, in the genitive.
    month = re.search(r"\d{1,2} (\w+) \d{4}, \d\d:\d\d", text_part(uk))
    assert month and month.group(1) in {
        "січня", "лютого", "березня", "квітня", "травня", "червня",
        "липня", "серпня", "вересня", "жовтня", "листопада", "грудня",
    }  # fmt: skip
    # The content is the editor's, the same for both.
    assert english["Subject"] == uk["Subject"] == "Today"


# The admin: the editor's language, its switch, plural forms, and newsletters' own texts


def test_admin_follows_the_editors_browser_and_the_switch(client, admin):
    assert "Увійти" in page(client.get("/admin/login", headers=UK))
    sign_in(client)
    assert "Dashboard" in page(client.get("/admin/"))
    token = csrf_token(client, "/admin/")
    switched = client.post(
        "/admin/language", data={"lang": "uk", "next": "/admin/newsletters", "csrf_token": token}
    )
    assert switched.status_code == 303 and switched.headers["Location"] == "/admin/newsletters"
    shown = page(client.get("/admin/newsletters"))
    assert "Нова розсилка" in shown and '<html lang="uk">' in shown
    # Never sent elsewhere by the switch.
    away = client.post(
        "/admin/language", data={"lang": "en", "next": "//evil.example/", "csrf_token": token}
    )
    assert away.headers["Location"] == "/admin/"
    assert "Dashboard" in page(client.get("/admin/"))


@pytest.mark.parametrize(
    ("readers", "words"),
    [(1, "1 читач розсилки"), (2, "2 читачі розсилки"), (5, "5 читачів розсилки")],
    ids=["one", "few", "many"],
)
def test_counts_take_ukrainian_plural_forms(client, db, admin, daily, readers, words):
    add_item(db, daily, "Drones shot down")
    for n in range(readers):
        add_reader(db, daily, f"reader{n}@example.com")
    digest = states.compose(db.session, daily, subject="Today")
    sign_in(client)
    draft = page(client.get(f"/admin/digests/{digest.id}", headers=UK))
    sending = {1: "підтвердженому читачеві", 2: "підтвердженим читачам", 5: "підтвердженим читачам"}
    assert f"Надіслати зараз {readers} {sending[readers]}" in draft
    states.start(db.session, digest)
    shown = page(client.get(f"/admin/digests/{digest.id}", headers=UK))
    assert words in shown


def test_numbers_in_the_editors_language(client, db, admin, daily):
    add_item(db, daily, "Drones shot down")
    for n in range(1234):
        person = Subscriber(email=f"r{n}@example.com", email_key=f"r{n}@example.com")
        db.session.add(Subscription(subscriber=person, newsletter=daily, status="confirmed"))
    db.session.commit()
    digest = states.compose(db.session, daily, subject="Today")
    sign_in(client)
    assert "Send now to 1,234 confirmed readers" in page(client.get(f"/admin/digests/{digest.id}"))
    uk = page(client.get(f"/admin/digests/{digest.id}", headers=UK))
    assert "Надіслати зараз 1\u00a0234 підтвердженим читачам" in uk


def test_newsletter_texts_per_language(client, db, mailbox, admin, daily):
    sign_in(client)
    form = {
        "name": "Daily Briefing",
        "slug": "daily",
        "description": "The day in five minutes.",
        "cadence": "daily",
        "prompt_text": "Enter your email to subscribe",
        "button_text": "Subscribe",
        "thanks_text": "Thanks! Check your inbox.",
        "welcome_text": "Welcome aboard.",
        "welcome_enabled": "y",
        "send_time": "08:00",
        "timezone": "Europe/Kyiv",
        "send_weekday": "0",
        "auto_digest": "off",
        "uk_name": "Щоденний огляд",
        "uk_description": "День за п’ять хвилин.",
        "uk_button_text": "Хочу отримувати",
        "uk_thanks_text": "Дякуємо! Перевірте пошту.",
        "uk_welcome_text": "Раді вас бачити серед читачів.",
        "csrf_token": csrf_token(client, f"/admin/newsletters/{daily.id}/edit"),
    }
    saved = client.post(f"/admin/newsletters/{daily.id}/edit", data=form)
    assert saved.status_code == 302, page(saved)
    version = db.session.scalar(select(NewsletterText))
    assert (version.locale, version.name, version.prompt_text) == ("uk", "Щоденний огляд", "")
    # The form shows what is kept.
    assert 'value="Щоденний огляд"' in page(client.get(f"/admin/newsletters/{daily.id}/edit"))

    english = page(client.get("/"))
    assert "Daily Briefing" in english and "The day in five minutes." in english
    uk = page(client.get("/", headers=UK))
    assert "Щоденний огляд" in uk and "День за п’ять хвилин." in uk
    assert ">Хочу отримувати</button>" in uk
    # No Ukrainian prompt given: the newsletter's own is ours, so it is shown translated.
    assert "Введіть свою електронну адресу, щоб підписатися" in uk

    thanks = signup(client, "reader@example.com", "daily", lang="uk")
    assert "Дякуємо! Перевірте пошту." in page(thanks)
    (confirmation,) = mailbox.deliver()
    assert confirmation["Subject"] == "Підтвердьте підписку на розсилку «Щоденний огляд»"
    client.post(links(confirmation, "/confirm/")[0])
    (welcome,) = mailbox.deliver()
    assert welcome["Subject"] == "Вітаємо в розсилці «Щоденний огляд»"
    assert "Раді вас бачити серед читачів." in text_part(welcome)
    # The list's name in the headers is its own.
    assert welcome["List-Id"].startswith("Daily Briefing")

    # Emptying every Ukrainian field drops the version.
    form.update({key: "" for key in form if key.startswith("uk_")})
    form["csrf_token"] = csrf_token(client, f"/admin/newsletters/{daily.id}/edit")
    assert client.post(f"/admin/newsletters/{daily.id}/edit", data=form).status_code == 302
    db.session.expire_all()
    assert db.session.scalar(select(NewsletterText)) is None


def test_a_translated_name_cannot_break_a_mail_header(client, db, admin, daily):
    sign_in(client)
    token = csrf_token(client, f"/admin/newsletters/{daily.id}/edit")
    response = client.post(
        f"/admin/newsletters/{daily.id}/edit",
        data={
            "name": "Daily",
            "slug": "daily",
            "cadence": "daily",
            "prompt_text": "Enter",
            "button_text": "Go",
            "thanks_text": "Thanks",
            "send_time": "08:00",
            "timezone": "UTC",
            "send_weekday": "0",
            "auto_digest": "off",
            "uk_name": "Огляд\r\nBcc: victim@example.com",
            "csrf_token": token,
        },
    )
    assert response.status_code == 422
    assert "Use a single line." in page(response)
    assert db.session.scalar(select(NewsletterText)) is None


# The catalogues


def _key(text: str | list[str] | tuple[str, ...]) -> str | tuple[str, ...]:
    return text if isinstance(text, str) else tuple(text)


def _catalogue(path: Path):  # type: ignore[no-untyped-def]
    with path.open("rb") as f:
        return read_po(f)


def test_every_text_has_a_ukrainian_translation():
    catalogue = _catalogue(UK_PO)
    assert catalogue.num_plurals == 3
    missing = []
    for message in catalogue:
        if not message.id:
            continue
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        if message.fuzzy or not all(strings) or len(strings) != (3 if message.pluralizable else 1):
            missing.append(message.id)
    assert missing == [], f"run `make translations` and translate: {missing}"


def test_ukrainian_plural_rule():
    plural = c2py(_catalogue(UK_PO).plural_expr)
    assert [plural(n) for n in (1, 2, 5, 11, 12, 21, 22, 25, 111, 114)] == [
        0, 1, 2, 2, 2, 0, 1, 2, 2, 2,
    ]  # fmt: skip


def test_the_template_is_up_to_date_with_the_code(tmp_path):
    fresh = tmp_path / "messages.pot"
    # As `make translations` runs it, from the top of the project.
    command = ["pybabel", "-q", "extract", "-F", str(TRANSLATIONS / "babel.cfg")]
    command += ["-k", "lazy_gettext", "-o", str(fresh), "newsletter", "templates"]
    cwd = Path.cwd()
    try:
        os.chdir(ROOT)
        CommandLineInterface().run(command)
    finally:
        os.chdir(cwd)
    ids = {m.id for m in _catalogue(fresh) if m.id}
    kept = {m.id for m in _catalogue(TRANSLATIONS / "messages.pot") if m.id}
    assert ids - kept == set(), "new texts: run `make translations`"
    assert kept - ids == set(), "texts gone from the code: run `make translations`"
    translated = {m.id for m in _catalogue(UK_PO) if m.id}
    assert translated == kept, "the Ukrainian catalogue lags the template: `make translations`"


def test_the_compiled_catalogue_matches_the_po():
    compiled = UK_PO.with_suffix(".mo")
    assert compiled.is_file(), "compile the catalogues: `make translations`"

    def texts(catalogue):  # type: ignore[no-untyped-def]
        return {_key(m.id): _key(m.string) for m in catalogue if m.id}

    with compiled.open("rb") as f:
        mo = texts(read_mo(f))
    po = texts(_catalogue(UK_PO))
    assert mo == po, "the .mo is older than the .po: `make translations`"


def test_the_app_starts_without_compiled_catalogues_and_says_so(tmp_path, database_url, caplog):
    empty = tmp_path / "translations"
    empty.mkdir()
    config = make_config(
        database_url, tmp_path / "instance", BABEL_TRANSLATION_DIRECTORIES=str(empty)
    )
    babel.domain_instance.cache.clear()  # translations are kept per process
    try:
        with caplog.at_level(logging.WARNING, logger="newsletter.web.language"):
            app = create_app(config)
        assert "No compiled catalogue for uk" in caplog.text
        assert "make translations" in caplog.text
        with app.test_request_context("/", headers=UK):
            from flask_babel import gettext

            assert gettext("Subscribe") == "Subscribe"
    finally:
        babel.domain_instance.cache.clear()

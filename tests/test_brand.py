"""The site's brand: the admin's settings page, the pages' header, the mails' masthead, footer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select

from newsletter import create_app, site
from newsletter.digests import states
from newsletter.extensions import db
from newsletter.mail import outbox
from newsletter.mail.transport import MemoryTransport
from newsletter.models import AuditEvent, MailKind, SiteSettings, Subscription

from factories import (
    add_item,
    add_reader,
    csrf_token,
    html_part,
    links,
    make_config,
    send_all,
    sign_in,
    signup,
    text_part,
)

BRAND = {
    "name": "The Kyiv Independent",
    "logo_url": "https://cdn.kyiv.example/logo.png",
    "accent_colour": "#A4262C",
    "home_url": "https://kyiv.example/",
    "postal_address": "vul. Prykladna 1\r\nKyiv 01001\r\nUkraine",
    "from_name": "The Kyiv Independent",
    "from_address": "letters@kyiv.example",
}
ADDRESS_LINES = ["vul. Prykladna 1", "Kyiv 01001", "Ukraine"]


def save(client, **values):  # type: ignore[no-untyped-def]
    """Post the settings form as a signed-in admin's browser does."""
    data = {**{name: "" for name in site.FIELDS}, **values}
    data["csrf_token"] = csrf_token(client, "/admin/settings")
    return client.post("/admin/settings", data=data)


@pytest.fixture
def branded(client, admin):  # type: ignore[no-untyped-def]
    """The brand saved through the settings page by an admin."""
    sign_in(client)
    response = save(client, **BRAND)
    assert response.status_code == 302
    client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin/")})
    return BRAND


# -- the settings page --------------------------------------------------------------------


def test_settings_are_saved_audited_and_used_at_once(client, db, admin):
    sign_in(client)
    response = save(client, **BRAND)
    assert response.status_code == 302 and response.location.endswith("/admin/settings")
    row = db.session.scalars(select(SiteSettings)).one()
    assert row.name == "The Kyiv Independent"
    assert row.accent_colour == "#a4262c"  # as #rrggbb, lowercase
    assert row.postal_address == "vul. Prykladna 1\nKyiv 01001\nUkraine"
    assert row.updated_by_id == admin.id
    (event,) = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "site-settings"))
    assert event.admin_user_id == admin.id
    assert event.detail["changes"]["name"] == ["", "The Kyiv Independent"]
    page = client.get("/admin/settings").get_data(as_text=True)
    assert "The site settings are saved." in page
    assert 'value="The Kyiv Independent"' in page
    # The change is on the public pages of this process at once.
    assert "Back to The Kyiv Independent" in client.get("/").get_data(as_text=True)
    # Saving the same values again changes nothing and notes nothing.
    assert save(client, **BRAND).status_code == 302
    assert len(db.session.scalars(select(AuditEvent)).all()) == 1


def test_editors_may_not_see_or_change_the_settings(client, db, editor):
    sign_in(client, editor.email)
    assert client.get("/admin/settings").status_code == 403
    token = csrf_token(client, "/admin/")
    response = client.post("/admin/settings", data={"name": "Mine", "csrf_token": token})
    assert response.status_code == 403
    assert db.session.scalars(select(SiteSettings)).all() == []
    assert "/admin/settings" not in client.get("/admin/").get_data(as_text=True)


def test_the_settings_form_needs_its_csrf_token(client, db, admin):
    sign_in(client)
    response = client.post("/admin/settings", data={"name": "Forged"})
    assert response.status_code == 400
    assert db.session.scalars(select(SiteSettings)).all() == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("logo_url", "javascript:alert(1)", "Use an http:// or https:// address."),
        ("logo_url", "ftp://kyiv.example/logo.png", "Use an http:// or https:// address."),
        ("logo_url", 'https://kyiv.example/"onerror="x', "Use an http:// or https:// address."),
        ("home_url", "https://kyiv.example;script-src/", "Use an http:// or https:// address."),
        ("home_url", "//kyiv.example/", "Use an http:// or https:// address."),
        ("accent_colour", "red", "Use a hex colour such as #0b57d0."),
        ("accent_colour", "#0b57d0;}body{", "Use a hex colour such as #0b57d0."),
        ("accent_colour", "#ffe600", "White text on this colour is hard to read"),
        ("from_name", "News\r\nBcc: victim@example.com", "Use a single line."),
        ("from_name", "News\nBcc: victim@example.com", "Use a single line."),
        ("name", "Kyiv\rIndependent", "Use a single line."),
        ("from_address", "not an address", "is not an email address"),
        ("name", "x" * 101, "At most 100 characters."),
    ],
    ids=[
        "logo-javascript",
        "logo-ftp",
        "logo-quote",
        "home-semicolon",
        "home-no-scheme",
        "colour-name",
        "colour-css",
        "colour-too-light",
        "sender-crlf",
        "sender-lf",
        "name-cr",
        "sender-address",
        "name-too-long",
    ],
)
def test_bad_values_are_refused_and_nothing_is_kept(client, db, admin, field, value, message):
    sign_in(client)
    response = save(client, **{**BRAND, field: value})
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert message in page.replace("&#34;", '"').replace("&#39;", "'")
    assert f'id="{field}-errors"' in page
    assert db.session.scalars(select(SiteSettings)).all() == []
    assert db.session.scalars(select(AuditEvent)).all() == []


def test_another_process_sees_a_change_when_its_copy_expires(
    app, db, admin, tmp_path, database_url, monkeypatch
):
    """Two gunicorn workers: each keeps a copy for SITE_CACHE_SECONDS, then reads again."""
    clock = [1000.0]
    monkeypatch.setattr(site.time, "monotonic", lambda: clock[0])
    other = create_app(make_config(database_url, tmp_path / "other", SITE_CACHE_SECONDS=10))
    with other.app_context():
        assert other.test_client().get("/thanks-not-here").status_code == 404
        assert site.current().name == "news.example.org"  # read now, kept for 10 s
    site.save(db.session, {"name": "The Kyiv Independent"}, admin.id)
    site.forget()
    assert site.current().name == "The Kyiv Independent"  # the process that saved it
    with other.app_context():
        assert site.current().name == "news.example.org"  # its copy, within the 10 s
        clock[0] += 10
        page = other.test_client().get("/").get_data(as_text=True)
        assert "Back to The Kyiv Independent" in page
        db.session.remove()
        db.engine.dispose()


# -- public pages ---------------------------------------------------------------------------


def _pages(client, mailbox):  # type: ignore[no-untyped-def]
    """Every kind of page a reader can reach, as (name, response)."""
    yield "home", client.get("/")
    yield "thanks", signup(client, "reader@example.com", "daily", "culture")
    yield "signup-error", signup(client, "not-an-address", "daily")
    (mail,) = mailbox.deliver()
    (confirm,) = links(mail, "/confirm/")
    yield "confirm", client.get(confirm)
    yield "confirmed", client.post(confirm)
    welcome = mailbox.deliver()[0]
    unsubscribe = links(welcome, "/unsubscribe/")[0]
    (preferences,) = links(welcome, "/preferences/")
    yield "unsubscribe", client.get(unsubscribe)
    yield "unsubscribed", client.post(unsubscribe)
    yield "preferences", client.get(preferences)
    yield "used-link", client.get(confirm)
    yield "broken-link", client.get("/confirm/garbage")
    yield "not-found", client.get("/no-such-page")


def test_every_public_page_has_the_header_and_the_way_back(client, newsletters, mailbox, branded):
    seen = []
    for name, response in _pages(client, mailbox):
        page = response.get_data(as_text=True)
        header = re.search(r'<header class="site-header">(.*?)</header>', page, re.S)
        assert header, name
        assert '<img src="https://cdn.kyiv.example/logo.png" alt="The Kyiv Independent"' in (
            header.group(1)
        ), name
        assert '<a class="site-back" href="https://kyiv.example/">Back to The Kyiv Independent' in (
            header.group(1)
        ), name
        # The accent colour, as a stylesheet whose address changes with the colour.
        assert '<link rel="stylesheet" href="/theme.css?v=a4262c">' in page, name
        # The logo's origin, and no other, may serve the page an image.
        csp = response.headers["Content-Security-Policy"]
        assert "img-src 'self' data: https://cdn.kyiv.example;" in csp, name
        seen.append(name)
    assert len(seen) == 11
    theme = client.get("/theme.css?v=a4262c")
    assert theme.mimetype == "text/css"
    assert theme.get_data(as_text=True) == ":root { --accent: #a4262c; --nl-accent: #a4262c; }\n"
    assert theme.cache_control.max_age == 365 * 24 * 3600
    # An old colour's address is answered with the colour of the moment, kept briefly.
    assert client.get("/theme.css?v=0b57d0").cache_control.max_age == 60


def test_without_settings_the_header_names_the_base_urls_host(client, newsletters):
    page = client.get("/").get_data(as_text=True)
    assert '<a class="site-brand" href="https://news.example.org/">news.example.org</a>' in page
    assert "Back to news.example.org" in page
    assert '<link rel="stylesheet" href="/theme.css?v=0b57d0">' in page
    assert "--accent: #0b57d0;" in client.get("/theme.css").get_data(as_text=True)


# -- mail -------------------------------------------------------------------------------


def _assert_branded(mail, name):  # type: ignore[no-untyped-def]
    text, html = text_part(mail), html_part(mail)
    assert text.startswith("The Kyiv Independent\n====================\n"), name
    assert text.rstrip().endswith("--\nThe Kyiv Independent\n" + "\n".join(ADDRESS_LINES)), name
    assert 'alt="The Kyiv Independent"' in html and "https://cdn.kyiv.example/logo.png" in html
    assert "vul. Prykladna 1<br>Kyiv 01001<br>Ukraine" in html, name
    assert "#a4262c" in html, name


def test_every_kind_of_mail_carries_the_masthead_and_the_postal_address(
    client, db, newsletters, mailbox, branded
):
    signup(client, "reader@example.com", "daily", "culture")
    (confirmation,) = mailbox.deliver()
    _assert_branded(confirmation, "confirmation")
    client.post(links(confirmation, "/confirm/")[0])
    (welcome,) = mailbox.deliver()
    _assert_branded(welcome, "welcome")

    subscription = db.session.scalars(select(Subscription)).first()
    outbox.enqueue(
        db.session,
        MailKind.LEAVE_LINK,
        subscription.subscriber_id,
        subscription.subscriber.email,
        {"subscription": subscription.id},
    )
    db.session.commit()
    (leave,) = mailbox.deliver()
    _assert_branded(leave, "leave link")

    daily = newsletters[0]
    add_item(db, daily, "Drones shot down")
    digest = states.compose(db.session, daily)
    states.send_test(db.session, digest, "editor@news.example.org")
    (test_copy,) = mailbox.deliver()
    _assert_branded(test_copy, "digest test")
    states.start(db.session, digest)
    transport = MemoryTransport()
    send_all(db, transport)
    (digest_mail,) = transport.messages
    _assert_branded(digest_mail, "digest")
    footer = text_part(digest_mail)
    assert "You receive Daily Briefing because you subscribed to it on The Kyiv Independent." in (
        footer
    )
    # The site's default sender for the list without its own; the list's own for the daily.
    assert welcome["From"] == "The Kyiv Independent <letters@kyiv.example>"
    assert digest_mail["From"] == "Daily Desk <daily@news.example.org>"


@pytest.fixture
def trial(app, tmp_path: Path, database_url: str):  # type: ignore[no-untyped-def]
    """An app as `make run` starts it: on 127.0.0.1, no site settings (on the test database,
    in context above the test app's)."""
    trial_app = create_app(
        make_config(database_url, tmp_path / "trial", BASE_URL="http://127.0.0.1:5000")
    )
    with trial_app.app_context():
        yield trial_app
        db.session.remove()
        db.engine.dispose()


def test_no_footer_names_127_0_0_1(trial, db, daily):
    assert trial.config["DEFAULT_FROM_ADDRESS"] == "newsletter@localhost"
    add_item(db, daily, "Drones shot down")
    add_reader(db, daily, "reader@example.com")
    states.start(db.session, states.compose(db.session, daily))
    transport = MemoryTransport()
    send_all(db, transport)
    (mail,) = transport.messages
    for part in (text_part(mail), html_part(mail)):
        footer = part[part.index("You receive") :]
        assert "You receive Daily Briefing because you subscribed to it." in footer
        # Links lead to the trial's address; no sentence names it as the site.
        assert not re.search(r"127\.0\.0\.1(?!:5000/)", footer)
        assert "on 127.0.0.1" not in part


def test_the_default_sender_is_at_the_base_urls_domain(tmp_path, database_url):
    app = create_app(
        make_config(database_url, tmp_path / "i", BASE_URL="https://letters.kyiv.example")
    )
    assert app.config["DEFAULT_FROM_ADDRESS"] == "newsletter@letters.kyiv.example"
    with app.app_context():
        assert site.current().from_address == "newsletter@letters.kyiv.example"
        db.engine.dispose()


def test_a_sender_name_written_into_the_table_by_hand_cannot_inject_a_header(
    client, db, newsletters, mailbox
):
    db.session.add(SiteSettings(**{**site.check({}), "from_name": "News\r\nBcc: x@example.com"}))
    db.session.commit()
    signup(client, "reader@example.com", "daily", "culture")
    assert mailbox.deliver() == []  # the mail fails alone; no header is added

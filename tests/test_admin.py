"""The admin area: signing in, access rules, CSRF, newsletters and their embed snippet."""

from __future__ import annotations

import idna
import pytest
from sqlalchemy import select

from newsletter.models import AdminUser, Newsletter

from factories import PASSWORD, csrf_token, sign_in


def login(client, email: str, password: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/admin/login",
        data={"email": email, "password": password, "csrf_token": csrf_token(client)},
    )


@pytest.mark.parametrize(
    "path",
    ["/admin/", "/admin/newsletters", "/admin/newsletters/new", "/admin/newsletters/1"],
)
def test_every_admin_page_sends_strangers_to_sign_in(client, admin, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login?next=")


def test_sign_in_and_out(client, db, admin):
    page = client.get("/admin/login")
    assert page.status_code == 200 and 'name="csrf_token"' in page.get_data(as_text=True)
    response = login(client, "Editor@News.Example.org", PASSWORD)
    assert response.status_code == 302 and response.headers["Location"] == "/admin/"
    dashboard = client.get("/admin/")
    assert dashboard.status_code == 200
    assert "editor@news.example.org (admin)" in dashboard.get_data(as_text=True)
    assert db.session.get(AdminUser, admin.id).last_login_at is not None

    out = client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin/")})
    assert out.status_code == 302
    assert client.get("/admin/").status_code == 302


def test_session_cookie_is_httponly_and_lax(client, admin):
    response = login(client, "editor@news.example.org", PASSWORD)
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


@pytest.mark.parametrize(
    ("email", "password"),
    [("editor@news.example.org", "wrong password"), ("nobody@news.example.org", PASSWORD)],
    ids=["wrong-password", "unknown-address"],
)
def test_wrong_address_and_wrong_password_get_the_same_answer(client, admin, email, password):
    response = login(client, email, password)
    assert response.status_code == 401
    assert "Wrong email or password." in response.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302


def test_next_only_leads_inside_the_admin(client, admin):
    token = csrf_token(client)
    data = {"email": "editor@news.example.org", "password": PASSWORD, "csrf_token": token}
    inside = client.post("/admin/login?next=/admin/newsletters", data=data)
    assert inside.headers["Location"] == "/admin/newsletters"
    client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin/")})
    data["csrf_token"] = csrf_token(client)
    away = client.post("/admin/login?next=https://evil.example/", data=data)
    assert away.headers["Location"] == "/admin/"


def test_post_without_csrf_token_is_refused(client, db, admin):
    refused = client.post(
        "/admin/login", data={"email": "editor@news.example.org", "password": PASSWORD}
    )
    assert refused.status_code == 400
    assert "This form has expired or was sent from another site" in refused.get_data(as_text=True)
    sign_in(client)
    created = client.post("/admin/newsletters/new", data={"name": "X", "slug": "x"})
    assert created.status_code == 400
    assert db.session.scalars(select(Newsletter)).all() == []


def test_admin_creates_edits_and_archives_a_newsletter(client, db, admin):
    sign_in(client)
    token = csrf_token(client, "/admin/newsletters/new")
    form = {
        "csrf_token": token,
        "name": "Kyiv Weekly",
        "slug": "kyiv-weekly",
        "description": "The week in Kyiv.",
        "cadence": "weekly",
        "from_name": "Kyiv Desk",
        "from_address": "kyiv@news.example.org",
        "reply_to": "",
        "prompt_text": "Enter your email to subscribe",
        "button_text": "Subscribe",
        "thanks_text": "Thanks!",
        "welcome_text": "",
        "welcome_enabled": "y",
    }
    created = client.post("/admin/newsletters/new", data=form)
    assert created.status_code == 302
    newsletter = db.session.scalars(select(Newsletter)).one()
    assert (newsletter.name, newsletter.slug, newsletter.from_address) == (
        "Kyiv Weekly",
        "kyiv-weekly",
        "kyiv@news.example.org",
    )
    page = client.get(created.headers["Location"]).get_data(as_text=True)
    assert "Saved Kyiv Weekly." in page
    # The snippet is shown as text, ready to copy, posting to this service.
    assert "method=&#34;post&#34; action=&#34;https://news.example.org/subscribe&#34;" in page
    assert "value=&#34;kyiv-weekly&#34;" in page
    assert "&lt;script src=&#34;https://news.example.org/static/embed.js&#34; defer&gt;" in page

    edit_token = csrf_token(client, f"/admin/newsletters/{newsletter.id}/edit")
    edited = client.post(
        f"/admin/newsletters/{newsletter.id}/edit",
        data={**form, "csrf_token": edit_token, "name": "Kyiv Weekly Digest"},
    )
    assert edited.status_code == 302
    archive_token = csrf_token(client, f"/admin/newsletters/{newsletter.id}")
    client.post(f"/admin/newsletters/{newsletter.id}/archive", data={"csrf_token": archive_token})
    db.session.expire_all()
    newsletter = db.session.scalars(select(Newsletter)).one()
    assert newsletter.name == "Kyiv Weekly Digest" and newsletter.archived
    # An archived newsletter takes no signups.
    assert (
        client.post(
            "/subscribe", data={"email": "r@example.com", "newsletter": "kyiv-weekly"}
        ).status_code
        == 422
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("slug", "Not A Slug", "Use lower-case letters, digits and dashes."),
        ("name", "Weekly\r\nBcc: victim@example.com", "Use a single line."),
        ("from_address", "not-an-address", "Invalid email address."),
        ("name", "", "This field is required."),
        ("reply_to", "réponse@example.org", "part before the @ is plain ASCII"),
        ("from_address", "rédaction@news.example.org", "part before the @ is plain ASCII"),
    ],
    ids=["bad-slug", "header-injection", "bad-from", "missing-name", "utf8-reply", "utf8-from"],
)
def test_bad_newsletter_input_is_shown_and_nothing_stored(client, db, admin, field, value, message):
    sign_in(client)
    form = {
        "csrf_token": csrf_token(client, "/admin/newsletters/new"),
        "name": "Weekly",
        "slug": "weekly",
        "cadence": "weekly",
        "prompt_text": "p",
        "button_text": "b",
        "thanks_text": "t",
        field: value,
    }
    response = client.post("/admin/newsletters/new", data=form)
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    assert db.session.scalars(select(Newsletter)).all() == []


def test_a_sender_on_an_international_domain_is_kept_in_its_ascii_form(client, db, admin, mailbox):
    sign_in(client)
    form = {
        "csrf_token": csrf_token(client, "/admin/newsletters/new"),
        "name": "Київ",
        "slug": "kyiv",
        "cadence": "weekly",
        "from_address": "desk@Київ.укр",
        "reply_to": "Reply@Пошта.укр",
        "prompt_text": "p",
        "button_text": "b",
        "thanks_text": "t",
    }
    assert client.post("/admin/newsletters/new", data=form).status_code == 302
    newsletter = db.session.scalars(select(Newsletter)).one()
    assert newsletter.from_address == "desk@xn--b1alf1j.xn--j1amh"
    assert newsletter.reply_to == "Reply@" + idna.encode("пошта.укр").decode()
    # A confirmation from it goes out, headers in ASCII.
    client.post("/subscribe", data={"email": "reader@example.com", "newsletter": "kyiv"})
    [mail] = mailbox.deliver()
    assert "desk@xn--b1alf1j.xn--j1amh" in mail["From"]


def test_duplicate_slug_is_refused(client, db, admin, newsletters):
    sign_in(client)
    form = {
        "csrf_token": csrf_token(client, "/admin/newsletters/new"),
        "name": "Again",
        "slug": "daily",
        "cadence": "daily",
        "prompt_text": "p",
        "button_text": "b",
        "thanks_text": "t",
    }
    response = client.post("/admin/newsletters/new", data=form)
    assert response.status_code == 422
    assert "Another newsletter has this slug." in response.get_data(as_text=True)
    assert len(db.session.scalars(select(Newsletter)).all()) == 3


def test_editors_see_newsletters_but_cannot_change_them(client, db, editor, newsletters):
    sign_in(client, "writer@news.example.org")
    assert client.get("/admin/newsletters").status_code == 200
    assert client.get("/admin/newsletters/1").status_code == 200
    assert client.get("/admin/newsletters/new").status_code == 403
    token = csrf_token(client, "/admin/newsletters/1")
    refused = client.post("/admin/newsletters/1/archive", data={"csrf_token": token})
    assert refused.status_code == 403
    assert "Your account does not have access to this page." in refused.get_data(as_text=True)
    db.session.expire_all()
    assert not db.session.get(Newsletter, 1).archived


def test_create_admin_command(app, db):
    from newsletter.cli import cli

    runner = app.test_cli_runner()
    made = runner.invoke(
        cli,
        [
            "create-admin",
            "Boss@News.Example.org",
            "--password",
            "a long enough password",
            "--role",
            "editor",
        ],
    )
    assert made.exit_code == 0, made.output
    assert "Account boss@news.example.org created (editor)." in made.output
    again = runner.invoke(
        cli, ["create-admin", "boss@news.example.org", "--password", "a long enough password"]
    )
    assert again.exit_code == 1 and "already an account" in again.output
    short = runner.invoke(cli, ["create-admin", "x@news.example.org", "--password", "short"])
    assert short.exit_code == 1 and "at least 10 characters" in short.output
    prompted = runner.invoke(
        cli,
        ["create-admin", "y@news.example.org"],
        input="a long enough password\na long enough password\n",
    )
    assert prompted.exit_code == 0, prompted.output
    assert {u.email for u in db.session.scalars(select(AdminUser))} == {
        "boss@news.example.org",
        "y@news.example.org",
    }


def test_dashboard_shows_counts_activity_and_growth(client, db, mailbox, admin, newsletters):
    from factories import links, signup

    for n in range(3):
        signup(client, f"reader{n}@example.com", "daily")
    (first, *_rest) = mailbox.deliver()
    client.post(links(first, "/confirm/")[0])
    sign_in(client)
    page = client.get("/admin/").get_data(as_text=True)
    row = page.split("Daily Briefing</a></th>")[1].split("</tr>")[0]
    cells = [c.split("</td>")[0] for c in row.split("<td>")[1:]]
    # pending, confirmed, unsubscribed, bounced, then signups 24h/7d/30d, unsubscribes.
    assert cells == ["2", "1", "0", "0", "3", "3", "3", "0", "0", "0"]
    assert "<svg" in page and 'role="img"' in page
    assert "Confirmed subscribers, last 90 days" in page
    assert page.count("<tr><td>20") == 90  # the chart's numbers as a table, one row a day


def test_editors_see_the_dashboard(client, editor, newsletters):
    sign_in(client, "writer@news.example.org")
    page = client.get("/admin/")
    assert page.status_code == 200 and "Daily Briefing" in page.get_data(as_text=True)


def test_from_address_must_align_with_the_dkim_domain(app, client, db, admin, tmp_path):
    from newsletter.mail.dkim import generate

    pem, _, _ = generate("sel", "news.example.org")
    (tmp_path / "dkim.pem").write_bytes(pem)
    app.config.update(
        DKIM_PRIVATE_KEY=str(tmp_path / "dkim.pem"),
        DKIM_SELECTOR="sel",
        DKIM_DOMAIN="news.example.org",
    )
    sign_in(client)
    form = {
        "csrf_token": csrf_token(client, "/admin/newsletters/new"),
        "name": "Weekly",
        "slug": "weekly",
        "cadence": "weekly",
        "prompt_text": "p",
        "button_text": "b",
        "thanks_text": "t",
        "from_address": "weekly@elsewhere.example.com",
    }
    refused = client.post("/admin/newsletters/new", data=form)
    assert refused.status_code == 422
    assert "DKIM-signed as news.example.org" in refused.get_data(as_text=True)
    assert db.session.scalars(select(Newsletter)).all() == []
    form["from_address"] = "weekly@news.example.org"
    assert client.post("/admin/newsletters/new", data=form).status_code == 302

"""Admin accounts managed in the admin: admins only, every change audited, the CLI beside it."""

from __future__ import annotations

import html
import re

import pytest
from flask import g
from flask.testing import FlaskClient
from sqlalchemy import select

from newsletter.cli import cli
from newsletter.models import AdminUser, AuditEvent

from factories import PASSWORD, csrf_token, make_admin, sign_in

OWNER = "editor@news.example.org"  # the `admin` fixture's account
WRITER = "writer@news.example.org"  # the `editor` fixture's account
NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture(autouse=True)
def _each_request_loads_its_user(app):  # type: ignore[no-untyped-def]
    """Each request loads its user from its own cookie, as a server does."""

    @app.before_request
    def _forget_user() -> None:
        g.pop("_login_user", None)
        g.pop("csrf_token", None)


def text(response) -> str:  # type: ignore[no-untyped-def]
    return html.unescape(response.get_data(as_text=True))


def post(client: FlaskClient, path: str, data: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return client.post(path, data={"csrf_token": csrf_token(client, "/admin/"), **(data or {})})


def account(db, email: str) -> AdminUser:  # type: ignore[no-untyped-def]
    db.session.expire_all()
    found = db.session.scalar(select(AdminUser).where(AdminUser.email == email))
    assert found is not None
    return found


def audit(db) -> list[tuple[str, int | None, str]]:  # type: ignore[no-untyped-def]
    db.session.expire_all()
    return [
        (e.action, e.admin_user_id, e.detail.get("account"))
        for e in db.session.scalars(select(AuditEvent).order_by(AuditEvent.id))
    ]


def login(client: FlaskClient, email: str, password: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/admin/login",
        data={"email": email, "password": password, "csrf_token": csrf_token(client)},
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/admin/accounts"),
        ("post", "/admin/accounts"),
        ("get", "/admin/accounts/1"),
        ("post", "/admin/accounts/1"),
        ("post", "/admin/accounts/1/deactivate"),
        ("post", "/admin/accounts/1/reactivate"),
    ],
    ids=["list", "add", "one", "reset", "deactivate", "reactivate"],
)
def test_editors_get_403_on_every_accounts_page(client, db, admin, editor, method, path):
    sign_in(client, WRITER)
    assert "/admin/accounts" not in text(client.get("/admin/"))
    if method == "get":
        response = client.get(path)
    else:
        response = post(client, path, {"email": "x@news.example.org", "role": "admin"})
    assert response.status_code == 403
    assert account(db, OWNER).active
    assert len(db.session.scalars(select(AdminUser)).all()) == 2
    assert audit(db) == []


def test_strangers_are_sent_to_sign_in(client, admin):
    response = client.get("/admin/accounts")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login")


def test_an_admin_lists_the_accounts(client, db, admin, editor):
    sign_in(client)
    page = text(client.get("/admin/"))
    assert '<a href="/admin/accounts">Accounts</a>' in page
    response = client.get("/admin/accounts")
    assert response.status_code == 200
    page = text(response)
    assert f'href="/admin/accounts/{admin.id}">{OWNER}</a> <span class="small">(you)</span>' in page
    assert f'href="/admin/accounts/{editor.id}">{WRITER}</a>' in page


def test_an_admin_adds_an_editor_with_an_initial_password(client, db, admin):
    sign_in(client)
    response = post(
        client,
        "/admin/accounts",
        {"email": "New.Editor@News.example.org", "role": "editor", "password": NEW_PASSWORD},
    )
    assert response.status_code == 200
    assert (
        "<strong>new.editor@news.example.org</strong> is added with the password you gave."
        in text(response)
    )
    added = account(db, "new.editor@news.example.org")
    assert added.role == "editor" and added.active
    assert audit(db) == [("account-added", admin.id, "new.editor@news.example.org")]
    assert login(FlaskClient(client.application), added.email, NEW_PASSWORD).status_code == 302


def test_an_admin_adds_an_admin_with_a_set_password_link(app, client, db, admin):
    sign_in(client)
    response = post(client, "/admin/accounts", {"email": "boss@news.example.org", "role": "admin"})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    match = re.search(
        r'<code id="password-link">https?://[^/]+(/admin/set-password/[^<]+)</code>', text(response)
    )
    assert match is not None
    link = match.group(1)
    added = account(db, "boss@news.example.org")
    assert added.role == "admin"
    detail = db.session.scalar(
        select(AuditEvent.detail).where(AuditEvent.action == "account-added")
    )
    assert detail == {
        "account": added.email,
        "account_id": added.id,
        "role": "admin",
        "password": "link",
    }

    owner = app.test_client()
    page = owner.get(link)
    assert page.status_code == 200
    assert "For the account boss@news.example.org." in text(page)
    too_short = owner.post(
        link, data={"new": "short", "again": "short", "csrf_token": csrf_token(owner, link)}
    )
    assert too_short.status_code == 400
    chosen = owner.post(
        link,
        data={"new": NEW_PASSWORD, "again": NEW_PASSWORD, "csrf_token": csrf_token(owner, link)},
    )
    assert chosen.status_code == 302 and chosen.headers["Location"] == "/admin/login"
    assert login(app.test_client(), added.email, NEW_PASSWORD).status_code == 302
    assert audit(db)[-1] == ("account-password-set", added.id, added.email)
    # The link works once.
    again = owner.get(link)
    assert again.status_code == 410
    assert "used or replaced already" in text(again)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"email": "not an address", "role": "editor"}, "is not a valid email address"),
        ({"email": WRITER, "role": "editor"}, f"There is already an account for {WRITER}."),
        (
            {"email": "x@news.example.org", "role": "editor", "password": "short"},
            "needs at least 10",
        ),
        ({"email": "x@news.example.org", "role": "owner"}, "Not a valid choice"),
    ],
    ids=["bad-address", "taken", "short-password", "unknown-role"],
)
def test_a_refused_account_says_why(client, db, admin, editor, fields, message):
    sign_in(client)
    response = post(client, "/admin/accounts", fields)
    assert response.status_code == 422
    assert message in text(response)
    assert len(db.session.scalars(select(AdminUser)).all()) == 2
    assert audit(db) == []


def test_reset_with_a_password_ends_the_accounts_sessions(app, client, db, admin, editor):
    writer = app.test_client()
    sign_in(writer, WRITER)
    assert writer.get("/admin/digests").status_code == 200
    sign_in(client)
    response = post(client, f"/admin/accounts/{editor.id}", {"password": NEW_PASSWORD})
    assert response.status_code == 302
    assert "New password set for writer@news.example.org" in text(
        client.get(response.headers["Location"])
    )
    assert writer.get("/admin/digests").status_code == 302
    assert login(app.test_client(), WRITER, PASSWORD).status_code == 401
    assert login(app.test_client(), WRITER, NEW_PASSWORD).status_code == 302
    assert audit(db) == [("account-reset", admin.id, WRITER)]


def test_reset_with_a_link_shows_it_once_and_the_old_password_stops(app, client, db, admin, editor):
    sign_in(client)
    first = post(client, f"/admin/accounts/{editor.id}")
    assert first.status_code == 200
    old_link = re.search(r'/admin/set-password/[^<"]+', text(first)).group(0)  # type: ignore[union-attr]
    assert login(app.test_client(), WRITER, PASSWORD).status_code == 401
    second = post(client, f"/admin/accounts/{editor.id}")
    new_link = re.search(r'/admin/set-password/[^<"]+', text(second)).group(0)  # type: ignore[union-attr]
    # A second reset replaces the first link.
    assert app.test_client().get(old_link).status_code == 410
    assert app.test_client().get(new_link).status_code == 200
    assert [a for a, _, _ in audit(db)] == ["account-reset", "account-reset"]


def test_deactivation_ends_the_accounts_sessions_and_reactivation_opens_it(
    app, client, db, admin, editor
):
    writer = app.test_client()
    sign_in(writer, WRITER)
    sign_in(client)
    response = post(client, f"/admin/accounts/{editor.id}/deactivate")
    assert response.status_code == 302
    assert "is deactivated and signed out everywhere" in text(
        client.get(response.headers["Location"])
    )
    assert not account(db, WRITER).active
    assert writer.get("/admin/digests").status_code == 302
    assert login(app.test_client(), WRITER, PASSWORD).status_code == 401
    listing = text(client.get("/admin/accounts"))
    assert "deactivated" in listing

    post(client, f"/admin/accounts/{editor.id}/reactivate")
    assert account(db, WRITER).active
    assert login(app.test_client(), WRITER, PASSWORD).status_code == 302
    assert audit(db) == [
        ("account-deactivated", admin.id, WRITER),
        ("account-reactivated", admin.id, WRITER),
    ]
    events = text(client.get("/admin/accounts"))
    assert "reactivated" in events and "deactivated" in events


def test_an_admin_cannot_deactivate_their_own_account(client, db, admin):
    make_admin("second@news.example.org")
    sign_in(client)
    response = post(client, f"/admin/accounts/{admin.id}/deactivate")
    assert "You cannot deactivate your own account." in text(
        client.get(response.headers["Location"])
    )
    assert account(db, OWNER).active
    assert audit(db) == []


def test_the_last_active_admin_stays_open(client, db, admin):
    other = make_admin("second@news.example.org")
    sign_in(client)
    post(client, f"/admin/accounts/{other.id}/deactivate")
    assert not account(db, "second@news.example.org").active
    # Now `admin` is the last one; even another admin's session could not close it.
    from newsletter import accounts as rules

    with pytest.raises(rules.AccountError, match="last active admin"):
        rules.deactivate(db.session, account(db, OWNER), by=other.id)


def test_the_command_line_still_adds_accounts_and_is_audited(runner, db):
    result = runner.invoke(
        cli,
        [
            "create-admin",
            "cli@news.example.org",
            "--password",
            NEW_PASSWORD,
            "--role",
            "editor",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Account cli@news.example.org created (editor)." in result.output
    assert audit(db) == [("account-added", None, "cli@news.example.org")]

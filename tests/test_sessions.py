"""Admin sessions end on the server, and sign-in throttling cannot lock the owner out."""

from __future__ import annotations

import pytest
from flask import g
from flask.testing import FlaskClient

from newsletter import accounts
from newsletter.models import AdminUser
from newsletter.web.admin.auth import TOO_MANY_EVERYWHERE, TOO_MANY_HERE

from factories import PASSWORD, csrf_token, make_admin, sign_in

EXPORT = "/admin/subscribers/export.csv"
OWNER = "editor@news.example.org"


@pytest.fixture(autouse=True)
def _each_request_loads_its_user(app):  # type: ignore[no-untyped-def]
    """The app fixture keeps one app context (and `g`) for the whole test; a server starts each
    request afresh: the signed-in user and the CSRF token come from each browser's cookie."""

    @app.before_request
    def _forget_user() -> None:
        g.pop("_login_user", None)
        g.pop("csrf_token", None)


def _login(client: FlaskClient, email: str, password: str, address: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/admin/login",
        data={"email": email, "password": password, "csrf_token": csrf_token(client)},
        environ_base={"REMOTE_ADDR": address},
    )


def _copied_cookie(app, client: FlaskClient) -> FlaskClient:  # type: ignore[no-untyped-def]
    """Another browser holding a copy of `client`'s session cookie."""
    cookie = client.get_cookie("session")
    assert cookie is not None
    thief = app.test_client()
    thief.set_cookie("session", cookie.value)
    return thief


def test_export_url_is_the_one_a_copied_cookie_would_open(client, admin):
    sign_in(client)
    response = client.get(EXPORT)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"


def test_a_copied_session_cookie_opens_nothing_after_sign_out(app, client, admin):
    sign_in(client)
    thief = _copied_cookie(app, client)
    assert thief.get(EXPORT).status_code == 200
    client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin/")})
    replayed = thief.get(EXPORT)
    assert replayed.status_code == 302
    assert replayed.headers["Location"].startswith("/admin/login")


def test_changing_the_password_signs_out_every_other_browser(app, client, db, admin):
    sign_in(client)
    other = app.test_client()
    sign_in(other)
    page = client.get("/admin/password")
    assert page.status_code == 200 and "Change password" in page.get_data(as_text=True)
    token = csrf_token(client, "/admin/password")
    wrong = client.post(
        "/admin/password",
        data={"csrf_token": token, "current": "nope", "new": "x" * 12, "again": "x" * 12},
    )
    assert wrong.status_code == 401
    assert "That is not your current password." in wrong.get_data(as_text=True)
    changed = client.post(
        "/admin/password",
        data={
            "csrf_token": token,
            "current": PASSWORD,
            "new": "a new long passphrase",
            "again": "a new long passphrase",
        },
    )
    assert changed.status_code == 302
    # This browser goes on; the other one is out.
    assert client.get(EXPORT).status_code == 200
    assert other.get(EXPORT).status_code == 302
    assert _login(app.test_client(), OWNER, "a new long passphrase", "192.0.2.1").status_code == 302


def test_a_deactivated_account_is_signed_out_and_cannot_sign_in(app, client, db, admin):
    make_admin("other-admin@news.example.org")  # the last admin is never closed
    sign_in(client)
    thief = _copied_cookie(app, client)
    accounts.deactivate(db.session, db.session.get(AdminUser, admin.id))
    assert client.get(EXPORT).status_code == 302
    assert thief.get(EXPORT).status_code == 302
    assert _login(app.test_client(), OWNER, PASSWORD, "192.0.2.1").status_code == 401


def test_a_cookie_from_before_the_session_tokens_opens_nothing(app, admin):
    # Such a cookie names the account by its bare id.
    client = app.test_client()
    with client.session_transaction() as session:
        session["_user_id"] = str(admin.id)
        session["_fresh"] = True
    assert client.get(EXPORT).status_code == 302


@pytest.fixture
def app_config() -> dict[str, object]:
    return {
        "LOGIN_RATE_LIMIT": "5 per minute;30 per day",
        "LOGIN_ADDRESS_RATE_LIMIT": "20 per minute;200 per day",
        "LOGIN_ACCOUNT_RATE_LIMIT": "200 per hour;1000 per day",
    }


def test_wrong_passwords_from_ten_places_do_not_lock_out_the_owner(app, admin):
    refused = limited = 0
    for place in range(10):
        attacker = app.test_client()
        for _ in range(10):
            status = _login(attacker, OWNER, "guess", f"198.51.100.{place}").status_code
            refused += status == 401
            limited += status == 429
    assert refused + limited == 100
    # Each place gets its five tries a minute at this account, then waits.
    assert (refused, limited) == (50, 50)
    owner = app.test_client()
    response = _login(owner, OWNER, PASSWORD, "203.0.113.7")
    assert response.status_code == 302
    assert owner.get("/admin/").status_code == 200


def test_the_place_that_guessed_is_told_why_it_waits(app, admin):
    client = app.test_client()
    for _ in range(5):
        assert _login(client, OWNER, "guess", "198.51.100.1").status_code == 401
    blocked = _login(client, OWNER, PASSWORD, "198.51.100.1")
    assert blocked.status_code == 429
    assert TOO_MANY_HERE in blocked.get_data(as_text=True).replace("\n", " ")
    assert "Retry-After" in blocked.headers


def test_many_places_guessing_meet_the_slower_limit_on_the_account(app, admin):
    app.config["LOGIN_ACCOUNT_RATE_LIMIT"] = "12 per hour"
    for place in range(4):
        client = app.test_client()
        for _ in range(3):
            assert _login(client, OWNER, "guess", f"198.51.100.{place}").status_code == 401
    locked = _login(app.test_client(), OWNER, PASSWORD, "203.0.113.7")
    assert locked.status_code == 429
    assert TOO_MANY_EVERYWHERE in locked.get_data(as_text=True).replace("\n", " ")


def test_one_place_trying_many_accounts_is_limited(app, admin):
    app.config["LOGIN_ADDRESS_RATE_LIMIT"] = "3 per minute"
    client = app.test_client()
    for n in range(3):
        _login(client, f"someone{n}@news.example.org", "guess", "198.51.100.5")
    assert _login(client, OWNER, PASSWORD, "198.51.100.5").status_code == 429
    assert _login(app.test_client(), OWNER, PASSWORD, "198.51.100.6").status_code == 302


def test_a_successful_sign_in_uses_up_nothing(app):
    make_admin(OWNER)
    for _ in range(8):
        client = app.test_client()
        assert _login(client, OWNER, PASSWORD, "198.51.100.8").status_code == 302


@pytest.mark.parametrize(
    "email", ["editor\x00@news.example.org", "\x00", "editor@news.example.org\x00"]
)
def test_a_nul_in_the_address_is_a_wrong_sign_in_not_a_server_error(client, admin, email):
    # PostgreSQL refuses a NUL in any text it is asked to compare.
    response = _login(client, email, PASSWORD, "192.0.2.1")
    assert response.status_code == 401
    assert "Wrong email or password." in response.get_data(as_text=True)


def test_sign_out_clears_a_remember_cookie_the_browser_still_sends(client, admin):
    sign_in(client)
    # Nobody is remembered here, but a browser may keep a remember cookie from elsewhere on
    # the site's domain: signing out still ends it.
    client.set_cookie("remember_token", "1|stale")
    response = client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin/")})
    assert response.status_code == 302
    cleared = [h for h in response.headers.getlist("Set-Cookie") if h.startswith("remember_token=")]
    assert cleared and "Expires=Thu, 01 Jan 1970" in cleared[0]


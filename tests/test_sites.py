"""Allowed host sites: listed by admins, answered across origins, and readers sent back."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from newsletter import create_app
from newsletter.config import ConfigError
from newsletter.models import AllowedOrigin, AuditEvent, Subscription

from factories import apply_signups, csrf_token, make_config, sign_in

SITE = "https://site.example"
EVIL = "https://evil.example"


@pytest.fixture
def app_config() -> dict[str, object]:
    return {"ALLOWED_ORIGINS": ["https://configured.example"]}


@pytest.fixture
def admin_client(client, admin):  # type: ignore[no-untyped-def]
    sign_in(client)
    return client


def add_site(client, origin: str, note: str = ""):  # type: ignore[no-untyped-def]
    token = csrf_token(client, "/admin/sites")
    return client.post("/admin/sites", data={"origin": origin, "note": note, "csrf_token": token})


def cors_origin(client, origin: str) -> str | None:  # type: ignore[no-untyped-def]
    """What the API's answer lets a page on `origin` read."""
    response = client.get("/api/v1/newsletters", headers={"Origin": origin})
    assert "Origin" in response.headers["Vary"]
    return response.headers.get("Access-Control-Allow-Origin")


def audit(db) -> list[tuple[str, dict]]:  # type: ignore[no-untyped-def]
    rows = db.session.scalars(select(AuditEvent).order_by(AuditEvent.id))
    return [(row.action, row.detail) for row in rows]


# The admin page


def test_admin_lists_a_site_and_its_pages_are_answered_at_once(admin_client, db, admin):
    assert cors_origin(admin_client, SITE) is None
    response = add_site(admin_client, "https://Site.Example/", "Partner: Site Daily")
    assert response.status_code == 302 and response.headers["Location"] == "/admin/sites"
    page = admin_client.get("/admin/sites").get_data(as_text=True)
    assert "https://site.example is listed" in page
    assert "Partner: Site Daily" in page and admin.email in page
    row = db.session.scalars(select(AllowedOrigin)).one()
    assert (row.origin, row.note, row.added_by_id) == (SITE, "Partner: Site Daily", admin.id)
    assert audit(db) == [("site-allowed", {"origin": SITE, "note": "Partner: Site Daily"})]
    # No restart: the next request of this process answers the new site.
    assert cors_origin(admin_client, SITE) == SITE
    assert cors_origin(admin_client, EVIL) is None


def test_admin_removes_a_site_and_it_is_no_longer_answered(admin_client, db, admin):
    add_site(admin_client, SITE, "trial")
    assert cors_origin(admin_client, SITE) == SITE
    row = db.session.scalars(select(AllowedOrigin)).one()
    token = csrf_token(admin_client, "/admin/sites")
    response = admin_client.post(f"/admin/sites/{row.id}/remove", data={"csrf_token": token})
    assert response.status_code == 302
    assert "https://site.example is no longer listed." in admin_client.get("/admin/sites").get_data(
        as_text=True
    )
    assert db.session.scalar(select(func.count()).select_from(AllowedOrigin)) == 0
    assert [action for action, _ in audit(db)] == ["site-allowed", "site-removed"]
    assert cors_origin(admin_client, SITE) is None


@pytest.mark.parametrize(
    ("origin", "message"),
    [
        ("site.example", "Enter the site&#39;s origin, such as https://news.example.org"),
        ("https://site.example/news/story", "the site&#39;s origin is https://site.example"),
        ("javascript:alert(1)", "Enter the site&#39;s origin"),
        ("https://editor@site.example", "no user name or password"),
        ("", "Enter the site&#39;s origin."),
        ("https://configured.example", "allowed already by NEWSLETTER_ALLOWED_ORIGINS"),
    ],
    ids=["no-scheme", "page", "javascript", "userinfo", "empty", "configured"],
)
def test_what_is_not_a_listable_origin_is_refused_clearly(admin_client, db, origin, message):
    response = add_site(admin_client, origin)
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    assert db.session.scalar(select(func.count()).select_from(AllowedOrigin)) == 0
    assert audit(db) == []


def test_a_site_is_listed_once(admin_client, db):
    add_site(admin_client, SITE)
    response = add_site(admin_client, "HTTPS://SITE.EXAMPLE:443")
    assert response.status_code == 422
    assert "https://site.example is listed already." in response.get_data(as_text=True)
    assert db.session.scalar(select(func.count()).select_from(AllowedOrigin)) == 1


def test_the_page_shows_the_configured_sites_apart(admin_client):
    page = admin_client.get("/admin/sites").get_data(as_text=True)
    assert "Allowed by the server" in page and "https://configured.example" in page
    assert 'href="/admin/sites"' in page  # the nav link


def test_listing_needs_a_csrf_token(app, client, db, admin):
    sign_in(client)
    response = client.post("/admin/sites", data={"origin": SITE})
    assert response.status_code == 400
    assert db.session.scalar(select(func.count()).select_from(AllowedOrigin)) == 0


def test_editors_cannot_see_or_change_the_sites(client, db, editor):
    sign_in(client, editor.email)
    assert client.get("/admin/sites").status_code == 403
    assert client.post("/admin/sites", data={"origin": SITE}).status_code in (400, 403)
    assert 'href="/admin/sites"' not in client.get("/admin/").get_data(as_text=True)
    assert db.session.scalar(select(func.count()).select_from(AllowedOrigin)) == 0


def test_a_site_listed_by_another_process_is_answered_after_the_cache(app, client, db):
    app.config["ALLOWED_ORIGINS_CACHE_SECONDS"] = 3600
    assert cors_origin(client, SITE) is None
    # As another web process would: a row, and no word to this process.
    db.session.add(AllowedOrigin(origin=SITE))
    db.session.commit()
    assert cors_origin(client, SITE) is None
    app.config["ALLOWED_ORIGINS_CACHE_SECONDS"] = 0
    with app.test_request_context():
        from newsletter.web import cors

        cors.forget()
    assert cors_origin(client, SITE) == SITE


def test_with_no_cache_every_request_reads_the_list(app, client, db):
    app.config["ALLOWED_ORIGINS_CACHE_SECONDS"] = 0
    cors_origin(client, SITE)
    db.session.add(AllowedOrigin(origin=SITE))
    db.session.commit()
    assert cors_origin(client, SITE) == SITE


def test_a_setting_that_is_not_an_origin_stops_the_start(database_url, tmp_path):
    config = make_config(database_url, tmp_path / "i", ALLOWED_ORIGINS=["site.example"])
    with pytest.raises(ConfigError, match="NEWSLETTER_ALLOWED_ORIGINS: 'site.example'"):
        create_app(config)


# The newsletter page's snippet section


def test_snippet_section_warns_about_a_site_not_listed(admin_client, newsletters):
    daily = newsletters[0]
    page = admin_client.get(f"/admin/newsletters/{daily.id}?site=https://Site.Example/")
    text = page.get_data(as_text=True)
    assert "Site this snippet is for" in text
    assert "<code>https://site.example</code> is not listed." in text
    assert 'href="/admin/sites?origin=https://site.example"' in text
    form = admin_client.get("/admin/sites?origin=https://site.example").get_data(as_text=True)
    assert 'value="https://site.example"' in form

    add_site(admin_client, SITE)
    text = admin_client.get(f"/admin/newsletters/{daily.id}?site={SITE}").get_data(as_text=True)
    assert "<code>https://site.example</code> is allowed" in text
    assert "is not listed" not in text


def test_snippet_section_says_what_is_not_an_origin(admin_client, newsletters):
    page = admin_client.get(f"/admin/newsletters/{newsletters[0].id}?site=site.example/news")
    text = page.get_data(as_text=True)
    assert page.status_code == 200
    assert 'aria-invalid="true"' in text
    assert "Enter the site&#39;s origin" in text


def test_snippet_section_knows_the_configured_sites(admin_client, newsletters):
    page = admin_client.get(
        f"/admin/newsletters/{newsletters[0].id}?site=https://configured.example"
    )
    assert "<code>https://configured.example</code> is allowed" in page.get_data(as_text=True)


def test_editors_are_told_to_ask_an_admin(client, editor, newsletters):
    sign_in(client, editor.email)
    page = client.get(f"/admin/newsletters/{newsletters[0].id}?site={SITE}")
    text = page.get_data(as_text=True)
    assert "is not listed" in text and "Ask an admin to list it at Sites." in text
    assert "/admin/sites?origin=" not in text


# Readers sent back by a plain form post


def post_box(client, return_to: str, email: str = "reader@example.com"):  # type: ignore[no-untyped-def]
    """Post a box of the site, then let the worker apply the signup."""
    response = client.post(
        "/subscribe",
        data={"email": email, "newsletter": "daily", "return_to": return_to},
        headers={"Origin": SITE},
    )
    apply_signups()
    return response


def test_a_box_on_an_allowed_site_sends_the_reader_back(app, client, db, newsletters):
    db.session.add(AllowedOrigin(origin=SITE))
    db.session.commit()
    response = post_box(client, "https://site.example/news/moldova?utm=box#signup")
    assert response.status_code == 303
    assert response.headers["Location"] == "https://site.example/news/moldova?utm=box#signup"
    assert [s.status for s in db.session.scalars(select(Subscription))] == ["pending"]


@pytest.mark.parametrize(
    "return_to",
    [
        "//evil.example/",
        "https://evil.example/",
        "javascript:alert(1)",
        "https://site.example\\@evil.example/",
        "/\\evil.example",
        "https://site.example@evil.example/",
        "https://site.example.evil.example/",
        "http://site.example/",
        "https://site.example/\r\nSet-Cookie: a=b",
    ],
    ids=[
        "scheme-relative",
        "other-site",
        "javascript",
        "backslash",
        "slash-backslash",
        "userinfo",
        "suffix",
        "other-scheme",
        "crlf",
    ],
)
def test_any_other_address_gets_our_own_thank_you_page(client, db, newsletters, return_to):
    db.session.add(AllowedOrigin(origin=SITE))
    db.session.commit()
    response = post_box(client, return_to)
    assert response.status_code == 200
    assert "Location" not in response.headers
    assert "Successfully subscribed" in response.get_data(as_text=True)
    assert [s.status for s in db.session.scalars(select(Subscription))] == ["pending"]


def test_a_site_not_listed_gets_our_thank_you_page(client, db, newsletters):
    response = post_box(client, "https://site.example/news/moldova")
    assert response.status_code == 200 and "Location" not in response.headers
    assert "Successfully subscribed" in response.get_data(as_text=True)


def test_a_configured_site_gets_its_reader_back(client, newsletters):
    response = post_box(client, "https://configured.example/a")
    assert response.status_code == 303
    assert response.headers["Location"] == "https://configured.example/a"


def test_a_bad_address_stays_on_our_page_with_the_error(client, db, newsletters):
    db.session.add(AllowedOrigin(origin=SITE))
    db.session.commit()
    response = post_box(client, "https://site.example/news", email="not-an-address")
    assert response.status_code == 422
    assert "Location" not in response.headers
    assert "Please, enter correct email address" in response.get_data(as_text=True)
    assert db.session.scalar(select(func.count()).select_from(Subscription)) == 0


def test_scripts_get_json_whatever_the_return_address(client, db, newsletters):
    db.session.add(AllowedOrigin(origin=SITE))
    db.session.commit()
    response = client.post(
        "/subscribe",
        json={"email": "reader@example.com", "newsletter": ["daily"], "return_to": SITE + "/"},
        headers={"Origin": SITE},
    )
    assert response.status_code == 200 and response.json["ok"] is True
    assert response.headers["Access-Control-Allow-Origin"] == SITE

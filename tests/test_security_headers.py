"""Security headers on every response, and templates that need no inline script or style."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from newsletter import create_app
from newsletter.digests import states
from newsletter.models import Item
from tests.test_digests import add_item, add_reader

from factories import make_newsletter, sign_in

TEMPLATES = Path(__file__).parent.parent / "templates"


def csp(response) -> dict[str, str]:  # type: ignore[no-untyped-def]
    policy = response.headers["Content-Security-Policy"]
    return {
        part.split(" ", 1)[0]: part.split(" ", 1)[1] if " " in part else ""
        for part in (p.strip() for p in policy.split(";"))
        if part
    }


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/admin/login",
        "/confirm/broken",
        "/api/v1/newsletters",
        "/healthz",
        "/nowhere",
        "/archive/daily",
        "/archive/daily/feed.atom",
    ],
)
def test_every_response_carries_the_headers(client, newsletters, path):
    response = client.get(path)
    directives = csp(response)
    assert "'unsafe-inline'" not in directives["script-src"]
    assert re.fullmatch(r"'self'( 'nonce-[A-Za-z0-9_-]{16,}')?", directives["script-src"])
    assert directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")


def test_an_edition_on_the_web_is_the_mail_under_a_policy_of_its_own(db, client, newsletters):
    daily = newsletters[0]
    add_item(db, daily, "Story")
    add_reader(db, daily, "reader@example.com")
    digest = states.compose(db.session, daily)
    states.start(db.session, digest)
    db.session.refresh(digest)
    response = client.get(f"/archive/daily/{digest.id}-{digest.started_at.date().isoformat()}")
    assert response.status_code == 200
    directives = csp(response)
    # No script at all; the mail's inline styles; framed by nobody.
    assert directives["default-src"] == "'none'"
    assert "script-src" not in directives
    assert directives["style-src"] == "'unsafe-inline'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["form-action"] == "'none'"
    assert response.headers["X-Frame-Options"] == "DENY"


def _digest_in_progress(client, db) -> str:  # type: ignore[no-untyped-def]
    """Signed in, with a digest on its way: its admin page, which writes a <style> element."""
    sign_in(client)
    daily = make_newsletter("daily")
    add_item(db, daily, "Story")
    add_reader(db, daily, "reader@example.com")
    digest = states.compose(db.session, daily)
    states.start(db.session, digest)
    return f"/admin/digests/{digest.id}"


def test_each_request_gets_its_own_nonce(client, db, admin):
    page = _digest_in_progress(client, db)
    first = csp(client.get(page))["style-src"]
    second = csp(client.get(page))["style-src"]
    assert "'nonce-" in first and "'nonce-" in second
    assert first != second


def test_a_page_that_writes_no_element_of_its_own_allows_none(client, newsletters):
    response = client.get("/")
    directives = csp(response)
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert "nonce=" not in response.get_data(as_text=True)


def test_no_hsts_when_the_site_is_not_served_over_https(tmp_path):
    app = create_app(
        {
            "ENV": "development",
            "INSTANCE_PATH": str(tmp_path),
            "BASE_URL": "http://127.0.0.1:5000",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'dev.db'}",
        }
    )
    response = app.test_client().get("/healthz")
    assert "Strict-Transport-Security" not in response.headers
    assert "Content-Security-Policy" in response.headers


def test_pages_with_personal_data_are_not_kept_in_caches(client, db, admin, newsletters):
    assert "no-store" not in client.get("/").headers.get("Cache-Control", "")
    assert client.get("/confirm/broken").headers["Cache-Control"] == "no-store"
    assert client.get("/preferences/broken").headers["Cache-Control"] == "no-store"
    sign_in(client)
    for path in ("/admin/", "/admin/subscribers", "/admin/subscribers/export.csv"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["Cache-Control"] == "no-store", path


def test_only_the_digest_preview_is_framed_and_only_by_the_admin(client, db, admin, newsletters):
    sign_in(client)
    daily = newsletters[0]
    item = Item(guid="g1", title="Story", url="https://news.example.org/story")
    item.newsletters.append(daily)
    db.session.add(item)
    db.session.commit()
    digest = states.compose(db.session, daily)
    page = client.get(f"/admin/digests/{digest.id}/preview")
    assert csp(page)["frame-ancestors"] == "'none'"
    assert csp(page)["frame-src"] == "'self'"
    frame = client.get(f"/admin/digests/{digest.id}/preview.html")
    assert frame.status_code == 200
    assert csp(frame)["frame-ancestors"] == "'self'"
    assert frame.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert "script-src" not in csp(frame) and csp(frame)["default-src"] == "'none'"


def test_the_progress_bar_widths_come_in_a_style_element_with_the_nonce(client, db, admin):
    response = client.get(_digest_in_progress(client, db))
    nonce = re.search(r"'nonce-([^']+)'", csp(response)["style-src"]).group(1)
    page = response.get_data(as_text=True)
    assert f'<style nonce="{nonce}">' in page
    assert ".bar-sent { width: 0.00%; }" in page


_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
_HANDLER = re.compile(r"\son[a-z]+\s*=", re.I)
_STYLE_ATTR = re.compile(r"\sstyle\s*=", re.I)
# Mails are read in mail clients, and the embed snippet on host sites: not under this policy.
_NOT_SERVED_HERE = ("mail/", "embed/")


@pytest.mark.parametrize(
    "template",
    sorted(
        str(p.relative_to(TEMPLATES))
        for p in TEMPLATES.rglob("*.html")
        if not str(p.relative_to(TEMPLATES)).startswith(_NOT_SERVED_HERE)
    ),
)
def test_templates_have_no_inline_script_handler_or_style_attribute(template):
    source = (TEMPLATES / template).read_text()
    assert not _INLINE_SCRIPT.search(source)
    assert not _HANDLER.search(source)
    assert not _STYLE_ATTR.search(source)
    for tag in re.findall(r"<style[^>]*>", source):
        assert "csp_nonce()" in tag


def test_a_signup_from_a_browser_says_what_its_answer_depends_on(client, newsletters):
    response = client.post(
        "/subscribe",
        data={"email": "reader@example.com", "newsletter": "daily"},
        headers={"Origin": "https://elsewhere.example"},
    )
    assert response.status_code == 200
    # On the asking site (CORS), not on cookies: nothing on the page is a signed-in editor's.
    assert [v.strip() for v in response.headers["Vary"].split(",")] == ["Origin"]
    assert "Set-Cookie" not in response.headers

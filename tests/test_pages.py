"""Pages around the flows: the demo home page, the API, errors, the development mailbox."""

from __future__ import annotations

import pytest

from newsletter import create_app
from newsletter.demo import load
from newsletter.worker import build as build_worker

from factories import make_config, signup


def test_home_page_shows_the_article_feed_and_one_box_per_newsletter(client, db):
    load(db.session)
    response = client.get("/")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "2 drones shot down over Moscow, Smolensk oblasts, Russia claims" in page
    assert "News Feed" in page
    assert "Moldova&#39;s Sandu advances to presidential run-off" in page
    assert page.count("data-newsletter-box") == 5  # four lists and one box offering them all
    assert page.count("Enter your email to subscribe") == 5
    assert page.count("* indicates required") == 5
    assert "Explaining Ukraine with Kate Tsurkan" in page
    assert 'type="checkbox" name="newsletter" value="daily"' in page


def test_newsletter_names_are_escaped(client, db):
    from factories import make_newsletter

    make_newsletter("xss", "<script>alert(1)</script>")
    page = client.get("/").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_bad_address_keeps_what_the_reader_typed_escaped(client, newsletters):
    response = signup(client, '"><img src=x onerror=alert(1)>', "daily")
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    assert "<img src=x" not in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page


@pytest.mark.parametrize(
    ("method", "path", "status", "text"),
    [
        ("get", "/no-such-page", 404, "There is no page at this address."),
        ("get", "/subscribe", 405, "This address does not accept that kind of request."),
        ("get", "/_mailbox/", 404, "There is no page at this address."),
    ],
    ids=["unknown-page", "wrong-method", "mailbox-outside-development"],
)
def test_errors_get_a_page_not_a_traceback(client, method, path, status, text):
    response = getattr(client, method)(path)
    assert response.status_code == status
    page = response.get_data(as_text=True)
    assert text in page and "Traceback" not in page


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        "[]",
        '"text"',
        '{"email": 5, "newsletter": {"a": 1}}',
        '{"email": null}',
        "[" * 50_000,
        '{"email": "a@example.com", "newsletter": ["da\\u0000ily"]}',
    ],
    ids=["malformed", "array", "string", "wrong-types", "null", "too-deep", "nul-in-slug"],
)
def test_odd_json_gets_a_clear_4xx(client, newsletters, body):
    response = client.post("/subscribe", data=body, content_type="application/json")
    assert 400 <= response.status_code < 500
    assert response.json["ok"] is False


@pytest.mark.parametrize(
    "extra",
    [
        {"source": "box\x00one"},
        {"newsletter": "da\x00ily"},
        {"leave_blank": "bot", "newsletter": "da\x00ily"},
    ],
    ids=["nul-in-source", "nul-in-slug", "nul-in-slug-with-honeypot"],
)
def test_control_characters_never_reach_the_database(client, db, newsletters, extra):
    from newsletter.models import ConsentEvent

    data = {"email": "reader@example.com", "newsletter": "daily", **extra}
    response = client.post("/subscribe", data=data, headers={"User-Agent": "Agent\x01/1.0"})
    assert response.status_code in (200, 422)
    for event in db.session.scalars(db.select(ConsentEvent)):
        assert "\x00" not in event.source and event.user_agent == "Agent/1.0"


def test_oversized_request_is_refused_and_stores_nothing(client, db, newsletters):
    from newsletter.models import Subscriber

    response = client.post(
        "/subscribe", data={"email": "a@example.com", "newsletter": "daily", "x": "y" * 300_000}
    )
    assert response.status_code == 413
    assert "What was sent is too large." in response.get_data(as_text=True)
    assert db.session.scalars(db.select(Subscriber)).first() is None


def test_api_lists_newsletters_and_subscribes(client, mailbox, newsletters):
    listed = client.get("/api/v1/newsletters")
    assert [n["slug"] for n in listed.json["newsletters"]] == [
        "daily",
        "explaining-ukraine",
        "culture",
    ]
    response = client.post(
        "/api/v1/subscriptions",
        json={"email": "reader@example.com", "newsletters": ["daily", "culture"]},
    )
    assert response.status_code == 202
    assert response.json["ok"] is True
    assert len(mailbox.deliver()) == 1
    bad = client.post("/api/v1/subscriptions", json={"email": "nope", "newsletters": ["daily"]})
    assert bad.status_code == 422
    assert bad.content_type == "application/problem+json"
    assert bad.json["errors"] == [
        {"field": "email", "in": "body", "message": "Please, enter correct email address"}
    ]
    not_json = client.post("/api/v1/subscriptions", data="x")
    assert not_json.status_code == 400
    assert not_json.content_type == "application/problem+json"


def test_cors_only_for_allowed_origins(app, client, newsletters):
    app.config["ALLOWED_ORIGINS"] = ["https://site.example"]
    allowed = client.post(
        "/subscribe",
        data={"email": "a@example.com", "newsletter": "daily"},
        headers={"Origin": "https://site.example", "Accept": "application/json"},
    )
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://site.example"
    other = client.post(
        "/api/v1/subscriptions",
        json={"email": "b@example.com", "newsletters": ["daily"]},
        headers={"Origin": "https://evil.example"},
    )
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = client.options(
        "/api/v1/subscriptions",
        headers={
            "Origin": "https://site.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://site.example"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Headers"].lower() == "content-type"


@pytest.fixture
def dev_app(database_url, tmp_path):  # type: ignore[no-untyped-def]
    from newsletter.extensions import db

    app = create_app(make_config(database_url, tmp_path / "instance", ENV="development"))
    with app.app_context():
        db.create_all()
        load(db.session)
        try:
            yield app
        finally:
            db.session.remove()
            db.drop_all()
            db.engine.dispose()


def test_development_mailbox_lists_and_shows_mails(dev_app):
    from newsletter.extensions import db

    client = dev_app.test_client()
    assert "No mail yet" in client.get("/_mailbox/").get_data(as_text=True)
    signup(client, "reader@example.com", "daily")
    build_worker(dev_app.config, lambda: db.session, kinds=["outbox"]).run(drain=True)
    index = client.get("/_mailbox/").get_data(as_text=True)
    assert "Please confirm your subscription to Daily Briefing" in index
    name = index.split('href="/_mailbox/')[1].split('"')[0]
    shown = client.get(f"/_mailbox/{name}")
    assert shown.status_code == 200
    page = shown.get_data(as_text=True)
    assert "Confirm subscription" in page
    assert "/confirm/" in page
    assert 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in page
    with client.get(f"/_mailbox/{name}/raw") as raw:
        assert raw.status_code == 200 and b"Message-ID:" in raw.data
    assert client.get("/_mailbox/..%2Fsecret_key").status_code == 404
    assert client.get("/_mailbox/missing.eml").status_code == 404


def test_production_refuses_to_start_without_secret_and_base_url(tmp_path):
    from newsletter.config import ConfigError

    base = {"ENV": "production", "INSTANCE_PATH": str(tmp_path)}
    with pytest.raises(ConfigError, match="NEWSLETTER_SECRET_KEY"):
        create_app({**base, "BASE_URL": "https://x.example"})
    key = "a-long-random-production-key-0123456789"
    with pytest.raises(ConfigError, match="NEWSLETTER_BASE_URL"):
        create_app({**base, "SECRET_KEY": key})
    app = create_app({**base, "SECRET_KEY": key, "BASE_URL": "https://x.example/"})
    assert app.config["BASE_URL"] == "https://x.example"
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert "mailbox" not in app.blueprints


def test_settings_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_CONFIRMATIONS_PER_ADDRESS", "5")
    monkeypatch.setenv("NEWSLETTER_CHECK_DELIVERABILITY", "yes")
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY_FALLBACKS", "old1, old2")
    app = create_app({"ENV": "testing", "INSTANCE_PATH": str(tmp_path)})
    assert app.config["CONFIRMATIONS_PER_ADDRESS"] == 5
    assert app.config["CHECK_DELIVERABILITY"] is True
    assert app.config["SECRET_KEY_FALLBACKS"] == ["old1", "old2"]
    # Outside production a secret key is generated once and kept.
    assert (tmp_path / "secret_key").read_text().strip() == app.config["SECRET_KEY"]


def test_settings_are_checked(tmp_path):
    from newsletter.config import ConfigError

    base = {"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "s", "BASE_URL": "https://x.example"}
    with pytest.raises(ConfigError, match="NEWSLETTER_ENV must be one of"):
        create_app({**base, "ENV": "prod"})
    with pytest.raises(ConfigError, match="must be a list of strings"):
        create_app({**base, "ENV": "testing", "SECRET_KEY_FALLBACKS": [b"old"]})
    # A single string, as instance/config.py might give it, is one key, not one per letter.
    app = create_app({**base, "ENV": "testing", "SECRET_KEY_FALLBACKS": "old1,old2"})
    assert app.config["SECRET_KEY_FALLBACKS"] == ["old1", "old2"]


def test_public_and_admin_pages_name_the_favicon_which_is_served(client, db):
    for path in ("/", "/admin/login"):
        page = client.get(path).get_data(as_text=True)
        assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in page
        assert '<link rel="icon" href="/static/favicon.ico"' in page
    # Files are streamed: each response is closed once read.
    with client.get("/static/favicon.svg") as svg:
        assert svg.status_code == 200 and svg.mimetype == "image/svg+xml"
        assert svg.get_data().startswith(b"<svg")
    for path in ("/static/favicon.ico", "/favicon.ico"):
        with client.get(path) as icon:
            assert icon.status_code == 200
            assert icon.mimetype in ("image/vnd.microsoft.icon", "image/x-icon")
            # An ICO header: reserved 0, type 1 (icon), three images.
            assert icon.get_data()[:6] == b"\x00\x00\x01\x00\x03\x00"

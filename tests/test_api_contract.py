"""The JSON API's contract: RFC 9457 problems for every error, one answer for every signup."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from newsletter import api_tokens
from newsletter import subscriptions as subs
from newsletter.addresses import address_hash
from newsletter.models import (
    ConsentEvent,
    Item,
    OutboxMessage,
    Subscriber,
    Subscription,
    Suppression,
)
from newsletter.web.problems import TYPES

from factories import BASE_URL, make_newsletter, signup, statuses

SITE = "https://site.example"
LIMIT = 8


@pytest.fixture
def app_config() -> dict[str, object]:
    return {"SUBSCRIBE_RATE_LIMIT": f"{LIMIT} per minute", "ALLOWED_ORIGINS": [SITE]}


@pytest.fixture
def bearer(app, db) -> dict[str, str]:  # type: ignore[no-untyped-def]
    _, token = api_tokens.create_token(db.session, "site", None)
    return {"Authorization": f"Bearer {token}"}


def assert_problem(response, status: int, name: str) -> dict:  # type: ignore[no-untyped-def]
    """The answer is an RFC 9457 problem of this type; returns its body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == "application/problem+json"
    body = response.get_json()
    assert set(body) == {"type", "title", "status", "detail", "errors"}
    assert body["type"] == f"{BASE_URL}/api/v1/problems/{name}"
    assert body["title"] == TYPES[name].title
    assert body["status"] == status
    assert body["detail"]
    return body


def rows(db) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    db.session.expire_all()
    return tuple(
        db.session.scalar(select(func.count()).select_from(table))
        for table in (Subscriber, Subscription, ConsentEvent, OutboxMessage, Item)
    )


# 400: a body that is not a JSON object


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b"not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'"text"', "application/json"),
        (b"null", "application/json"),
        (b"{" * 5000, "application/json"),
        (b"", "application/json"),
        (b"email=a%40example.com", "application/x-www-form-urlencoded"),
        (b'{"email": "a@example.com"}', "text/plain"),
    ],
    ids=["not-json", "list", "string", "null", "deep", "empty", "form", "text-plain"],
)
@pytest.mark.parametrize("path", ["/api/v1/subscriptions", "/api/v1/items"])
def test_a_body_that_is_not_a_json_object_is_400(client, db, bearer, path, raw, content_type):
    response = client.post(path, data=raw, headers={**bearer, "Content-Type": content_type})
    body = assert_problem(response, 400, "not-json")
    assert body["errors"] == []
    assert rows(db) == (0, 0, 0, 0, 0)


# 422: every field at fault, named


def test_every_bad_signup_field_is_named(client, db, newsletters):
    response = client.post(
        "/api/v1/subscriptions",
        json={"email": "nope", "newsletters": "daily", "source": 7, "leave_blank": None},
    )
    body = assert_problem(response, 422, "invalid-fields")
    assert body["errors"] == [
        {"field": "email", "in": "body", "message": "Please, enter correct email address"},
        {
            "field": "newsletters",
            "in": "body",
            "message": 'List the newsletters by their slugs, such as ["daily"].',
        },
        {"field": "source", "in": "body", "message": "The source must be text."},
        {"field": "leave_blank", "in": "body", "message": "The leave_blank field must be text."},
    ]
    assert body["detail"] == "Check these fields: email, newsletters, source, leave_blank."
    assert rows(db) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"newsletters": []}, "Please, choose at least one newsletter."),
        ({"newsletters": ["nope"]}, "We have no open newsletter 'nope'."),
        ({"newsletters": ["archived"]}, "We have no open newsletter 'archived'."),
        ({"newsletters": ["da\x00ily"]}, "We have no open newsletter 'da\\x00ily'."),
        ({"newsletters": ["d" * 65]}, "We have no open newsletter"),
        ({"newsletters": ["daily"] * 21}, "Choose at most 20 newsletters."),
        ({"newsletters": [["daily"]]}, "List the newsletters by their slugs"),
        ({"newsletter": ["daily"], "newsletters": None}, "List the newsletters by their slugs"),
    ],
    ids=["none", "unknown", "archived", "nul", "long", "too-many", "nested", "old-alias"],
)
def test_bad_newsletter_lists_are_422(client, db, newsletters, change, message):
    make_newsletter("archived", archived=True)
    body = {"email": "reader@example.com", "newsletters": ["daily"], **change}
    body = {k: v for k, v in body.items() if v is not None}
    problem = assert_problem(client.post("/api/v1/subscriptions", json=body), 422, "invalid-fields")
    assert [e["field"] for e in problem["errors"]] == ["newsletters"]
    assert message in problem["errors"][0]["message"]
    assert rows(db) == (0, 0, 0, 0, 0)


def test_a_source_longer_than_100_characters_is_422(client, db, newsletters):
    response = client.post(
        "/api/v1/subscriptions",
        json={"email": "reader@example.com", "newsletters": ["daily"], "source": "s" * 101},
    )
    body = assert_problem(response, 422, "invalid-fields")
    assert body["errors"][0]["message"] == "The source is longer than 100 characters."


def test_every_bad_item_field_is_named(client, db, newsletters, bearer):
    response = client.post(
        "/api/v1/items",
        json={
            "title": " ",
            "url": "ftp://x",
            "summary": 5,
            "published_at": "0001-01-01T00:00:00+14:00",
            "guid": "g" * 501,
            "newsletters": "daily",
        },
        headers=bearer,
    )
    body = assert_problem(response, 422, "invalid-fields")
    assert [(e["field"], e["in"]) for e in body["errors"]] == [
        ("title", "body"),
        ("url", "body"),
        ("summary", "body"),
        ("published_at", "body"),
        ("guid", "body"),
        ("newsletters", "body"),
    ]
    assert body["errors"][3]["message"] == "The publication time is out of range."
    assert rows(db) == (0, 0, 0, 0, 0)


def test_an_item_naming_a_newsletter_with_a_nul_is_422(client, db, newsletters, bearer):
    item = {"title": "T", "url": "https://news.example/1", "newsletters": ["da\x00ily"]}
    body = assert_problem(
        client.post("/api/v1/items", json=item, headers=bearer), 422, "invalid-fields"
    )
    assert body["errors"][0]["field"] == "newsletters"
    assert rows(db) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ("limit=0", ["limit"]),
        ("limit=201", ["limit"]),
        ("limit=-1", ["limit"]),
        ("limit=ten", ["limit"]),
        ("limit=", ["limit"]),
        ("limit=1.5", ["limit"]),
        ("newsletter=nope", ["newsletter"]),
        ("newsletter=da%00ily", ["newsletter"]),
        ("limit=0&newsletter=nope", ["limit", "newsletter"]),
    ],
    ids=["zero", "over", "negative", "word", "empty", "fraction", "unknown", "nul", "both"],
)
def test_bad_query_parameters_are_named(client, newsletters, bearer, query, fields):
    body = assert_problem(
        client.get(f"/api/v1/items?{query}", headers=bearer), 422, "invalid-fields"
    )
    assert [(e["field"], e["in"]) for e in body["errors"]] == [(f, "query") for f in fields]


def test_good_query_parameters_are_taken(client, newsletters, bearer):
    for n in range(3):
        item = {"title": f"Story {n}", "url": f"https://news.example/{n}", "newsletters": ["daily"]}
        assert client.post("/api/v1/items", json=item, headers=bearer).status_code == 201
    listed = client.get("/api/v1/items?limit=2&newsletter=daily", headers=bearer)
    assert listed.status_code == 200
    assert [i["title"] for i in listed.json["items"]] == ["Story 2", "Story 1"]
    assert len(client.get("/api/v1/items?newsletter=", headers=bearer).json["items"]) == 3


# 401, 404, 405, 413, 429


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, 'Bearer realm="newsletter"'),
        ({"Authorization": "Bearer nlt_wrong"}, 'Bearer realm="newsletter", error="invalid_token"'),
    ],
    ids=["none", "wrong"],
)
def test_tokens_are_asked_for_with_a_challenge(client, db, newsletters, headers, challenge):
    for response in (
        client.get("/api/v1/items", headers=headers),
        client.post("/api/v1/items", json={"title": "x"}, headers=headers),
    ):
        assert_problem(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"] == challenge
    assert rows(db) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v1", "/api/v1/items/1", "/api/v2/items"])
def test_unknown_api_addresses_are_404_problems(client, path):
    response = client.get(path, headers={"Accept": "text/html"})
    if path.startswith("/api/v1"):
        body = assert_problem(response, 404, "not-found")
        assert body["detail"] == f"There is no API call at {path}."
    else:
        # Outside /api/v1 the site's own error answers stay as they were.
        assert response.status_code == 404 and response.json["ok"] is False


def test_a_method_a_call_does_not_take_is_a_405_problem(client, db):
    response = client.delete("/api/v1/subscriptions")
    body = assert_problem(response, 405, "method-not-allowed")
    assert set(response.headers["Allow"].split(", ")) == {"OPTIONS", "POST"}
    assert body["detail"] == "/api/v1/subscriptions takes OPTIONS, POST."


def test_a_body_too_large_is_a_413_problem(client, db, newsletters):
    response = client.post(
        "/api/v1/subscriptions",
        data=b'{"email": "' + b"a" * 300_000 + b'"}',
        content_type="application/json",
    )
    body = assert_problem(response, 413, "too-large")
    assert body["detail"] == "The body may be at most 262,144 bytes."
    assert rows(db) == (0, 0, 0, 0, 0)


def test_too_many_signups_are_a_429_problem_with_retry_after(client, db, newsletters):
    for n in range(LIMIT):
        signup(client, f"reader{n}@example.com", "daily")
    before = rows(db)
    response = client.post(
        "/api/v1/subscriptions",
        json={"email": "late@example.com", "newsletters": ["daily"]},
        headers={"Origin": SITE},
    )
    assert_problem(response, 429, "rate-limited")
    assert int(response.headers["Retry-After"]) > 0
    assert response.headers["X-RateLimit-Limit"] == str(LIMIT)
    assert response.headers["X-RateLimit-Remaining"] == "0"
    # The box's script on an allowed site can read the status and the wait.
    assert response.headers["Access-Control-Allow-Origin"] == SITE
    assert "Retry-After" in response.headers["Access-Control-Expose-Headers"]
    assert rows(db) == before


def test_html_pages_keep_their_own_error_pages(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert response.content_type.startswith("text/html")
    assert "There is no page at this address." in response.get_data(as_text=True)


# Problem types


@pytest.mark.parametrize("name", sorted(TYPES))
def test_each_problem_type_uri_leads_to_a_page(client, name):
    page = client.get(f"/api/v1/problems/{name}")
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    text = page.get_data(as_text=True)
    assert TYPES[name].title in text and str(TYPES[name].status) in text


def test_an_unknown_problem_type_is_a_404_problem(client):
    assert_problem(client.get("/api/v1/problems/nope"), 404, "not-found")


# 202: one answer, whatever the address's history


def test_a_signup_gets_the_same_answer_whatever_the_address_did(client, db, mailbox, newsletters):
    def call(email: str, **extra: str):  # type: ignore[no-untyped-def]
        return client.post(
            "/api/v1/subscriptions", json={"email": email, "newsletters": ["daily"], **extra}
        )

    answers = {"new": call("new@example.com")}
    answers["pending"] = call("new@example.com")
    mail = mailbox.deliver()[0]
    from factories import links

    client.post(links(mail, "/confirm/")[0])
    answers["confirmed"] = call("new@example.com")
    assert statuses(db) == {"daily": "confirmed"}
    subscription = db.session.scalars(select(Subscription)).one()
    subs.unsubscribe(db.session, subscription, subs.Origin("test"))
    answers["unsubscribed"] = call("new@example.com")
    db.session.add(Suppression(email_hash=address_hash("gone@example.com"), reason="bounced"))
    db.session.commit()
    answers["suppressed"] = call("gone@example.com")
    before = rows(db)
    answers["honeypot"] = call("bot@example.com", leave_blank="http://spam.example")
    assert rows(db) == before

    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(answers, 202)
    assert len({r.get_data() for r in answers.values()}) == 1
    assert answers["new"].json == {
        "ok": True,
        "title": "Successfully subscribed",
        "message": newsletters[0].thanks_text,
    }


# CORS on every answer of the API, errors included


def test_allowed_sites_can_read_errors_too(client, newsletters):
    bad = client.post("/api/v1/subscriptions", json={"email": "x"}, headers={"Origin": SITE})
    assert bad.status_code == 422 and bad.headers["Access-Control-Allow-Origin"] == SITE
    missing = client.get("/api/v1/nope", headers={"Origin": SITE})
    assert missing.headers["Access-Control-Allow-Origin"] == SITE
    other = client.post(
        "/api/v1/subscriptions", json={"email": "x"}, headers={"Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Origin" in other.headers["Vary"]


def test_no_origin_no_cors_headers(client, newsletters):
    response = client.get("/api/v1/newsletters")
    assert not [h for h in response.headers.keys() if h.startswith("Access-Control-")]


def test_browsers_are_not_offered_to_send_tokens(client):
    preflight = client.options(
        "/api/v1/items",
        headers={
            "Origin": SITE,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == SITE
    assert preflight.headers["Access-Control-Allow-Headers"].lower() == "content-type"
    assert "Access-Control-Allow-Credentials" not in preflight.headers


def test_preflights_from_other_sites_get_no_permission(client):
    preflight = client.options(
        "/api/v1/subscriptions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert "Access-Control-Allow-Methods" not in preflight.headers


def test_the_site_s_own_pages_get_no_cors_headers(client):
    response = client.get("/", headers={"Origin": SITE})
    assert "Access-Control-Allow-Origin" not in response.headers

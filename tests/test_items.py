"""News items: the rules, the bearer-token API, API tokens and items in the admin."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from newsletter import api_tokens
from newsletter.digests import items
from newsletter.models import ApiToken, Item, Newsletter

from factories import add_item, csrf_token, make_newsletter, sign_in

ITEM = {
    "title": "Moldova's Sandu advances to presidential run-off",
    "url": "https://news.example/news/moldovas-sandu-advances",
    "summary": "The people of Moldova have spoken.",
    "published_at": "2024-11-03T20:15:00+02:00",
    "guid": "story-1001",
    "newsletters": ["daily"],
}


def count_items(db) -> int:  # type: ignore[no-untyped-def]
    return db.session.scalar(select(func.count()).select_from(Item))


@pytest.fixture
def token(db, admin) -> str:  # type: ignore[no-untyped-def]
    """A live API token, made by the admin."""
    _, secret = api_tokens.create_token(db.session, "Site CMS", admin.id)
    return secret


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post_item(client, token: str | None, body: object):  # type: ignore[no-untyped-def]
    headers = bearer(token) if token is not None else {}
    return client.post("/api/v1/items", json=body, headers=headers)


# The rules


def test_add_item_stores_it_once_per_guid_and_per_link(app, db, newsletters):
    item, created = items.add_item(db.session, **ITEM, source="api")
    assert created and item.published_at == datetime(2024, 11, 3, 18, 15, tzinfo=UTC)
    again, created = items.add_item(
        db.session, **{**ITEM, "newsletters": ["culture"]}, source="api"
    )
    assert not created and again.id == item.id
    same_link, created = items.add_item(
        db.session,
        **{**ITEM, "guid": "another-id", "title": "Changed", "newsletters": ["daily"]},
        source="feed",
    )
    assert not created and same_link.id == item.id
    db.session.expire_all()
    stored = db.session.scalars(select(Item)).one()
    # A repeat only adds lists; nothing else changes.
    assert stored.title == ITEM["title"] and stored.guid == "story-1001"
    assert sorted(n.slug for n in stored.newsletters) == ["culture", "daily"]


def test_guid_defaults_to_the_link_and_naive_times_are_utc(app, db, newsletters):
    item, _ = items.add_item(
        db.session,
        title="t",
        url="https://news.example/a",
        published_at="2024-01-02T03:04:05",
        newsletters=["daily"],
        source="api",
    )
    assert item.guid == "https://news.example/a"
    assert item.published_at == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_a_lost_race_for_the_guid_returns_the_winner(app, db, newsletters, monkeypatch):
    winner, _ = items.add_item(db.session, **ITEM, source="api")
    # As if the other request's row had not been visible when this one looked.
    real_find = items.find_item
    calls = []

    def late_find(session, guid, url):  # type: ignore[no-untyped-def]
        calls.append(guid)
        return None if len(calls) == 1 else real_find(session, guid, url)

    monkeypatch.setattr(items, "find_item", late_find)
    item, created = items.add_item(db.session, **{**ITEM, "newsletters": ["culture"]}, source="api")
    assert not created and item.id == winner.id and len(calls) == 2
    db.session.expire_all()
    assert count_items(db) == 1
    assert sorted(n.slug for n in db.session.get(Item, winner.id).newsletters) == [
        "culture",
        "daily",
    ]


def test_items_since_lists_a_newsletters_items_newest_first(app, db, newsletters):
    base = datetime(2024, 5, 1, tzinfo=UTC)
    for n in range(4):
        items.add_item(
            db.session,
            title=f"Story {n}",
            url=f"https://news.example/{n}",
            published_at=base + timedelta(hours=n),
            newsletters=["daily"] if n != 2 else ["culture"],
            source="api",
        )
    daily = newsletters[0]
    assert [i.title for i in items.items_since(db.session, daily, None)] == [
        "Story 3",
        "Story 1",
        "Story 0",
    ]
    since = items.items_since(db.session, daily, base + timedelta(hours=1))
    assert [i.title for i in since] == ["Story 3"]
    assert len(items.items_since(db.session, daily, None, limit=2)) == 2


def test_plain_text_drops_tags_scripts_and_entities():
    html = (
        "<p>Hello <b>world</b> &amp; co</p><script>alert(1)</script>"
        "<p>Next&nbsp;line: &amp;lt;b&amp;gt;</p>"
    )
    assert items.plain_text(html) == "Hello world & co\n\nNext line: &lt;b&gt;"


# The API: who may call it


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic dXNlcjpwdw=="}],
    ids=["none", "empty", "basic"],
)
def test_api_without_a_token_is_401(client, db, newsletters, headers):
    response = client.post("/api/v1/items", json=ITEM, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.content_type == "application/problem+json"
    assert response.get_json()["type"].endswith("/api/v1/problems/unauthorized")
    assert client.get("/api/v1/items", headers=headers).status_code == 401
    assert count_items(db) == 0


def test_api_with_a_wrong_token_is_401(client, db, newsletters, token):
    response = post_item(client, token[:-2] + "xx", ITEM)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert count_items(db) == 0


def test_api_with_a_revoked_token_is_401(client, db, newsletters, token):
    api_tokens.revoke(db.session, db.session.scalars(select(ApiToken)).one())
    assert post_item(client, token, ITEM).status_code == 401
    assert count_items(db) == 0


def test_api_adds_an_item_once(client, db, newsletters, token):
    created = post_item(client, token, ITEM)
    assert created.status_code == 201, created.get_data(as_text=True)
    body = created.get_json()
    assert body["created"] is True
    assert body["item"]["title"] == ITEM["title"]
    assert body["item"]["published_at"] == "2024-11-03T18:15:00+00:00"
    assert body["item"]["newsletters"] == ["daily"] and body["item"]["source"] == "api"

    repeat = post_item(client, token, {**ITEM, "newsletters": ["culture"]})
    assert repeat.status_code == 200
    assert repeat.get_json()["item"]["id"] == body["item"]["id"]
    assert repeat.get_json()["item"]["newsletters"] == ["culture", "daily"]

    same_link = post_item(client, token, {**ITEM, "guid": "other-guid"})
    assert same_link.status_code == 200
    assert count_items(db) == 1


def test_api_lists_recent_items(client, db, newsletters, token):
    post_item(client, token, ITEM)
    post_item(
        client,
        token,
        {**ITEM, "guid": "2", "url": "https://news.example/2", "newsletters": ["culture"]},
    )
    listed = client.get("/api/v1/items?newsletter=daily", headers=bearer(token))
    assert listed.status_code == 200
    assert [i["guid"] for i in listed.get_json()["items"]] == ["story-1001"]
    every = client.get("/api/v1/items", headers=bearer(token)).get_json()["items"]
    assert len(every) == 2
    unknown = client.get("/api/v1/items?newsletter=nope", headers=bearer(token))
    assert unknown.status_code == 422
    assert [e["field"] for e in unknown.get_json()["errors"]] == ["newsletter"]


def test_last_used_is_written_at_most_once_a_minute(client, db, newsletters, token):
    post_item(client, token, ITEM)
    row = db.session.scalars(select(ApiToken)).one()
    first = row.last_used_at
    assert first is not None
    client.get("/api/v1/items", headers=bearer(token))
    db.session.expire_all()
    assert db.session.scalars(select(ApiToken)).one().last_used_at == first
    row = db.session.scalars(select(ApiToken)).one()
    row.last_used_at = first - timedelta(minutes=2)
    db.session.commit()
    client.get("/api/v1/items", headers=bearer(token))
    db.session.expire_all()
    assert db.session.scalars(select(ApiToken)).one().last_used_at > first


def test_the_api_needs_no_csrf_token(app, db, newsletters, token):
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    assert post_item(client, token, ITEM).status_code == 201


# The API: what it refuses


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"title": ""}, "title", "Give the item a title."),
        ({"title": None}, "title", "Give the item a title."),
        ({"title": 42}, "title", "The title must be text."),
        ({"title": "x" * 501}, "title", "longer than 500"),
        ({"url": ""}, "url", "Give the item a link"),
        ({"url": "javascript:alert(1)"}, "url", "absolute http or https"),
        ({"url": "/news/relative"}, "url", "absolute http or https"),
        ({"url": "https://news.example/" + "a" * 1000}, "url", "longer than 1000"),
        ({"url": ["https://news.example/"]}, "url", "must be text"),
        ({"summary": "s" * 10_001}, "summary", "longer than 10,000"),
        ({"published_at": "yesterday"}, "published_at", "ISO 8601"),
        ({"published_at": 1700000000}, "published_at", "ISO 8601"),
        ({"guid": "g" * 501}, "guid", "longer than 500"),
        ({"newsletters": []}, "newsletters", "Choose at least one newsletter."),
        ({"newsletters": ["nope"]}, "newsletters", "no open newsletter 'nope'"),
        ({"newsletters": [{"slug": "daily"}]}, "newsletters", "by their slugs"),
        ({"newsletters": ["archived"]}, "newsletters", "no open newsletter 'archived'"),
    ],
    ids=[
        "empty-title",
        "null-title",
        "number-title",
        "long-title",
        "no-url",
        "javascript-url",
        "relative-url",
        "long-url",
        "list-url",
        "long-summary",
        "bad-date",
        "number-date",
        "long-guid",
        "no-newsletter",
        "unknown-newsletter",
        "object-newsletter",
        "archived-newsletter",
    ],
)
def test_bad_item_input_names_the_field(client, db, newsletters, token, change, field, message):
    make_newsletter("archived", archived=True)
    response = post_item(client, token, {**ITEM, **change})
    assert response.status_code == 422
    assert response.content_type == "application/problem+json"
    body = response.get_json()
    assert [e["field"] for e in body["errors"]] == [field]
    assert message in body["errors"][0]["message"]
    assert count_items(db) == 0


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[1, 2]", b'"text"', b"{" * 5000],
    ids=["not-json", "list", "string", "deep"],
)
def test_a_body_that_is_not_a_json_object_is_400(client, db, newsletters, token, raw):
    response = client.post(
        "/api/v1/items",
        data=raw,
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.content_type == "application/problem+json"
    assert response.get_json()["type"].endswith("/api/v1/problems/not-json")


# API tokens in the admin


def test_admin_creates_a_token_shown_once_and_stored_as_a_hash(client, db, admin, newsletters):
    sign_in(client)
    response = client.post(
        "/admin/tokens",
        data={"name": "Site CMS", "csrf_token": csrf_token(client, "/admin/tokens")},
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    page = response.get_data(as_text=True)
    secret = re.search(r'<code id="new-token">([^<]+)</code>', page).group(1)
    row = db.session.scalars(select(ApiToken)).one()
    assert row.name == "Site CMS" and row.admin_user_id == admin.id
    assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret.startswith(row.prefix) and secret not in row.prefix
    # Never again: the list shows the prefix only.
    listing = client.get("/admin/tokens").get_data(as_text=True)
    assert secret not in listing and row.prefix in listing and "Site CMS" in listing
    assert "never" in listing  # not used yet

    assert post_item(client, secret, ITEM).status_code == 201


def test_admin_revokes_a_token(client, db, admin, newsletters, token):
    sign_in(client)
    row = db.session.scalars(select(ApiToken)).one()
    response = client.post(
        f"/admin/tokens/{row.id}/revoke", data={"csrf_token": csrf_token(client, "/admin/tokens")}
    )
    assert response.status_code == 302 and response.headers["Location"] == "/admin/tokens"
    db.session.expire_all()
    assert db.session.get(ApiToken, row.id).revoked_at is not None
    assert post_item(client, token, ITEM).status_code == 401


def test_a_token_needs_a_name(client, db, admin):
    sign_in(client)
    response = client.post(
        "/admin/tokens", data={"name": " ", "csrf_token": csrf_token(client, "/admin/tokens")}
    )
    assert response.status_code == 422
    assert "This field is required." in response.get_data(as_text=True)
    assert db.session.scalars(select(ApiToken)).all() == []


def test_token_forms_need_the_csrf_token(client, db, admin, token):
    sign_in(client)
    refused = client.post("/admin/tokens", data={"name": "Sneaky"})
    assert refused.status_code == 400
    row = db.session.scalars(select(ApiToken)).one()
    assert client.post(f"/admin/tokens/{row.id}/revoke").status_code == 400
    db.session.expire_all()
    assert db.session.scalars(select(ApiToken)).one().revoked_at is None
    assert len(db.session.scalars(select(ApiToken)).all()) == 1


def test_token_pages_are_for_admins_only(client, db, admin, editor, token):
    sign_in(client, "writer@news.example.org")
    assert client.get("/admin/tokens").status_code == 403
    form_token = csrf_token(client, "/admin/")
    assert (
        client.post("/admin/tokens", data={"name": "x", "csrf_token": form_token}).status_code
        == 403
    )
    row = db.session.scalars(select(ApiToken)).one()
    revoke = client.post(f"/admin/tokens/{row.id}/revoke", data={"csrf_token": form_token})
    assert revoke.status_code == 403
    assert "API tokens" not in client.get("/admin/").get_data(as_text=True)


def test_strangers_are_sent_to_sign_in(client, admin):
    for path in ("/admin/tokens", "/admin/items", "/admin/items/new"):
        response = client.get(path)
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/admin/login?next=")


# Items in the admin


def item_form(client, path: str, **fields: object) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {
        "csrf_token": csrf_token(client, path),
        "title": "Kyiv marks Independence Day",
        "url": "https://news.example/news/independence-day",
        "summary": "Parades were cancelled.",
        "published_at": "2024-08-24T09:30",
        "newsletters": ["daily", "culture"],
        **fields,
    }


def test_editor_adds_edits_and_deletes_an_item(client, db, editor, newsletters):
    sign_in(client, "writer@news.example.org")
    assert "Items</a>" in client.get("/admin/").get_data(as_text=True)
    created = client.post("/admin/items/new", data=item_form(client, "/admin/items/new"))
    assert created.status_code == 302 and created.headers["Location"] == "/admin/items"
    item = db.session.scalars(select(Item)).one()
    assert item.source == "admin" and item.guid == item.url
    assert item.published_at == datetime(2024, 8, 24, 9, 30, tzinfo=UTC)
    assert sorted(n.slug for n in item.newsletters) == ["culture", "daily"]
    listing = client.get("/admin/items").get_data(as_text=True)
    assert "Added Kyiv marks Independence Day." in listing
    assert "Daily Briefing, Culture" in listing

    edit_path = f"/admin/items/{item.id}/edit"
    form_page = client.get(edit_path).get_data(as_text=True)
    assert 'value="2024-08-24T09:30"' in form_page
    edited = client.post(
        edit_path,
        data=item_form(
            client, edit_path, title="Kyiv marks its Independence Day", newsletters=["daily"]
        ),
    )
    assert edited.status_code == 302
    db.session.expire_all()
    item = db.session.get(Item, item.id)
    assert item.title == "Kyiv marks its Independence Day"
    assert [n.slug for n in item.newsletters] == ["daily"]

    # Delete asks first: the list's button opens a question, a post without the answer asks.
    listing = client.get("/admin/items").get_data(as_text=True)
    assert f'href="/admin/items/{item.id}/delete"' in listing
    asked = client.get(f"/admin/items/{item.id}/delete")
    assert asked.status_code == 200
    assert "Delete this item?" in asked.get_data(as_text=True)
    token = csrf_token(client, "/admin/items")
    unanswered = client.post(f"/admin/items/{item.id}/delete", data={"csrf_token": token})
    assert unanswered.status_code == 200 and count_items(db) == 1
    deleted = client.post(
        f"/admin/items/{item.id}/delete", data={"csrf_token": token, "confirm": "yes"}
    )
    assert deleted.status_code == 302
    assert count_items(db) == 0


def test_deleting_an_item_names_the_unsent_digests_it_leaves(client, db, editor, newsletters):
    from newsletter.digests import states

    daily = newsletters[0]
    item = add_item(db, daily, "In a draft")
    digest = states.compose(db.session, daily)
    sign_in(client, "writer@news.example.org")
    page = client.get(f"/admin/items/{item.id}/delete").get_data(as_text=True)
    assert "It is in these digests not yet sent" in page
    assert f'href="/admin/digests/{digest.id}">{digest.subject}</a>' in page


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"title": ""}, "This field is required."),
        ({"url": "ftp://news.example/x"}, "Use an http:// or https:// address."),
        ({"published_at": "24.08.2024"}, "Not a valid datetime value."),
        ({"newsletters": []}, "Choose at least one newsletter."),
    ],
    ids=["no-title", "ftp-link", "bad-time", "no-newsletter"],
)
def test_bad_admin_item_input_is_shown(client, db, editor, newsletters, change, message):
    sign_in(client, "writer@news.example.org")
    response = client.post("/admin/items/new", data=item_form(client, "/admin/items/new", **change))
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    assert count_items(db) == 0


def test_editing_to_another_items_link_is_refused(client, db, editor, newsletters):
    first, _ = items.add_item(db.session, **ITEM, source="api")
    second, _ = items.add_item(
        db.session, **{**ITEM, "guid": "2", "url": "https://news.example/2"}, source="api"
    )
    sign_in(client, "writer@news.example.org")
    path = f"/admin/items/{second.id}/edit"
    response = client.post(path, data=item_form(client, path, url=ITEM["url"]))
    assert response.status_code == 422
    assert "Another item has this link." in response.get_data(as_text=True)


def test_items_list_filters_and_pages(client, db, editor, newsletters):
    base = datetime(2024, 1, 1, tzinfo=UTC)
    for n in range(55):
        items.add_item(
            db.session,
            title=f"Story number {n}",
            url=f"https://news.example/{n}",
            published_at=base + timedelta(minutes=n),
            newsletters=["culture" if n == 0 else "daily"],
            source="api",
        )
    sign_in(client, "writer@news.example.org")
    first = client.get("/admin/items").get_data(as_text=True)
    assert "Story number 54" in first and "Story number 4<" not in first
    assert "page=2" in first
    second = client.get("/admin/items?page=2").get_data(as_text=True)
    assert "Story number 4<" in second and "Story number 54" not in second
    culture = client.get("/admin/items?newsletter=culture").get_data(as_text=True)
    assert "Story number 0<" in culture and "Story number 1<" not in culture


# Newsletter settings for digests


def newsletter_form(client, path: str, **fields: object) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {
        "csrf_token": csrf_token(client, path),
        "name": "Kyiv Weekly",
        "slug": "kyiv-weekly",
        "cadence": "weekly",
        "prompt_text": "p",
        "button_text": "b",
        "thanks_text": "t",
        "feed_url": "https://news.example/feed.xml",
        "send_time": "07:45",
        "timezone": "Europe/Kyiv",
        "send_weekday": "4",
        "auto_digest": "draft",
        **fields,
    }


def test_newsletter_digest_settings_are_saved(client, db, admin):
    sign_in(client)
    response = client.post(
        "/admin/newsletters/new", data=newsletter_form(client, "/admin/newsletters/new")
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    newsletter = db.session.scalars(select(Newsletter)).one()
    assert (
        newsletter.feed_url,
        newsletter.send_time,
        newsletter.timezone,
        newsletter.send_weekday,
        newsletter.auto_digest,
    ) == ("https://news.example/feed.xml", "07:45", "Europe/Kyiv", 4, "draft")
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Fridays" in page and "07:45 (Europe/Kyiv)" in page

    path = f"/admin/newsletters/{newsletter.id}/edit"
    assert 'value="Europe/Kyiv"' in client.get(path).get_data(as_text=True)
    cleared = client.post(path, data=newsletter_form(client, path, feed_url="", auto_digest="off"))
    assert cleared.status_code == 302
    db.session.expire_all()
    newsletter = db.session.scalars(select(Newsletter)).one()
    assert newsletter.feed_url is None and newsletter.auto_digest == "off"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("timezone", "Mars/Olympus_Mons", "Use a time zone name such as Europe/Kyiv"),
        ("timezone", "../../etc/passwd", "Use a time zone name such as Europe/Kyiv"),
        ("timezone", "", "This field is required."),
        ("send_time", "25:00", "Use HH:MM, such as 08:00."),
        ("send_time", "8:00", "Use HH:MM, such as 08:00."),
        ("send_time", "08:00\n", "Use HH:MM, such as 08:00."),
        ("send_weekday", "7", "Not a valid choice"),
        ("auto_digest", "always", "Not a valid choice"),
        ("feed_url", "file:///etc/passwd", "Use an http:// or https:// address."),
    ],
    ids=[
        "unknown-zone",
        "path-zone",
        "empty-zone",
        "hour-25",
        "one-digit-hour",
        "trailing-newline",
        "weekday-7",
        "unknown-automation",
        "file-feed",
    ],
)
def test_bad_digest_settings_are_refused(client, db, admin, field, value, message):
    sign_in(client)
    path = "/admin/newsletters/new"
    response = client.post(path, data=newsletter_form(client, path, **{field: value}))
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    assert db.session.scalars(select(Newsletter)).all() == []

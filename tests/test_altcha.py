"""The proof of work (ALTCHA): challenges, and signups that need a solved one before anything is
stored, from the box, the box's script and the API alike."""

from __future__ import annotations

import base64
import json

import altcha
import pytest
from sqlalchemy import func, select

from newsletter.models import ConsentEvent, Newsletter, OutboxMessage, Subscriber, Subscription

from factories import apply_signups, csrf_token, make_newsletter, sign_in, signup

EMAIL = "reader@example.com"
MISSING = "tick \u201cI\u2019m not a robot\u201d, wait a moment, then subscribe."
FAILED = "The check that you are not a robot has expired or did not work."


@pytest.fixture
def app_config() -> dict[str, object]:
    # Light work: the tests solve challenges in Python, as the widget does in a browser.
    return {"ALTCHA_COST": 10, "ALTCHA_WORK": 20}


@pytest.fixture
def lists(app):  # type: ignore[no-untyped-def]
    """One list that asks for the proof of work, one that does not."""
    return make_newsletter("picks", altcha=True), make_newsletter("daily")


def solved(client, **changes: object) -> str:  # type: ignore[no-untyped-def]
    """A challenge fetched from the app and solved, as the widget sends it."""
    body = client.get("/api/v1/challenge").json
    body["parameters"].update(changes)
    challenge = altcha.Challenge.from_dict(body)
    solution = altcha.solve_challenge(challenge, timeout=10)
    assert solution is not None
    return altcha.Payload(challenge, solution).to_base64()


def stored(db) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    db.session.expire_all()
    tables = (Subscriber, Subscription, ConsentEvent, OutboxMessage)
    return tuple(db.session.scalar(select(func.count()).select_from(t)) for t in tables)


def test_a_challenge_is_fresh_signed_and_readable_by_any_page(client):
    first = client.get("/api/v1/challenge", headers={"Origin": "https://elsewhere.example"})
    second = client.get("/api/v1/challenge")
    assert first.status_code == 200 and first.content_type == "application/json"
    assert first.headers["Access-Control-Allow-Origin"] == "*"
    assert first.headers.get_all("Access-Control-Allow-Origin") == ["*"]
    assert first.headers["Cache-Control"] == "no-store"
    parameters = first.json["parameters"]
    assert parameters["algorithm"] == "PBKDF2/SHA-256"
    assert parameters["keySignature"] and first.json["signature"]
    assert parameters["nonce"] != second.json["parameters"]["nonce"]


def test_the_widget_is_served_from_our_own_files_to_any_page(client):
    for name in ("altcha.min.js", "altcha.css", "pbkdf2.js", "uk.umd.js"):
        response = client.get(f"/static/altcha/{name}")
        assert response.status_code == 200, name
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        response.close()
    script = client.get("/static/altcha/altcha.min.js")
    assert script.mimetype == "text/javascript"
    script.close()
    # Our other files are not offered across sites.
    page_script = client.get("/static/embed.js")
    assert "Access-Control-Allow-Origin" not in page_script.headers
    page_script.close()


def test_a_plain_form_without_the_proof_stores_nothing(client, db, lists):
    response = signup(client, EMAIL, "picks")
    text = response.get_data(as_text=True)
    assert response.status_code == 422
    assert MISSING in text.replace("&#8220;", "\u201c")
    # The box comes back with the widget's place and a word for readers without JavaScript.
    assert 'class="nl-altcha"' in text and "which needs JavaScript" in text
    assert stored(db) == (0, 0, 0, 0)


def test_a_solved_challenge_signs_up_once(client, db, lists):
    payload = solved(client)
    first = client.post(
        "/subscribe",
        json={"email": EMAIL, "newsletter": ["picks"], "altcha": payload},
        headers={"Accept": "application/json"},
    )
    apply_signups()
    assert first.status_code == 200 and first.json["ok"] is True
    after_first = stored(db)
    assert after_first[:2] == (1, 1) and after_first[3] == 1
    again = client.post(
        "/subscribe",
        json={"email": "other@example.com", "newsletter": ["picks"], "altcha": payload},
        headers={"Accept": "application/json"},
    )
    apply_signups()
    assert again.status_code == 422
    assert again.json == {"ok": False, "field": "altcha", "message": again.json["message"]}
    assert again.json["message"].startswith(FAILED)
    assert stored(db) == after_first


def test_the_form_post_carries_the_widget_field(client, db, lists):
    response = signup(client, EMAIL, "picks", altcha=solved(client))
    assert response.status_code == 200
    assert "Thank you for signing up" in response.get_data(as_text=True)
    assert stored(db)[:2] == (1, 1)


def _tampered(payload: str) -> str:
    data = json.loads(base64.b64decode(payload))
    data["solution"]["counter"] += 1
    data["solution"]["derivedKey"] = "00" * 32
    return base64.b64encode(json.dumps(data).encode()).decode()


@pytest.mark.parametrize(
    "make",
    [
        lambda client: solved(client, expiresAt=1_000_000_000),
        lambda client: _tampered(solved(client)),
        lambda client: base64.b64encode(b'{"challenge":null,"solution":null,"test":true}').decode(),
        lambda client: "not base64 at all",
        lambda client: "A" * 5000,
    ],
    ids=["expired", "wrong-solution", "widget-test-mode", "garbage", "too-long"],
)
def test_a_bad_solution_is_refused_and_stores_nothing(client, db, lists, make):
    response = client.post(
        "/subscribe",
        json={"email": EMAIL, "newsletter": ["picks"], "altcha": make(client)},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 422
    assert response.json["field"] == "altcha"
    assert stored(db) == (0, 0, 0, 0)


def test_the_api_needs_the_solution_too(client, db, lists):
    refused = client.post("/api/v1/subscriptions", json={"email": EMAIL, "newsletters": ["picks"]})
    apply_signups()
    assert refused.status_code == 422
    assert refused.content_type == "application/problem+json"
    assert refused.json["errors"][0]["field"] == "altcha"
    assert stored(db) == (0, 0, 0, 0)
    wrong_type = client.post(
        "/api/v1/subscriptions", json={"email": EMAIL, "newsletters": ["picks"], "altcha": 7}
    )
    apply_signups()
    assert wrong_type.status_code == 422
    accepted = client.post(
        "/api/v1/subscriptions",
        json={"email": EMAIL, "newsletters": ["picks"], "altcha": solved(client)},
    )
    apply_signups()
    assert accepted.status_code == 202
    assert stored(db)[:2] == (1, 1)
    listed = {n["slug"]: n["altcha"] for n in client.get("/api/v1/newsletters").json["newsletters"]}
    assert listed == {"picks": True, "daily": False}


def test_only_lists_that_ask_need_it(client, db, lists):
    assert signup(client, EMAIL, "daily").status_code == 200
    assert signup(client, "two@example.com", "daily", "picks").status_code == 422
    assert stored(db)[:2] == (1, 1)


def test_the_honeypot_still_answers_bots_as_readers_and_stores_nothing(client, db, lists):
    response = signup(client, EMAIL, "picks", leave_blank="I am a bot")
    assert response.status_code == 200
    assert stored(db) == (0, 0, 0, 0)


def test_the_refusal_is_in_the_box_language(client, lists):
    response = client.post(
        "/subscribe",
        json={"email": EMAIL, "newsletter": ["picks"], "lang": "uk"},
        headers={"Accept": "application/json"},
    )
    assert response.json["message"].startswith("Ця розсилка просить ваш браузер")


def test_an_admin_turns_it_on_and_the_next_signup_needs_it(client, db, admin):
    daily = make_newsletter("daily")
    assert signup(client, EMAIL, "daily").status_code == 200
    sign_in(client)
    page = client.get(f"/admin/newsletters/{daily.id}/edit").get_data(as_text=True)
    assert "Ask for a proof of work (ALTCHA)" in page
    form = {
        "csrf_token": csrf_token(client, f"/admin/newsletters/{daily.id}/edit"),
        "name": "Daily",
        "slug": "daily",
        "cadence": "daily",
        "prompt_text": "Enter your email to subscribe",
        "button_text": "Subscribe",
        "thanks_text": "Thanks!",
        "send_time": "08:00",
        "timezone": "UTC",
        "send_weekday": "0",
        "auto_digest": "off",
        "altcha": "y",
    }
    assert client.post(f"/admin/newsletters/{daily.id}/edit", data=form).status_code == 302
    db.session.expire_all()
    assert db.session.get(Newsletter, daily.id).altcha is True
    shown = client.get(f"/admin/newsletters/{daily.id}").get_data(as_text=True)
    assert "data-altcha" in shown and "readers need JavaScript to subscribe with it" in shown
    assert signup(client, "two@example.com", "daily").status_code == 422

"""Abuse limits: per IP on the signup endpoint, per address on confirmation mails."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from newsletter import create_app
from newsletter.extensions import db as _db
from newsletter.extensions import limiter
from newsletter.models import OutboxMessage

from factories import apply_signups, make_config, signup


@pytest.fixture
def app_config() -> dict[str, object]:
    return {"SUBSCRIBE_RATE_LIMIT": "3 per minute"}


def test_per_ip_limit_answers_429_with_a_clear_page(client, newsletters):
    for n in range(3):
        taken = signup(client, f"reader{n}@example.com", "daily")
        assert taken.status_code == 200
        # What is left of the budget is said when it runs out, not on every answer.
        assert "X-RateLimit-Remaining" not in taken.headers
    response = signup(client, "reader4@example.com", "daily")
    assert response.status_code == 429
    page = response.get_data(as_text=True)
    assert "Too many requests from your network" in page
    assert 0 < int(response.headers["Retry-After"]) <= 60
    assert response.headers["X-RateLimit-Limit"] == "3"
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert int(response.headers["X-RateLimit-Reset"]) > 0


def test_per_ip_limit_in_json(client, newsletters):
    for n in range(3):
        signup(client, f"reader{n}@example.com", "daily")
    response = client.post(
        "/subscribe", json={"email": "late@example.com", "newsletter": ["daily"]}
    )
    assert response.status_code == 429
    assert response.json["ok"] is False
    assert "Too many requests" in response.json["message"]


def test_other_ips_are_not_limited(client, newsletters):
    for n in range(4):
        response = client.post(
            "/subscribe",
            data={"email": f"reader{n}@example.com", "newsletter": "daily"},
            environ_base={"REMOTE_ADDR": f"192.0.2.{n}"},
        )
        assert response.status_code == 200


def test_limit_shared_between_form_and_api(client, newsletters):
    for n in range(3):
        signup(client, f"reader{n}@example.com", "daily")
    response = client.post(
        "/api/v1/subscriptions", json={"email": "x@example.com", "newsletters": ["daily"]}
    )
    assert response.status_code == 429


def test_at_most_three_confirmations_per_address_a_day_whatever_the_ips(
    client, db, mailbox, newsletters
):
    for n in range(8):
        response = client.post(
            "/subscribe",
            data={"email": "victim@example.com", "newsletter": "daily"},
            environ_base={"REMOTE_ADDR": f"198.51.100.{n}"},
        )
        apply_signups()
        # The reply never tells that the limit was hit.
        assert response.status_code == 200
        assert "Successfully subscribed" in response.get_data(as_text=True)
    queued = db.session.scalar(select(func.count()).select_from(OutboxMessage))
    assert queued == 3
    assert len(mailbox.deliver()) == 3


def test_per_address_limit_counts_case_variants_as_one(client, db, newsletters):
    for n, email in enumerate(["V@Example.com", "v@example.com", "v@EXAMPLE.COM", "V@example.COM"]):
        client.post(
            "/subscribe",
            data={"email": email, "newsletter": "daily"},
            environ_base={"REMOTE_ADDR": f"198.51.100.{n}"},
        )
        apply_signups()
    assert db.session.scalar(select(func.count()).select_from(OutboxMessage)) == 3


def test_per_address_limit_holds_under_concurrent_requests(app, db, newsletters):
    import threading

    workers = 12
    start = threading.Barrier(workers)
    statuses: list[int] = []

    def sign_up(n: int) -> None:
        client = app.test_client()
        start.wait()
        response = client.post(
            "/subscribe",
            data={"email": "victim@example.com", "newsletter": "daily"},
            environ_base={"REMOTE_ADDR": f"203.0.113.{n}"},
        )
        statuses.append(response.status_code)

    def apply(n: int) -> None:
        # Several workers take the queued signups at once.
        with app.app_context():
            start.wait()
            apply_signups()

    for target in (sign_up, apply):
        threads = [threading.Thread(target=target, args=(n,)) for n in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert statuses == [200] * workers
    assert db.session.scalar(select(func.count()).select_from(OutboxMessage)) == 3


def test_an_operators_default_limit_still_holds_on_pages_without_their_own(
    database_url: str, tmp_path: Path
):
    # The app sets no app-wide limit, so it skips Flask-Limiter's check for one; an operator
    # who sets one in the instance config gets it on every page.
    app = create_app(
        make_config(database_url, tmp_path / "instance", RATELIMIT_DEFAULT="2 per minute")
    )
    try:
        with app.app_context():
            _db.create_all()
            limiter.reset()
        client = app.test_client()
        statuses = [client.get("/theme.css").status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert "Retry-After" in client.get("/theme.css").headers
    finally:
        # The limiter is shared by every app of the process: the next test's has no default.
        limiter.limit_manager.set_default_limits([])
        with app.app_context():
            limiter.reset()
            _db.engine.dispose()



def test_a_limit_counted_after_the_answer_still_counts(app, client):
    # Flask-Limiter's step after each answer is where `deduct_when` counts: a route limited
    # that way (none of ours is yet) must still be held to it.
    @app.get("/_refused-twice")
    @limiter.limit("1 per minute", deduct_when=lambda response: response.status_code == 400)
    def _refused() -> tuple[str, int]:
        return "no", 400

    assert client.get("/_refused-twice").status_code == 400
    assert client.get("/_refused-twice").status_code == 429

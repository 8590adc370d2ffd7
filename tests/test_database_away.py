"""The database cannot be reached (restarted, down): a 503 page or problem, never a stack trace."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

from newsletter import create_app

from factories import make_config
from smtp_server import free_port


@pytest.fixture
def away(tmp_path: Path) -> Flask:
    """An app whose PostgreSQL refuses every connection (nothing listens on its port)."""
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone"
    return create_app(make_config(url, tmp_path / "instance"))


def test_signup_form_answers_503_page(away: Flask) -> None:
    client = away.test_client()
    response = client.post(
        "/subscribe",
        data={"email": "reader@example.com", "newsletter": "daily"},
        headers={"Accept": "text/html"},
    )
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    page = response.get_data(as_text=True)
    assert "Service Unavailable" in page
    assert "briefly unavailable. Please try again in a minute." in page
    assert "Traceback" not in page and "OperationalError" not in page


def test_api_answers_503_problem(away: Flask) -> None:
    client = away.test_client()
    response = client.post(
        "/api/v1/subscriptions", json={"email": "reader@example.com", "newsletters": ["daily"]}
    )
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert response.content_type == "application/problem+json"
    assert response.get_json()["status"] == 503


def test_page_in_ukrainian(away: Flask) -> None:
    response = away.test_client().get("/", headers={"Accept-Language": "uk"})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert "Сервіс ненадовго недоступний" in response.get_data(as_text=True)

"""Fixtures: an app on a fresh database per test (SQLite always, PostgreSQL when configured)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session
from werkzeug.security import generate_password_hash

from newsletter import create_app
from newsletter.extensions import db as _db
from newsletter.extensions import limiter
from newsletter.mail import outbox
from newsletter.mail.transport import MemoryTransport
from newsletter.models import AdminUser, Newsletter, Subscription

PG_URL = os.environ.get("NEWSLETTER_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("NEWSLETTER_TEST_REDIS_URL")
BASE_URL = "https://news.example.org"

DATABASES = ["sqlite"] + (["postgresql"] if PG_URL else [])


@pytest.fixture(scope="session", params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Each test runs once per database this machine offers."""
    if request.param == "postgresql":
        # The server outlives test runs: start from the tables the code describes today.
        engine = create_engine(str(PG_URL))
        try:
            _db.metadata.drop_all(engine)
            _db.metadata.create_all(engine)
        finally:
            engine.dispose()
        return str(PG_URL)
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'test.db'}"


def make_config(database_url: str, instance: Path, **extra: object) -> dict[str, object]:
    """The settings of a test app; tests override what they exercise."""
    return {
        "ENV": "testing",
        "TESTING": True,
        "INSTANCE_PATH": str(instance),
        "DATABASE_URL": database_url,
        "SECRET_KEY": "test-secret-key",
        "BASE_URL": BASE_URL,
        "REDIS_URL": REDIS_URL,
        **extra,
    }


def _empty_tables() -> None:
    tables = list(reversed(_db.metadata.sorted_tables))
    with _db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            names = ", ".join(f'"{t.name}"' for t in tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(table.delete())


@pytest.fixture(autouse=True)
def _root_logging() -> Iterator[None]:
    """A production app sends every log through its JSON handler: not into the next test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def app_config() -> dict[str, object]:
    """Overrides for the app fixture; a test module may redefine it."""
    return {}


@pytest.fixture
def app(database_url: str, tmp_path: Path, app_config: dict[str, object]) -> Iterator[Flask]:
    app = create_app(make_config(database_url, tmp_path / "instance", **app_config))
    with app.app_context():
        _db.create_all()
        try:
            yield app
        finally:
            _db.session.remove()
            _empty_tables()
            # Counts must not leak into the next test, on Redis as in memory.
            limiter.reset()
            _db.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask):  # type: ignore[no-untyped-def]
    return app.test_cli_runner()


@pytest.fixture
def db(app: Flask):  # type: ignore[no-untyped-def]
    return _db


class Mailbox:
    """Runs the outbox worker into memory and keeps what it sent."""

    def __init__(self) -> None:
        self.transport = MemoryTransport()

    @property
    def messages(self) -> list[EmailMessage]:
        return self.transport.messages

    def deliver(self) -> list[EmailMessage]:
        """Send everything due, as `newsletter worker --drain` would; return the new mails."""
        before = len(self.transport.messages)
        # Its own session, as the worker process has: the test's objects stay as they were.
        with Session(_db.engine) as session:
            outbox.run(lambda: session, self.transport, drain=True)
        return self.transport.messages[before:]


@pytest.fixture
def mailbox(app: Flask) -> Mailbox:
    return Mailbox()


PASSWORD = "correct horse battery staple"
# Hashing is slow on purpose: hash once for the whole run.
_PASSWORD_HASH = generate_password_hash(PASSWORD)


def make_admin(email: str = "editor@news.example.org", role: str = "admin") -> AdminUser:
    """Add an admin account whose password is PASSWORD; commit."""
    user = AdminUser(email=email, password_hash=_PASSWORD_HASH, role=role)
    _db.session.add(user)
    _db.session.commit()
    return user


@pytest.fixture
def admin(app: Flask) -> AdminUser:
    """An account with every right; its password is PASSWORD."""
    return make_admin("editor@news.example.org", "admin")


@pytest.fixture
def editor(app: Flask) -> AdminUser:
    """An account that may not change newsletters or touch readers' data."""
    return make_admin("writer@news.example.org", "editor")


_CSRF = re.compile(r'name="csrf_token"(?: type="hidden")? value="([^"]+)"')


def csrf_token(client: FlaskClient, path: str = "/admin/login") -> str:
    """The CSRF token a page's form carries, as a browser would post it back."""
    page = client.get(path).get_data(as_text=True)
    match = _CSRF.search(page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def sign_in(client: FlaskClient, email: str = "editor@news.example.org") -> None:
    """Sign in through the login form."""
    token = csrf_token(client)
    response = client.post(
        "/admin/login", data={"email": email, "password": PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 302, response.get_data(as_text=True)


def make_newsletter(slug: str = "daily", name: str | None = None, **fields: object) -> Newsletter:
    """Add a newsletter and commit."""
    newsletter = Newsletter(slug=slug, name=name or slug.replace("-", " ").title(), **fields)
    _db.session.add(newsletter)
    _db.session.commit()
    return newsletter


@pytest.fixture
def newsletters(app: Flask) -> list[Newsletter]:
    """Three lists, like a small news site has."""
    return [
        make_newsletter(
            "daily", "Daily Briefing", from_name="Daily Desk", from_address="daily@news.example.org"
        ),
        make_newsletter("explaining-ukraine", "Explaining Ukraine with Kate Tsurkan"),
        make_newsletter("culture", "Culture"),
    ]


_LINK = re.compile(r"https?://[^\s<>\"']+")


def text_part(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content()


def html_part(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return part.get_content()


def links(message: EmailMessage, path: str) -> list[str]:
    """Links in the text part whose path starts with `path`, relative to the site."""
    found = []
    for url in _LINK.findall(text_part(message)):
        if url.startswith(BASE_URL + path):
            found.append(url[len(BASE_URL) :])
    return found


def statuses(db) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Each list's slug with the state of its one subscription, re-read from the database."""
    db.session.expire_all()
    return {s.newsletter.slug: s.status for s in db.session.scalars(select(Subscription))}


def signup(client: FlaskClient, email: str, *slugs: str, **extra: str):  # type: ignore[no-untyped-def]
    """Post a signup box as a browser without JavaScript does."""
    return client.post("/subscribe", data={"email": email, "newsletter": list(slugs), **extra})


# The SMTP server fixtures (aiosmtpd on 127.0.0.1) live in their own module.
pytest_plugins = ["smtp_server"]

"""Fixtures: an app on a fresh database per test (SQLite always, PostgreSQL when configured)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from newsletter import create_app
from newsletter.extensions import db as _db
from newsletter.extensions import limiter
from newsletter.models import AdminUser, Newsletter

from factories import PG_URL, Mailbox, make_admin, make_config, make_newsletter

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


# The umask the test run started with.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@pytest.fixture(autouse=True)
def _process_umask() -> Iterator[None]:
    """An app narrows the process's umask (its files are its user's): not for the next test,
    whose helper servers (Dovecot) must read the files it writes for them."""
    yield
    os.umask(_UMASK)


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


@pytest.fixture
def mailbox(app: Flask) -> Mailbox:
    """The outbox worked off into memory, as `newsletter worker --drain` does."""
    return Mailbox()


@pytest.fixture
def daily(app: Flask) -> Newsletter:
    """One list with its own sender and reply-to, as the digest tests use it."""
    return make_newsletter(
        "daily",
        "Daily Briefing",
        from_name="Daily Desk",
        from_address="daily@news.example.org",
        reply_to="desk@news.example.org",
    )


@pytest.fixture
def postgresql_only(database_url: str) -> None:
    """Skip a test on every database but PostgreSQL."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")


@pytest.fixture
def admin(app: Flask) -> AdminUser:
    """An account with every right; its password is PASSWORD."""
    return make_admin("editor@news.example.org", "admin")


@pytest.fixture
def editor(app: Flask) -> AdminUser:
    """An account that may not change newsletters or touch readers' data."""
    return make_admin("writer@news.example.org", "editor")


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


# The SMTP server (aiosmtpd) and IMAP server (Dovecot) fixtures live in modules of their own;
# the drills' table is printed by this process even when pytest-xdist's workers run the drills.
pytest_plugins = ["smtp_server", "dovecot_server", "drills.table"]

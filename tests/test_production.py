"""Production settings checked at start, proxies, Redis trouble, the files the service writes."""

from __future__ import annotations

import logging
import secrets
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from prometheus_client import REGISTRY
from sqlalchemy import select

from newsletter import config, create_app
from newsletter.config import ConfigError
from newsletter.extensions import db, limiter
from newsletter.imports import jobs as imports
from newsletter.models import ConsentEvent, ImportMode

from factories import apply_signups, make_newsletter

GOOD_KEY = secrets.token_urlsafe(48)


def production(tmp_path: Path, **extra: object) -> dict[str, object]:
    settings: dict[str, object] = {
        "ENV": "production",
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "SECRET_KEY": GOOD_KEY,
        "BASE_URL": "https://news.example.org",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'prod.db'}",
        "REDIS_URL": None,
        "WEB_PROCESSES": 1,
    }
    settings.update(extra)
    return settings


def test_a_sound_production_setup_starts(tmp_path):
    assert create_app(production(tmp_path)).config["ENV"] == "production"


@pytest.mark.parametrize(
    ("change", "line"),
    [
        ({"SECRET_KEY": None}, "NEWSLETTER_SECRET_KEY must be set in production"),
        (
            {"SECRET_KEY": "change-me"},
            "NEWSLETTER_SECRET_KEY is a placeholder: set a long random value, "
            "e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))'",
        ),
        (
            {"SECRET_KEY": "x" * 64},
            "NEWSLETTER_SECRET_KEY is a placeholder: set a long random value, "
            "e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))'",
        ),
        (
            {"SECRET_KEY": "kT9w2LmQ8zR4vB7n"},
            "NEWSLETTER_SECRET_KEY is too short (16 characters): use at least 32 random ones",
        ),
        ({"BASE_URL": None}, "NEWSLETTER_BASE_URL must be set in production"),
        (
            {"BASE_URL": "http://news.example.org"},
            "NEWSLETTER_BASE_URL must be an https:// address in production, "
            "not 'http://news.example.org'",
        ),
        (
            {"WEB_PROCESSES": 4, "REDIS_URL": "redis://127.0.0.1:6379/0"},
            "SQLite under 4 web processes: use PostgreSQL (NEWSLETTER_DATABASE_URL), "
            "run one process, or set NEWSLETTER_ALLOW_SQLITE_MULTIPROCESS=1",
        ),
        (
            {"WEB_PROCESSES": 4, "DATABASE_URL": "postgresql+psycopg://app@db.invalid/news"},
            "Rate limits in memory under 4 web processes would let each process count alone: "
            "set NEWSLETTER_REDIS_URL",
        ),
    ],
    ids=[
        "no-secret-key",
        "placeholder-key",
        "repeated-key",
        "short-key",
        "no-base-url",
        "http-base-url",
        "sqlite-several-processes",
        "memory-limits-several-processes",
    ],
)
def test_production_refuses_to_start_with_one_clear_line(tmp_path, change, line):
    with pytest.raises(ConfigError) as refused:
        create_app(production(tmp_path, **change))
    assert str(refused.value) == line
    assert "\n" not in str(refused.value)


def test_sqlite_under_several_processes_when_explicitly_allowed(tmp_path):
    app = create_app(
        production(
            tmp_path,
            WEB_PROCESSES=3,
            ALLOW_SQLITE_MULTIPROCESS=True,
            REDIS_URL="redis://127.0.0.1:6379/0",
        )
    )
    assert app.config["WEB_PROCESSES"] == 3


def test_the_settings_come_from_the_environment():
    found = config.from_environ(
        {
            "NEWSLETTER_WEB_PROCESSES": "3",
            "NEWSLETTER_ALLOW_SQLITE_MULTIPROCESS": "yes",
            "NEWSLETTER_TRUSTED_PROXIES": "2",
            "NEWSLETTER_METRICS_PORT": "9101",
            "NEWSLETTER_FEED_INTERNAL_HOSTS": "feeds.intranet, 10.1.0.0/16",
            "NEWSLETTER_PROXY_COUNT": "5",
        }
    )
    assert found == {
        "WEB_PROCESSES": 3,
        "ALLOW_SQLITE_MULTIPROCESS": True,
        "TRUSTED_PROXIES": 2,
        "METRICS_PORT": 9101,
        "FEED_INTERNAL_HOSTS": ["feeds.intranet", "10.1.0.0/16"],
    }


def test_a_number_that_is_not_one_is_a_clear_error():
    with pytest.raises(ConfigError, match="NEWSLETTER_TRUSTED_PROXIES must be a whole number"):
        config.from_environ({"NEWSLETTER_TRUSTED_PROXIES": "one"})


# Behind a proxy

PROXY = "10.0.0.2"
READER = "203.0.113.9"


def _signup_through_proxy(client, email: str, forwarded_for: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/subscribe",
        data={"email": email, "newsletter": "daily"},
        headers={"X-Forwarded-For": forwarded_for},
        environ_base={"REMOTE_ADDR": PROXY},
    )


@pytest.mark.parametrize(
    ("trusted", "recorded"), [(1, READER), (0, PROXY)], ids=["trusted-proxy", "no-proxy-trusted"]
)
def test_the_consent_trail_records_the_readers_address_only_through_a_trusted_proxy(
    tmp_path, database_url, trusted, recorded
):
    app = _app(tmp_path, database_url, TRUSTED_PROXIES=trusted)
    with app.app_context():
        make_newsletter("daily")
        assert _signup_through_proxy(app.test_client(), "r@example.com", READER).status_code == 200
        apply_signups()
        ips = set(db.session.scalars(select(ConsentEvent.ip)))
    assert ips == {recorded}


def test_readers_behind_one_trusted_proxy_have_their_own_limits(tmp_path, database_url):
    app = _app(tmp_path, database_url, TRUSTED_PROXIES=1, SUBSCRIBE_RATE_LIMIT="2 per minute")
    with app.app_context():
        make_newsletter("daily")
        client = app.test_client()
        for n in range(4):
            reply = _signup_through_proxy(client, f"r{n}@example.com", f"203.0.113.{n}")
            assert reply.status_code == 200
        assert _signup_through_proxy(client, "a@example.com", "198.51.100.1").status_code == 200
        assert _signup_through_proxy(client, "b@example.com", "198.51.100.1").status_code == 200
        assert _signup_through_proxy(client, "c@example.com", "198.51.100.1").status_code == 429


def test_without_a_trusted_proxy_a_forged_header_does_not_escape_the_limit(tmp_path, database_url):
    app = _app(tmp_path, database_url, SUBSCRIBE_RATE_LIMIT="2 per minute")
    with app.app_context():
        make_newsletter("daily")
        client = app.test_client()
        statuses = [
            _signup_through_proxy(client, f"r{n}@example.com", f"203.0.113.{n}").status_code
            for n in range(3)
        ]
    assert statuses == [200, 200, 429]


def _app(tmp_path: Path, database_url: str, **extra: object) -> Flask:
    app = create_app(
        {
            "ENV": "testing",
            "TESTING": True,
            "INSTANCE_PATH": str(tmp_path / "instance"),
            "DATABASE_URL": database_url,
            "SECRET_KEY": "test-secret-key",
            "BASE_URL": "https://news.example.org",
            **extra,
        }
    )
    with app.app_context():
        db.create_all()
    _made.append(app)
    return app


_made: list[Flask] = []


@pytest.fixture(autouse=True)
def _drop_made_apps() -> Iterator[None]:
    yield
    while _made:
        app = _made.pop()
        with app.app_context():
            db.session.remove()
            db.drop_all()
            db.engine.dispose()
    # The limiter is one object for every app the tests make: leave it counting afresh, on its
    # own storage (a test below makes it fall back to memory).
    limiter._storage_dead = False
    if limiter.storage.check():
        limiter.reset()


# Redis trouble


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_signups_go_on_when_redis_is_unreachable(tmp_path, database_url, caplog):
    redis = f"redis://127.0.0.1:{_closed_port()}/0"
    app = _app(tmp_path, database_url, REDIS_URL=redis, SUBSCRIBE_RATE_LIMIT="3 per minute")
    before = REGISTRY.get_sample_value("newsletter_ratelimit_fallback_total") or 0
    with app.app_context(), caplog.at_level(logging.WARNING):
        make_newsletter("daily")
        client = app.test_client()
        statuses = [
            client.post(
                "/subscribe", data={"email": f"r{n}@example.com", "newsletter": "daily"}
            ).status_code
            for n in range(4)
        ]
    # Served, and still limited per address, in this process's memory.
    assert statuses == [200, 200, 200, 429]
    warnings = [r for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert len(warnings) == 1
    assert "NEWSLETTER_REDIS_URL" in warnings[0].getMessage()
    after = REGISTRY.get_sample_value("newsletter_ratelimit_fallback_total")
    assert after == before + 4


def test_a_signup_caught_as_redis_goes_is_served(tmp_path, database_url, monkeypatch):
    # Two requests at once when Redis dies: one switches to memory, the other was already
    # counting on Redis and fails there too; the reader still gets the page, not a 500.
    redis = f"redis://127.0.0.1:{_closed_port()}/0"
    app = _app(tmp_path, database_url, REDIS_URL=redis)
    with app.app_context():
        make_newsletter("daily")
        limiter._storage_dead = True

        def redis_gone(*args, **kwargs):  # type: ignore[no-untyped-def]
            raise ConnectionError("Connection closed by server.")

        assert limiter._fallback_limiter is not None
        monkeypatch.setattr(limiter._fallback_limiter, "hit", redis_gone)
        response = app.test_client().post(
            "/subscribe", data={"email": "reader@example.com", "newsletter": "daily"}
        )
    assert response.status_code == 200
    assert "Thank you for signing up" in response.get_data(as_text=True)


def test_the_per_address_cap_holds_without_redis(tmp_path, database_url):
    redis = f"redis://127.0.0.1:{_closed_port()}/0"
    app = _app(tmp_path, database_url, REDIS_URL=redis)
    with app.app_context():
        make_newsletter("daily")
        client = app.test_client()
        for n in range(5):
            client.post(
                "/subscribe",
                data={"email": "victim@example.com", "newsletter": "daily"},
                environ_base={"REMOTE_ADDR": f"198.51.100.{n}"},
            )
            apply_signups()
        from newsletter.models import OutboxMessage

        assert len(db.session.scalars(select(OutboxMessage)).all()) == 3


# Files


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_database_uploads_and_reports_are_readable_by_the_service_only(tmp_path):
    app = create_app(production(tmp_path))
    instance = Path(app.instance_path)
    with app.app_context():
        db.create_all()
        make_newsletter("daily")
        job = imports.queue_upload(
            db.session,
            lambda path: path.write_text("email\nreader@example.com\n"),
            instance,
            "daily",
            "readers.csv",
            ImportMode.CONFIRM,
            None,
            None,
        )
        job_id = job.id
        upload = imports.upload_path(instance, job_id)
        assert _mode(upload) == 0o600
        assert imports.ImportRunner(instance).step(db.session) == 1
        report = imports.report_path(instance, job_id)
        db.session.remove()
        db.engine.dispose()
    assert _mode(report) == 0o600
    assert _mode(tmp_path / "prod.db") == 0o600
    assert _mode(instance) == 0o700
    assert _mode(instance / "imports") == 0o700

"""Builders and helpers the tests share: settings, accounts, lists, readers, items, mail."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from flask import current_app
from flask.testing import FlaskClient
from sqlalchemy import func, make_url, select
from sqlalchemy.orm import Session
from werkzeug.security import generate_password_hash

from newsletter import signups, subscriptions, transactional, trial
from newsletter.digests import ledger as digest_ledger
from newsletter.digests.sender import Clock, DigestSender
from newsletter.extensions import db as _db
from newsletter.links import Links
from newsletter.mail.outbox import OutboxRunner
from newsletter.mail.transport import MemoryTransport, Transport
from newsletter.models import (
    AdminUser,
    Delivery,
    Item,
    Newsletter,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    utcnow,
)


def _own_servers() -> None:
    """Under pytest-xdist each worker process gets a PostgreSQL database and a Redis database of
    its own (`test_gw0`, Redis db 8 + n), so that two tests at once never share rows or counts."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    number = int(worker.removeprefix("gw"))
    if database := os.environ.get("NEWSLETTER_TEST_DATABASE_URL"):
        url = make_url(database)
        url = url.set(database=f"{url.database}_{worker}")
        rendered = url.render_as_string(hide_password=False)
        trial.ensure_database(rendered)
        os.environ["NEWSLETTER_TEST_DATABASE_URL"] = rendered
    if redis := os.environ.get("NEWSLETTER_TEST_REDIS_URL"):
        parts = urlsplit(redis)
        base = int(parts.path.strip("/") or 0)
        path = f"/{(base + 8 + number) % 16}"
        os.environ["NEWSLETTER_TEST_REDIS_URL"] = urlunsplit(parts._replace(path=path))


_own_servers()
PG_URL = os.environ.get("NEWSLETTER_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("NEWSLETTER_TEST_REDIS_URL")
BASE_URL = "https://news.example.org"


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


def app_links() -> Links:
    """The links of the app in context, as the worker builds them."""
    return Links.from_config(current_app.config)


class Mailbox:
    """Runs the outbox's runner into memory and keeps what it sent."""

    def __init__(self, transport: Transport | None = None) -> None:
        self.transport = transport or MemoryTransport()

    @property
    def messages(self) -> list[EmailMessage]:
        return self.transport.messages  # type: ignore[attr-defined, no-any-return]

    def runner(self, **options: Any) -> OutboxRunner:
        """The outbox's runner as the worker wires it, sending into this mailbox."""
        links = app_links()
        build = functools.partial(transactional.build, links=links)
        return OutboxRunner(self.transport, build, links, **options)

    def deliver(self) -> list[EmailMessage]:
        """Apply the queued signups and send everything due, as `newsletter worker --drain`
        would; return the new mails."""
        before = len(self.messages)
        apply_signups()
        runner = self.runner()
        # Its own session, as the worker process has: the test's objects stay as they were.
        with Session(_db.engine) as session:
            while runner.step(session):
                pass
        return self.messages[before:]


def apply_signups() -> int:
    """Apply every queued signup, as the worker's signup runner does; return how many."""
    cfg = current_app.config
    limit = subscriptions.ConfirmationLimit(
        count=int(cfg["CONFIRMATIONS_PER_ADDRESS"]),
        window=timedelta(seconds=int(cfg["CONFIRMATION_WINDOW"])),
    )
    runner = signups.SignupRunner(limit)
    applied = 0
    # Its own session, as the worker process has.
    with Session(_db.engine) as session:
        while found := runner.step(session):
            applied += found
    return applied


PASSWORD = "correct horse battery staple"
# Hashing is slow on purpose: hash once for the whole run.
_PASSWORD_HASH = generate_password_hash(PASSWORD)


def make_admin(email: str = "editor@news.example.org", role: str = "admin") -> AdminUser:
    """Add an admin account whose password is PASSWORD; commit."""
    user = AdminUser(email=email, password_hash=_PASSWORD_HASH, role=role)
    _db.session.add(user)
    _db.session.commit()
    return user


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


_LINK = re.compile(r"https?://[^\s<>\"']+")


def text_part(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content()  # type: ignore[no-any-return]


def html_part(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return part.get_content()  # type: ignore[no-any-return]


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


def signup(client: FlaskClient, email: str, *slugs: str, apply: bool = True, **extra: str):  # type: ignore[no-untyped-def]
    """Post a signup box as a browser without JavaScript does; then, unless told not to, let
    the worker's signup runner apply what the request queued (`apply_signups`)."""
    response = client.post("/subscribe", data={"email": email, "newsletter": list(slugs), **extra})
    if apply:
        apply_signups()
    return response


def add_reader(db, newsletter, email, status=SubscriptionStatus.CONFIRMED):  # type: ignore[no-untyped-def]
    """A subscriber of one list, in that state; commit."""
    subscriber = Subscriber(email=email, email_key=email.lower())
    db.session.add(subscriber)
    db.session.flush()
    db.session.add(Subscription(subscriber=subscriber, newsletter=newsletter, status=status))
    db.session.commit()
    return subscriber


def add_item(db, newsletter, title, hours_ago=1, **fields):  # type: ignore[no-untyped-def]
    """A news item of one list, published `hours_ago`; commit."""
    item = Item(
        guid=f"guid-{title}",
        title=title,
        url=fields.pop("url", f"https://news.example.org/{title.lower().replace(' ', '-')}"),
        summary=fields.pop("summary", f"What happened: {title}."),
        published_at=utcnow() - timedelta(hours=hours_ago),
        newsletters=[newsletter],
        **fields,
    )
    db.session.add(item)
    db.session.commit()
    return item


def sender(transport: Transport, **options: Any) -> DigestSender:
    """A digest sender as the worker wires it; `batch_size` and `lease` shape its policy."""
    policy = options.pop("policy", digest_ledger.POLICY)
    shape = {k: options.pop(k) for k in ("batch_size", "lease") if k in options}
    return DigestSender(transport, app_links(), policy=replace(policy, **shape), **options)


def send_all(db, transport, rounds=50, **options):  # type: ignore[no-untyped-def]
    """Work the ledger as a worker does until nothing is due."""
    digest_sender = sender(transport, **options)
    with Session(db.engine) as session:
        for _ in range(rounds):
            if not digest_sender.step(session):
                break
    transport.close()


def ledger(db, digest):  # type: ignore[no-untyped-def]
    """A digest's ledger rows counted by status, re-read from the database."""
    db.session.expire_all()
    rows = db.session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.digest_id == digest.id)
        .group_by(Delivery.status)
    )
    return {status: count for status, count in rows}


class FakeClock(Clock):
    """A clock that moves only when the code under test sleeps."""

    def __init__(self, start: datetime | None = None) -> None:
        self.wall = start or utcnow()
        self.mono = 1000.0
        self.slept: list[float] = []
        self.on_sleep: Callable[[float], None] | None = None

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float, stop: object) -> None:
        self.slept.append(round(seconds, 6))
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)

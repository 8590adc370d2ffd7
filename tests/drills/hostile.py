"""What the hostile-input, link-tampering and admin-access drills share: the real stack
(gunicorn, `newsletter worker`, the database, Redis, an SMTP server), a visitor that talks HTTP
to it from a loopback address of its choice, the database's rows, and the checks on mail headers.

The drills import it by name, as the other tests import `factories`.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import redis
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from flask import Flask
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from newsletter import create_app, trial
from newsletter import subscriptions as subs
from newsletter.extensions import db as _db
from newsletter.links import Links, reader_of
from newsletter.models import Subscriber, Subscription, WorkerHeartbeat

from factories import PG_URL, REDIS_URL, make_config
from smtp_server import HOST, Handler, free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BASE_URL = "https://news.example.org"
BOUNCE_ADDRESS = "bounces@news.example.org"
WEBHOOK_SECRET = "drill-webhook-" + secrets.token_hex(8)
# Rows a worker writes on its own, whatever the requests did.
UNCOUNTED = {WorkerHeartbeat.__table__.name}
_CSRF = re.compile(r'name="csrf_token"(?: type="hidden")? value="([^"]+)"')
# RFC 5322 2.1.1: a line of a message is at most 998 characters.
MAX_LINE = 998


def drill(request: Any, name: str, figure: str) -> None:
    """Record a drill's figure for the harness's table (and print it for a plain run)."""
    request.node.user_properties.append(("drill", name))
    request.node.user_properties.append(("figure", figure))
    print(f"\n{name}: {figure}")


def inputs(variable: str, default: int) -> int:
    """How many inputs a drill generates: the environment's figure, else `default`."""
    return int(os.environ.get(variable) or default)


# --- the SMTP server that keeps every message's bytes -------------------------------------------


class RawHandler(Handler):
    """The tests' SMTP handler, keeping the bytes as they came too (header checks need them)."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes) and envelope.mail_from is not None
        self.raw.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return await super().handle_DATA(server, session, envelope)


@contextmanager
def running_raw_smtp() -> Iterator[tuple[RawHandler, int]]:
    """aiosmtpd on 127.0.0.1 that takes SMTPUTF8 as a real relay does."""
    handler = RawHandler()
    port = free_port()
    controller = Controller(
        handler,
        hostname=HOST,
        port=port,
        server_hostname="mail.test",
        ready_timeout=5,
        enable_SMTPUTF8=True,
    )
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def header_faults(mail_from: str, rcpt_tos: Sequence[str], raw: bytes) -> list[str]:
    """What is wrong in one message's envelope and headers: CR, LF or NUL inside a value,
    a line over 998 characters, a bare CR or LF, a header the parser reports broken, or a
    recipient or header that a value broke out into (a Cc, a Bcc, a second To or Subject)."""
    faults = []
    if len(rcpt_tos) != 1:
        faults.append(f"{len(rcpt_tos)} envelope recipients")
    for who in [mail_from, *rcpt_tos]:
        if any(c in who for c in "\r\n\x00"):
            faults.append(f"envelope address {who[:80]!r}")
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        if len(line) > MAX_LINE:
            faults.append(f"header line of {len(line)} characters: {line[:60]!r}")
        if b"\r" in line or b"\n" in line or b"\x00" in line:
            faults.append(f"bare CR/LF or NUL in {line[:60]!r}")
    message = message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=policy.default)
    assert isinstance(message, EmailMessage)
    for name, value in message.items():
        value = str(value)
        if any(c in value for c in "\r\n\x00"):
            faults.append(f"{name}: CR/LF/NUL in {value[:60]!r}")
        if len(value) > MAX_LINE:
            faults.append(f"{name}: a value of {len(value)} characters")
        for defect in getattr(value, "defects", ()):
            faults.append(f"{name}: {type(defect).__name__}")
    for name in ("Cc", "Bcc"):
        if name in message:
            faults.append(f"a {name} header")
    for name in ("From", "To", "Subject", "Reply-To", "Message-ID", "List-Unsubscribe"):
        if len(message.get_all(name) or []) > 1:
            faults.append(f"{name} twice")
    recipients = getaddresses([str(v) for v in message.get_all("To") or []])
    if len(recipients) != 1:
        faults.append(f"To names {len(recipients)} addresses")
    return faults


# --- a visitor ------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: str

    @property
    def location(self) -> str:
        return self.headers.get("location", "")


class Browser:
    """One visitor over HTTP/1.1 keep-alive from a loopback address of its own, with its own
    cookies (kept whatever their Secure flag: the stack is plain HTTP behind no proxy)."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.port = port
        self.source = source
        self.cookies: dict[str, str] = {}
        self._conn: http.client.HTTPConnection | None = None
        self.sent = 0

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=30, source_address=(self.source, 0)
            )
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self,
        method: str,
        path: str,
        *,
        form: Mapping[str, Any] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send one request; `form` is encoded as a browser posts it (lists as repeats)."""
        sent_headers = dict(headers or {})
        if form is not None:
            body = urlencode(form, doseq=True).encode()
            sent_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        if self.cookies:
            sent_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        self.sent += 1
        for attempt in (1, 2):
            conn = self._connection()
            try:
                try:
                    conn.request(method, path, body=body, headers=sent_headers)
                except (BrokenPipeError, ConnectionResetError):
                    # The server stopped reading: gunicorn answers a request line or header
                    # over its limits at once and closes. Its answer is read below.
                    pass
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # The server closed an idle keep-alive connection: open a new one, once.
                self.close()
                if attempt == 2:
                    raise
                continue
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            for cookie in response.headers.get_all("Set-Cookie") or []:
                self._keep(cookie)
            answer_headers = {k.lower(): v for k, v in response.getheaders()}
            return Answer(response.status, answer_headers, data.decode("utf-8", "replace"))
        raise AssertionError("unreachable")

    def _keep(self, cookie: str) -> None:
        pair, *attributes = cookie.split(";")
        name, _, value = pair.strip().partition("=")
        gone = any(
            a.strip().lower().startswith(("max-age=0", "expires=thu, 01 jan 1970"))
            for a in attributes
        )
        if gone or not value:
            self.cookies.pop(name, None)
        else:
            self.cookies[name] = value

    def get(self, path: str, **kwargs: Any) -> Answer:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Answer:
        return self.request("POST", path, **kwargs)

    def csrf(self, path: str = "/admin/login") -> str:
        """The CSRF token of this visitor's session, from a page's form."""
        page = self.get(path)
        match = _CSRF.search(page.body)
        assert match, f"no CSRF token on {path}: {page.status}"
        return match.group(1)


# --- the stack ------------------------------------------------------------------------------------


@dataclass
class Stack:
    """gunicorn and the worker on one database, with this process's app beside them for the rows
    and the links (same key)."""

    tmp: Path
    port: int
    env: dict[str, str]
    app: Flask
    smtp: RawHandler
    secret: str
    web: subprocess.Popen[bytes] | None = None
    log: Any = None
    browsers: list[Browser] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def links(self) -> Links:
        return Links.from_config(self.app.config)

    def browser(self, source: str = "127.0.0.1") -> Browser:
        made = Browser(self.port, source)
        self.browsers.append(made)
        return made

    def cli(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run the `newsletter` command with the stack's settings."""
        return subprocess.run(
            [str(BIN / "newsletter"), *args],
            env=self.env,
            cwd=self.tmp,
            input=stdin,
            capture_output=True,
            timeout=600,
        )

    def drain(self) -> None:
        """`newsletter worker --drain`: every queued mail goes to the SMTP server."""
        done = self.cli("worker", "--drain")
        assert done.returncode == 0, done.stderr.decode()[-2000:]

    def counts(self) -> dict[str, int]:
        """Rows per table, read in one statement."""
        tables = [t for t in _db.metadata.sorted_tables if t.name not in UNCOUNTED]
        query = select(
            *[select(func.count()).select_from(t).scalar_subquery().label(t.name) for t in tables]
        )
        row = _db.session.execute(query).one()
        _db.session.rollback()
        return dict(row._mapping)

    def snapshot(self, *tables: Any) -> list[tuple[Any, ...]]:
        """Every row of these tables, in order: for 'nothing changed' checks."""
        rows = []
        for table in tables:
            table = getattr(table, "__table__", table)
            statement = select(table).order_by(*table.primary_key.columns)
            rows.extend(tuple(r) for r in _db.session.execute(statement))
        _db.session.rollback()
        return rows

    def start_web(self) -> None:
        self.log = (self.tmp / "gunicorn.log").open("w+")
        self.web = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")],
            env=self.env,
            cwd=self.tmp,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.web.poll() is None, self.web_log()
            probe = Browser(self.port)
            try:
                if probe.get("/healthz").status == 200:
                    return
            except OSError:
                pass
            finally:
                probe.close()
            time.sleep(0.3)
        raise AssertionError("gunicorn did not answer /healthz:\n" + self.web_log())

    def stop_web(self) -> None:
        for visitor in self.browsers:
            visitor.close()
        if self.web is not None and self.web.poll() is None:
            self.web.send_signal(signal.SIGTERM)
            try:
                self.web.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.web.kill()
                self.web.wait()
        if self.log is not None:
            self.log.close()

    def web_log(self) -> str:
        return (self.tmp / "gunicorn.log").read_text()[-5000:]

    def server_errors(self) -> list[str]:
        """Tracebacks and 5xx lines the web processes logged."""
        found = []
        for line in (self.tmp / "gunicorn.log").read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                if "Traceback" in line:
                    found.append(line)
                continue
            if (
                record.get("level") in ("ERROR", "CRITICAL")
                or int(record.get("status") or 0) >= 500
            ):
                found.append(line[:500])
        return found


def _drop(url: str) -> None:
    admin = make_url(url).set(database="postgres")
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            name = make_url(url).database
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def _database(tmp: Path, name: str) -> str:
    """A database for one drill: beside the tests' PostgreSQL one when set, else a SQLite file."""
    if PG_URL:
        url = make_url(PG_URL)
        url = url.set(database=f"{url.database}_{name}")
        rendered = url.render_as_string(hide_password=False)
        _drop(rendered)
        trial.ensure_database(rendered)
        return rendered
    return f"sqlite:///{tmp / 'drill.db'}"


@contextmanager
def running_stack(tmp: Path, name: str, **settings: str) -> Iterator[Stack]:
    """The production stack on a database of its own; yields inside this process's app context.

    `settings` are NEWSLETTER_* values without the prefix (e.g. SUBSCRIBE_RATE_LIMIT).
    """
    database = _database(tmp, name)
    if REDIS_URL:
        # The counts of an earlier run (a throttled address) must not carry into this one.
        with redis.Redis.from_url(REDIS_URL) as counts:
            counts.flushdb()
    secret = secrets.token_urlsafe(48)
    port = free_port()
    several = bool(PG_URL and REDIS_URL)
    with running_raw_smtp() as (handler, smtp_port):
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("NEWSLETTER_", "PROMETHEUS_", "WEB_CONCURRENCY"))
        }
        env.update(
            {
                "PATH": f"{BIN}:{env.get('PATH', '')}",
                "NEWSLETTER_ENV": "production",
                "NEWSLETTER_SECRET_KEY": secret,
                "NEWSLETTER_BASE_URL": BASE_URL,
                "NEWSLETTER_DATABASE_URL": database,
                "NEWSLETTER_INSTANCE_PATH": str(tmp / "instance"),
                "NEWSLETTER_SMTP_URL": f"smtp://{HOST}:{smtp_port}",
                "NEWSLETTER_BOUNCE_ADDRESS": BOUNCE_ADDRESS,
                "NEWSLETTER_BOUNCE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "NEWSLETTER_DEFAULT_FROM_ADDRESS": "news@news.example.org",
                "NEWSLETTER_BIND": f"127.0.0.1:{port}",
                # Two processes where they can share the rows and the counts.
                "WEB_CONCURRENCY": "2" if several else "1",
            }
        )
        if REDIS_URL:
            env["NEWSLETTER_REDIS_URL"] = REDIS_URL
        env.update({f"NEWSLETTER_{k}": v for k, v in settings.items()})
        config = make_config(
            database,
            tmp / "beside",
            SECRET_KEY=secret,
            BOUNCE_ADDRESS=BOUNCE_ADDRESS,
        )
        app = create_app(config)
        with app.app_context():
            _db.create_all()
            stack = Stack(tmp, port, env, app, handler, secret)
            try:
                yield stack
            finally:
                stack.stop_web()
                _db.session.remove()
                _db.engine.dispose()
                if PG_URL:
                    _drop(database)


@dataclass
class Reader:
    """A reader the drill made, with the genuine links their mails carry."""

    subscriber_id: int
    email: str
    confirm: str
    unsubscribe: dict[str, str]
    preferences: str


def add_readers(
    stack: Stack, count: int, slugs: Sequence[str], prefix: str = "reader"
) -> list[Reader]:
    """Sign readers up to `slugs` (pending, their confirmation mail queued) and return the tokens
    of their links, as the worker would write them."""
    made = []
    links = stack.links
    for n in range(count):
        email = f"{prefix}{n}@example.com"
        subs.subscribe(_db.session, email, slugs, subs.Origin("drill"))
        subscriber = _db.session.scalar(select(Subscriber).where(Subscriber.email_key == email))
        assert subscriber is not None
        rows = _db.session.scalars(
            select(Subscription).where(Subscription.subscriber_id == subscriber.id)
        ).all()
        reader = reader_of(subscriber)
        confirm = links.confirm_url(reader, [(r.id, r.nonce) for r in rows])
        made.append(
            Reader(
                subscriber.id,
                email,
                confirm.removeprefix(links.prefix("confirm")),
                {r.newsletter.slug: links.unsubscribe_token(reader, r.newsletter_id) for r in rows},
                links.preferences_token(reader),
            )
        )
    _db.session.commit()
    return made

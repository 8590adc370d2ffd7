"""The drills' machinery: private PostgreSQL and Redis servers, a logging SMTP server, and the
production stack (gunicorn with gunicorn.conf.py, `newsletter worker`) as real processes.

Every server here is the drill's own, on a free port of 127.0.0.1, so a drill may stop and
restart it without touching anything else on the machine.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
T = TypeVar("T")


def free_port() -> int:
    """A port nothing listens on (until someone binds it)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((HOST, port)) == 0


def wait_until(check: Callable[[], T], within: float, what: str, every: float = 0.25) -> T:
    """Call `check` until it returns something true; fail the drill after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:.0f} s (last: {value!r})")
        time.sleep(every)


def _stop(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    """Stop a process this harness started (its own session: its children go with it)."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def spawn(command: list[str], log: Path, **options: object) -> subprocess.Popen[bytes]:
    """Start a process in a session of its own, its output appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **options
        )


def _as_postgres(command: list[str]) -> list[str]:
    """initdb refuses root: run PostgreSQL's programs as the `postgres` user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def postgres_bin() -> Path | None:
    """The newest PostgreSQL server programs installed (Debian's layout), if any."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if not found:
        return None
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return None
    return Path(found[-1]).parent


class Postgres:
    """A PostgreSQL cluster of our own: initdb into a temporary folder, trust auth, own port."""

    def __init__(self, folder: Path) -> None:
        found = postgres_bin()
        assert found is not None
        self.bin = found
        self.folder = folder
        self.data = folder / "data"
        self.log = folder / "postgres.log"
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
            folder.chmod(0o755)
        subprocess.run(
            _as_postgres(
                [str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"]
                + ["--no-sync", "-E", "UTF8", "--locale", "C"]
            ),
            check=True,
            capture_output=True,
        )

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), *args]),
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses={HOST} -c max_connections=200"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._ctl("-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` ends every session (a restart), `immediate` is a crash."""
        self._ctl("-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists() and listening(self.port)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        engine = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)

    def drop_database(self, name: str) -> None:
        if not self.running():
            return
        engine = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            engine.dispose()


class Redis:
    """A redis-server of our own, without persistence."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = spawn(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            self.folder / "redis.log",
        )
        wait_until(lambda: listening(self.port), 20, "redis-server to listen")

    def stop(self) -> None:
        _stop(self.process)
        self.process = None


@dataclass(frozen=True)
class Mail:
    """One recipient of one message, as the SMTP server logged it."""

    to: str
    subject: str
    message_id: str


class SmtpLog:
    """A real SMTP server (aiosmtpd, tests/drills/smtp_log.py) that logs every recipient."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = folder / "smtp.log"
        self.log.touch()
        self.output = folder / "smtp.out"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"smtp://{HOST}:{self.port}"

    def start(self) -> None:
        self.process = spawn(
            [sys.executable, str(HERE / "smtp_log.py"), str(self.port), str(self.log)],
            self.output,
        )
        wait_until(lambda: listening(self.port), 20, "the SMTP server to listen")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        _stop(self.process, sig)
        self.process = None

    def mails(self) -> list[Mail]:
        lines = self.log.read_text(encoding="utf-8").splitlines()
        return [Mail(*line.split("\t", 2)) for line in lines if line.count("\t") == 2]

    def count(self, to: str | None = None, subject: str | None = None) -> int:
        return sum(
            1
            for m in self.mails()
            if (to is None or m.to == to) and (subject is None or subject in m.subject)
        )

    def recipients(self, subject: str) -> Counter[str]:
        """How many times each address got a message whose subject has `subject`."""
        return Counter(m.to for m in self.mails() if subject in m.subject)


@dataclass
class Reply:
    status: int
    body: str
    headers: dict[str, str]


def request(
    url: str, data: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> Reply:
    """One HTTP request; an HTTP error is a reply, a refused connection is status 0."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return Reply(response.status, response.read().decode(), dict(response.headers))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read().decode(), dict(exc.headers))
    except OSError as exc:
        return Reply(0, str(exc), {})


@dataclass
class Stack:
    """The production stack on the drill's servers: migrations, gunicorn, workers."""

    folder: Path
    database_url: str
    redis_url: str
    smtp_url: str
    extra: dict[str, str] = field(default_factory=dict)
    web: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(48))

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("NEWSLETTER_", "PROMETHEUS_", "WEB_CONCURRENCY"))
        }
        env.update(
            {
                "NEWSLETTER_ENV": "production",
                "NEWSLETTER_SECRET_KEY": self.secret_key,
                "NEWSLETTER_BASE_URL": "https://news.example.org",
                "NEWSLETTER_DATABASE_URL": self.database_url,
                "NEWSLETTER_REDIS_URL": self.redis_url,
                "NEWSLETTER_SMTP_URL": self.smtp_url,
                "NEWSLETTER_INSTANCE_PATH": str(self.folder / "instance"),
                "NEWSLETTER_BIND": f"{HOST}:{self.port}",
                "NEWSLETTER_TRUSTED_PROXIES": "1",
                "WEB_CONCURRENCY": "2",
                "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
                **self.extra,
            }
        )
        return env

    def newsletter(self, *args: str, timeout: float = 300) -> str:
        """Run `newsletter ARGS` against this stack; its output."""
        done = subprocess.run(
            [str(BIN / "newsletter"), *args],
            env=self.env,
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"newsletter {' '.join(args)}: {done.stderr[-3000:]}"
        return done.stdout

    def prepare(self, readers: int = 0) -> None:
        """Tables (`newsletter db upgrade`), the demo lists and items, `readers` on `daily`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.newsletter("db", "upgrade")
        self.newsletter("seed-demo")
        if readers:
            done = subprocess.run(
                [sys.executable, str(HERE / "seed.py"), "daily", str(readers)],
                env=self.env,
                cwd=self.folder,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, done.stderr[-3000:]

    def _spawn(self, command: list[str], log: str) -> subprocess.Popen[bytes]:
        return spawn(command, self.folder / log, env=self.env, cwd=self.folder)

    def start_web(self) -> None:
        self.web = self._spawn(
            [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")], "gunicorn.log"
        )
        wait_until(lambda: request(f"{self.base}/healthz").status == 200, 90, "gunicorn to answer")

    def start_workers(self, count: int = 1) -> None:
        for _ in range(count):
            self.workers.append(
                self._spawn([str(BIN / "newsletter"), "worker"], f"worker-{len(self.workers)}.log")
            )

    def kill_workers(self, sig: int = signal.SIGKILL) -> int:
        """Signal every running worker; how many there were."""
        alive = [w for w in self.workers if w.poll() is None]
        for worker in alive:
            _stop(worker, sig)
        self.workers = [w for w in self.workers if w.poll() is None]
        return len(alive)

    def stop(self) -> None:
        for worker in self.workers:
            _stop(worker)
        self.workers = []
        _stop(self.web)
        self.web = None

    def scalar(self, sql: str, **params: object) -> object:
        """One value read from the stack's database (a fresh connection each time)."""
        engine = create_engine(self.database_url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return conn.execute(text(sql), params).scalar()
        finally:
            engine.dispose()

    def signup(self, email: str, client: str | None = None, newsletter: str = "daily") -> Reply:
        """The form's POST /subscribe, from `client` (X-Forwarded-For, one trusted proxy)."""
        headers = {"X-Forwarded-For": client} if client else {}
        return request(
            f"{self.base}/subscribe", {"email": email, "newsletter": newsletter}, headers
        )

    def signups(self, calls: Iterable[tuple[str, str | None]], threads: int = 16) -> list[Reply]:
        """Many signups at once, as (email, client address) pairs, in order of the replies."""
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(lambda call: self.signup(*call), calls))

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.folder.glob("*.log")))


def accepted(reply: Reply) -> bool:
    """The reply a reader sees when the signup was taken."""
    return reply.status == 200 and (
        "Thank you for signing up" in reply.body or "Successfully subscribed" in reply.body
    )


def new_name(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


def start_digest(stack: Stack, subject: str) -> tuple[int, int]:
    """`newsletter digest send daily`: the digest's id and its readers; the workers send it."""
    out = stack.newsletter("digest", "send", "daily", "--subject", subject)
    # "Digest 3 ('Drill digest'): 20,000 readers."
    head, _, tail = out.partition(":")
    return int(head.split()[1]), int(tail.split()[0].replace(",", ""))


def ledger(stack: Stack, digest_id: int) -> dict[str, int]:
    """The digest's ledger rows by status, read from the database."""
    engine = create_engine(stack.database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT status, count(*) FROM delivery WHERE digest_id = :d GROUP BY status"),
                {"d": digest_id},
            ).all()
    finally:
        engine.dispose()
    return {str(status): int(count) for status, count in rows}


def quiet(smtp: SmtpLog, seconds: float, within: float) -> int:
    """Wait until the SMTP server has taken nothing new for `seconds`; its total then."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        now = smtp.log.stat().st_size
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return len(smtp.mails())
        time.sleep(0.25)
    raise AssertionError(f"the SMTP server was still taking mail after {within:.0f} s")


class Burst(threading.Thread):
    """Signups of new readers, one after another, each from its own client address, until
    `count` are sent: what a busy site's boxes send while a drill breaks something."""

    def __init__(self, stack: Stack, prefix: str, count: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.stack, self.prefix, self.count, self.every = stack, prefix, count, every
        # (address, when it was sent on the monotonic clock, the reply)
        self.sent: list[tuple[str, float, Reply]] = []

    def run(self) -> None:
        for n in range(self.count):
            email = f"{self.prefix}{n}@signups.example"
            when = time.monotonic()
            reply = self.stack.signup(email, f"192.0.2.{n % 250 + 1}")
            self.sent.append((email, when, reply))
            time.sleep(self.every)

    def taken(self) -> list[str]:
        return [email for email, _, reply in self.sent if accepted(reply)]

    def refused(self) -> list[Reply]:
        return [reply for _, _, reply in self.sent if not accepted(reply)]

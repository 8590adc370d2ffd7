"""Throughput of POST /subscribe under gunicorn, against a bare Flask endpoint in the same setup.

Run from the project root:

    .venv/bin/python bench/subscribe.py [--duration 10] [--connections 8]
    .venv/bin/python bench/subscribe.py --postgres [--redis redis://127.0.0.1:6379/0]

Both apps run under gunicorn with the same flags (2 sync workers on 127.0.0.1) on a fresh
SQLite database in a temporary instance folder (with --postgres: a scratch PostgreSQL database,
and Redis for the rate limits); wrk (bench/subscribe.lua) posts the signup form with a new
address on every request. The two are measured in turns, and the medians compared. The
signups the app queued are applied afterwards, as the worker would, and checked.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, request
from markupsafe import escape
from sqlalchemy import Select

BENCH_DIR = Path(__file__).resolve().parent
LUA_SCRIPT = BENCH_DIR / "subscribe.lua"
TARGET_RATIO = 0.4
SLUG = "daily"
BARE_APP = "subscribe:create_bare_app()"
NEWSLETTER_APP = "newsletter:create_app()"


def create_bare_app() -> Flask:
    """The baseline: one POST endpoint that reads the signup form and answers a little HTML."""
    app = Flask(__name__)

    @app.post("/subscribe")
    def subscribe() -> str:
        email = request.form.get("email", "")
        slugs = ", ".join(request.form.getlist("newsletter"))
        return f"<!doctype html><title>Thanks</title><p>{escape(email)} joined {escape(slugs)}</p>"

    return app


@dataclass
class Server:
    """A gunicorn arbiter this script started, and where it listens."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class WrkResult:
    """What one wrk run reports (see the done() function of subscribe.lua)."""

    requests: int
    ok: int
    other: int
    sent: int
    duration_us: int
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    p50_us: int
    p99_us: int

    @property
    def rate(self) -> float:
        """200 responses per second."""
        return self.ok / (self.duration_us / 1e6)

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait_ready(server: Server, timeout: float = 30.0) -> None:
    """Wait until the server answers HTTP at all (a 405 to this GET will do)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} server exited:\n{_log_tail(server.log)}")
        try:
            with urllib.request.urlopen(server.url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    tail = _log_tail(server.log)
    raise RuntimeError(f"{server.name} server not ready after {timeout} s:\n{tail}")


@contextmanager
def gunicorn(name: str, app_spec: str, workers: int, workdir: Path) -> Iterator[Server]:
    """Run one app under gunicorn for the block; the same flags for every app."""
    port = free_port()
    log = workdir / f"gunicorn-{name}.log"
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers",
        str(workers),
        "--worker-class",
        "sync",
        "--bind",
        f"127.0.0.1:{port}",
        "--pythonpath",
        str(BENCH_DIR),
        "--log-level",
        "warning",
        app_spec,
    ]
    with log.open("wb") as out:
        # Its own session: Ctrl-C in the terminal reaches us, and we stop it in order.
        # Started in the work folder: gunicorn would read the project's ./gunicorn.conf.py,
        # whose settings (threads, access log, its checks) are not the same for both apps.
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir
        )
    server = Server(name, f"http://127.0.0.1:{port}/subscribe", process, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave the server running.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            _stop(process)
        finally:
            signal.signal(signal.SIGINT, previous)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop gunicorn gracefully (in-flight requests finish), then by force."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            # The arbiter is not reaped yet, so its process group is still ours.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_wrk(url: str, seconds: float, connections: int, threads: int, tag: str) -> WrkResult:
    """One wrk run against a server; raises if wrk fails or prints no result."""
    command = [
        "wrk",
        "--threads",
        str(min(threads, connections)),
        "--connections",
        str(connections),
        "--duration",
        f"{seconds:g}s",
        "--timeout",
        "10s",
        "--script",
        str(LUA_SCRIPT),
        url,
        "--",
        tag,
        SLUG,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return WrkResult(**json.loads(line.removeprefix("BENCH_JSON ")))
    raise RuntimeError(f"wrk gave no result (exit {done.returncode}):\n{done.stdout}{done.stderr}")


def _wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (done.stdout or done.stderr).split("Copyright")[0].strip()


DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/newsletter_bench"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def _environment(
    instance: Path, database_url: str | None = None, redis_url: str | None = None
) -> dict[str, str]:
    """NEWSLETTER_* settings for a production-like app on a fresh SQLite file, or on the
    PostgreSQL database and Redis given."""
    env = {
        "NEWSLETTER_ENV": "production",
        "NEWSLETTER_INSTANCE_PATH": str(instance),
        "NEWSLETTER_DATABASE_URL": database_url or f"sqlite:///{instance / 'newsletter.db'}",
        "NEWSLETTER_SECRET_KEY": secrets.token_urlsafe(32),
        "NEWSLETTER_BASE_URL": "https://news.example.org",
        # Measure the signup, not the 429 page.
        "NEWSLETTER_SUBSCRIBE_RATE_LIMIT": "1000000 per minute",
    }
    if redis_url:
        env["NEWSLETTER_REDIS_URL"] = redis_url
    return env


def use_environment(env: dict[str, str]) -> None:
    """Replace this process's NEWSLETTER_* settings (the servers it starts inherit them)."""
    for name in [n for n in os.environ if n.startswith("NEWSLETTER_")]:
        del os.environ[name]
    os.environ.update(env)


def prepare_database() -> None:
    """Create the tables and load the demo newsletters (as init-db and seed-demo do); a
    PostgreSQL database is emptied first, and Redis's counts cleared."""
    from flask_migrate import upgrade
    from sqlalchemy import text

    from newsletter import create_app, demo, trial
    from newsletter.extensions import db, limiter

    url = os.environ["NEWSLETTER_DATABASE_URL"]
    if url.startswith("postgresql"):
        trial.ensure_database(url)
    app = create_app()
    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            with db.engine.begin() as conn:
                conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        upgrade()
        demo.load(db.session)
        if os.environ.get("NEWSLETTER_REDIS_URL"):
            limiter.reset()
        db.engine.dispose()


def apply_queued_signups() -> int:
    """Apply every queued signup, as `newsletter worker` does; return how many."""
    from sqlalchemy.orm import Session

    from newsletter import create_app, signups
    from newsletter.extensions import db

    app = create_app()
    applied = 0
    with app.app_context():
        runner = signups.SignupRunner()
        with Session(db.engine) as session:
            while found := runner.step(session):
                applied += found
        db.engine.dispose()
    return applied


@dataclass
class Counts:
    """Rows the signups left behind."""

    subscribers: int
    subscriptions: int
    confirmations_queued: int
    consent_events: int


def count_rows() -> Counts:
    """What the signups left in the database."""
    from sqlalchemy import func, select

    from newsletter import create_app
    from newsletter.extensions import db
    from newsletter.models import (
        ConsentEvent,
        MailKind,
        OutboxMessage,
        OutboxStatus,
        Subscriber,
        Subscription,
    )

    app = create_app()
    with app.app_context():

        def count(query: Select[Any]) -> int:
            return int(db.session.scalar(query) or 0)

        counts = Counts(
            subscribers=count(select(func.count(Subscriber.id))),
            subscriptions=count(select(func.count(Subscription.id))),
            confirmations_queued=count(
                select(func.count(OutboxMessage.id)).where(
                    OutboxMessage.kind == MailKind.CONFIRMATION,
                    OutboxMessage.status == OutboxStatus.QUEUED,
                )
            ),
            consent_events=count(select(func.count(ConsentEvent.id))),
        )
        db.session.remove()
        db.engine.dispose()
    return counts


def verify(results: list[WrkResult], counts: Counts) -> list[str]:
    """Check every signup was a real one; return the problems found."""
    ok = sum(r.ok for r in results)
    sent = sum(r.sent for r in results)
    other = sum(r.other for r in results)
    errors = sum(r.socket_errors for r in results)
    c = counts
    print(
        f"verification: {ok} responses 200, {other} other statuses, {errors} socket errors; "
        f"{sent} requests sent"
    )
    print(
        f"  database: {c.subscribers} subscribers, {c.subscriptions} subscriptions, "
        f"{c.confirmations_queued} confirmation mails queued, {c.consent_events} consent events"
    )
    problems = []
    if other:
        problems.append(f"{other} responses were not 200")
    # wrk stops with requests in flight: the server finishes them, wrk never counts them.
    if not ok <= c.subscribers <= sent:
        problems.append(f"{c.subscribers} subscribers, expected between {ok} and {sent}")
    else:
        print(
            f"  subscribers = 200 responses + {c.subscribers - ok} requests still in flight "
            "when wrk stopped (finished by the server, not counted by wrk)"
        )
    if c.subscriptions != c.subscribers:
        problems.append(f"{c.subscriptions} subscriptions for {c.subscribers} subscribers")
    if c.confirmations_queued != c.subscribers:
        problems.append(f"{c.confirmations_queued} confirmations for {c.subscribers} subscribers")
    if c.consent_events != 2 * c.subscribers:
        problems.append(f"{c.consent_events} consent events, expected {2 * c.subscribers}")
    if not problems:
        print("  OK: one subscriber, one pending subscription, one queued confirmation each")
    return problems


def _line(label: str, result: WrkResult) -> str:
    return (
        f"  {label:<11} {result.rate:8.1f} req/s  ({result.ok} x 200, "
        f"p50 {result.p50_us / 1000:.1f} ms, p99 {result.p99_us / 1000:.1f} ms"
        + (f", {result.socket_errors} socket errors" if result.socket_errors else "")
        + (f", {result.other} NOT 200" if result.other else "")
        + ")"
    )


def benchmark(args: argparse.Namespace, workdir: Path) -> int:
    """Start both servers, measure them in turns, verify the database, print the summary."""
    instance = workdir / "instance"
    use_environment(_environment(instance, args.postgres, args.redis if args.postgres else None))
    prepare_database()

    token = secrets.token_hex(4)
    runs = 0

    def measure(server: Server, seconds: float) -> WrkResult:
        nonlocal runs
        runs += 1
        return run_wrk(server.url, seconds, args.connections, args.threads, f"{token}-{runs}")

    print(
        f"load generator: {_wrk_version()}, {args.connections} connections, "
        f"{min(args.threads, args.connections)} threads, {args.duration:g} s per run after "
        f"{args.warmup:g} s warm-up, {args.rounds} rounds"
    )
    where = (
        f"PostgreSQL ({args.postgres}) and Redis ({args.redis})"
        if args.postgres
        else f"SQLite in {instance}{' (kept)' if args.keep else ''}"
    )
    print(
        f"servers: gunicorn, {args.workers} sync workers each, 127.0.0.1; {where}; sync "
        "workers close every connection, so there is no keep-alive"
    )
    bare_runs: list[WrkResult] = []
    signup_runs: list[WrkResult] = []
    with (
        gunicorn("bare", BARE_APP, args.workers, workdir) as bare,
        gunicorn("subscribe", NEWSLETTER_APP, args.workers, workdir) as newsletter,
    ):
        if args.warmup > 0:
            measure(bare, args.warmup)
            signup_runs.append(measure(newsletter, args.warmup))
        for round_no in range(1, args.rounds + 1):
            # Alternate which goes first, so a slow patch of the machine hits both.
            order = [("bare", bare), ("subscribe", newsletter)]
            if round_no % 2 == 0:
                order.reverse()
            print(f"round {round_no}:")
            for label, server in order:
                result = measure(server, args.duration)
                (bare_runs if server is bare else signup_runs).append(result)
                print(_line(label, result), flush=True)
    # Stopped gracefully: the last in-flight requests have been committed.
    started = time.monotonic()
    applied = apply_queued_signups()
    took = time.monotonic() - started
    print(f"queued signups applied afterwards, as the worker does: {applied} in {took:.1f} s")
    problems = verify(signup_runs, count_rows())
    measured = signup_runs[-args.rounds :]
    bare_rate = statistics.median(r.rate for r in bare_runs)
    signup_rate = statistics.median(r.rate for r in measured)
    ratio = signup_rate / bare_rate
    pairs = zip(bare_runs, measured, strict=True)
    per_round = ", ".join(f"{s.rate / b.rate:.2f}" for b, s in pairs)
    print(f"ratio per round: {per_round}")
    for problem in problems:
        print(f"VERIFICATION FAILED: {problem}")
    print(f"bare flask: {bare_rate:.1f} req/s (median of {len(bare_runs)})")
    print(f"subscribe: {signup_rate:.1f} req/s (median of {len(measured)})")
    verdict = "" if ratio >= TARGET_RATIO else "  <-- BELOW TARGET"
    print(f"ratio subscribe/bare: {ratio:.2f} (target >= {TARGET_RATIO}){verdict}")
    return 1 if problems else 0


def _form_post(body: bytes) -> dict[str, Any]:
    """The WSGI environment of one signup form's POST, as a server would pass it."""
    return {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/subscribe",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_ACCEPT": "text/html",
        "HTTP_USER_AGENT": "bench/subscribe.py",
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def cpu_per_signup(app: Any, count: int, tag: str) -> float:
    """Milliseconds of this thread's CPU per signup, the app's WSGI function called directly."""
    statuses: list[str] = []

    def start_response(status: str, _headers: object, _exc_info: object = None) -> None:
        statuses.append(status)

    posts = [
        _form_post(f"email=bench-{tag}-n{n}%40example.com&newsletter={SLUG}".encode())
        for n in range(count)
    ]
    started = time.thread_time()
    for environ in posts:
        answer = app(environ, start_response)
        for _chunk in answer:
            pass
        getattr(answer, "close", lambda: None)()
    took = time.thread_time() - started
    if any(not status.startswith("200") for status in statuses):
        raise RuntimeError(f"a signup was not answered 200: {sorted(set(statuses))}")
    return took / count * 1000


def in_process(args: argparse.Namespace, workdir: Path) -> int:
    """Both apps in this process, no server: what the app itself costs per signup."""
    use_environment(_environment(workdir / "instance"))
    prepare_database()
    from newsletter import create_app

    apps = {"subscribe": create_app(), "bare": create_bare_app()}
    best = {name: float("inf") for name in apps}
    token = secrets.token_hex(4)
    for round_no in range(1, args.rounds + 1):
        for name, app in apps.items():
            taken = cpu_per_signup(app, args.signups, f"{token}-{name}-{round_no}")
            best[name] = min(best[name], taken)
    print(
        f"in process, CPU time per signup, best of {args.rounds} x {args.signups}: "
        f"subscribe {best['subscribe']:.3f} ms, bare {best['bare']:.3f} ms, "
        f"ratio {best['bare'] / best['subscribe']:.2f}"
    )
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per run [10]")
    parser.add_argument("--connections", type=int, default=8, help="open connections [8]")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads [2]")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each app [3]")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up [2]")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per app [2]")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=DEFAULT_POSTGRES,
        help=f"on PostgreSQL and Redis instead of SQLite [{DEFAULT_POSTGRES}]; emptied first",
    )
    parser.add_argument("--redis", default=DEFAULT_REDIS, help=f"with --postgres [{DEFAULT_REDIS}]")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="no servers: call each app's WSGI function directly and time its CPU per signup",
    )
    parser.add_argument(
        "--signups", type=int, default=1500, help="signups per round with --in-process [1500]"
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.connections < 1 or args.rounds < 1 or args.workers < 1:
        parser.error("--duration, --connections, --rounds and --workers must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Parse the options, check for wrk, run the benchmark in a temporary folder."""
    args = _parse_args(argv)
    if not args.in_process and shutil.which("wrk") is None:
        print(
            "bench/subscribe.py needs wrk, the HTTP load generator: apt-get install wrk",
            file=sys.stderr,
        )
        return 2
    # Ctrl-C even when started in the background by a shell (which ignores SIGINT there);
    # SIGTERM and SIGHUP unwind the same way, so the servers are stopped on the way out.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda signum, _frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="newsletter-bench-"))
    try:
        return in_process(args, workdir) if args.in_process else benchmark(args, workdir)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

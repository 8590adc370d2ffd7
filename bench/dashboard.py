"""Median latency of the admin dashboard and subscriber pages at 1,000,000 subscriptions.

Run from the project root:

    .venv/bin/python bench/dashboard.py [--rows 1000000] [--repeat 15]
    .venv/bin/python bench/dashboard.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/

It makes the tables by the migrations in a fresh SQLite file in a temporary folder (or in a
scratch PostgreSQL database it creates and drops), fills them with generated subscriptions over
five newsletters and about 400 days, signs in through the login form with the Flask test client
and times each page in process. The baseline, timed in the same rounds, is the newsletters page:
an authenticated admin page that reads five rows.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, create_engine, event, insert, make_url, select, text

TARGET_MS = 200.0
DAYS = 400
# Each newsletter's share of the subscriptions, largest first (the demo site's spread).
SHARES = (0.40, 0.25, 0.15, 0.12, 0.08)
# People per subscription: many readers take more than one list.
PEOPLE_PER_SUBSCRIPTION = 0.6
CHUNK = 20_000
ADMIN_EMAIL = "bench@news.example.org"
NAMES = ("olena", "taras", "kate", "iryna", "andriy", "oksana", "maria", "dmytro", "john", "anna")
DOMAINS = ("gmail.com", "ukr.net", "i.ua", "outlook.com", "proton.me", "example.org")


def address(n: int) -> str:
    """The address of generated subscriber n."""
    return f"{NAMES[n % len(NAMES)]}.{n}@{DOMAINS[n % len(DOMAINS)]}"


@dataclass
class Filled:
    """What the generator wrote, to check the pages against."""

    subscribers: int = 0
    subscriptions: int = 0
    newsletters: list[tuple[str, str]] = field(default_factory=list)  # (slug, name)
    # (newsletter index, status) -> subscriptions
    counts: Counter[tuple[int, str]] = field(default_factory=Counter)
    lists_of: dict[int, int] = field(default_factory=dict)  # subscriber id -> subscriptions
    seconds: float = 0.0


def _subscription(
    rnd: random.Random, newsletter_id: int, subscriber_id: int, subscribed: datetime, now: datetime
) -> dict[str, Any]:
    """One subscription: 8 % pending, 70 % confirmed, the rest gone after confirming."""
    draw = rnd.random()
    status, confirmed, unsubscribed = "pending", None, None
    if draw >= 0.08:
        confirmed = min(subscribed + timedelta(seconds=rnd.uniform(60, 2 * 86400)), now)
        if draw < 0.78:
            status = "confirmed"
        else:
            status = "unsubscribed" if draw < 0.96 else "bounced" if draw < 0.99 else "complained"
            unsubscribed = confirmed + (now - confirmed) * rnd.random()
    return {
        "subscriber_id": subscriber_id,
        "newsletter_id": newsletter_id,
        "status": status,
        "nonce": "bench",
        "source": "bench",
        "subscribed_at": subscribed,
        "confirmed_at": confirmed,
        "unsubscribed_at": unsubscribed,
    }


def fill(engine: Engine, rows: int, now: datetime, seed: int = 42) -> Filled:
    """Write the newsletters, the subscribers and `rows` subscriptions, ids in signup order."""
    from newsletter.models import Newsletter, Subscriber, Subscription

    rnd = random.Random(seed)
    started = time.perf_counter()
    filled = Filled(subscriptions=rows)
    people = max(1, round(rows * PEOPLE_PER_SUBSCRIPTION))
    filled.subscribers = people
    sizes = [round(rows * share) for share in SHARES]
    sizes[0] += rows - sum(sizes)
    start = now - timedelta(days=DAYS)
    with engine.begin() as conn:
        filled.newsletters = [(f"list-{i + 1}", f"Bench List {i + 1}") for i in range(len(SHARES))]
        conn.execute(
            insert(Newsletter.__table__),
            [
                {"slug": slug, "name": name, "position": i}
                for i, (slug, name) in enumerate(filled.newsletters)
            ],
        )
        ids = dict(conn.execute(select(Newsletter.slug, Newsletter.id)).tuples().all())
        for first in range(1, people + 1, CHUNK):
            conn.execute(
                insert(Subscriber.__table__),
                [
                    {
                        "id": n,
                        "email": address(n),
                        "email_key": address(n),
                        "token_key": "bench",
                        "created_at": start,
                    }
                    for n in range(first, min(first + CHUNK, people + 1))
                ],
            )
        # Who is on which list, in a random order; signup times sorted, so that ids, like in
        # a real table, grow with the signup time and "newest first" is also "highest id first".
        pairs = [
            (index, subscriber)
            for index, size in enumerate(sizes)
            for subscriber in rnd.sample(range(1, people + 1), min(size, people))
        ]
        rnd.shuffle(pairs)
        seconds = sorted(rnd.uniform(0, DAYS * 86400) for _ in pairs)
        for first in range(0, len(pairs), CHUNK):
            chunk = []
            for (index, subscriber), offset in zip(
                pairs[first : first + CHUNK], seconds[first : first + CHUNK], strict=True
            ):
                slug = filled.newsletters[index][0]
                row = _subscription(
                    rnd, ids[slug], subscriber, start + timedelta(seconds=offset), now
                )
                filled.counts[index, row["status"]] += 1
                filled.lists_of[subscriber] = filled.lists_of.get(subscriber, 0) + 1
                chunk.append(row)
            conn.execute(insert(Subscription.__table__), chunk)
        if conn.dialect.name == "postgresql":
            # The ids were given explicitly; the next signup must not collide with them.
            conn.execute(
                text("SELECT setval(pg_get_serial_sequence('subscriber', 'id'), :n)"),
                {"n": people},
            )
    filled.subscriptions = len(pairs)
    filled.seconds = time.perf_counter() - started
    return filled


def _fill_engine(url: str) -> Engine:
    """An engine for the bulk load: on SQLite, no journal and no fsync (a crash loses a copy)."""
    engine = create_engine(url)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=OFF")
            cursor.execute("PRAGMA synchronous=OFF")
            cursor.execute("PRAGMA cache_size=-524288")
            cursor.close()

    return engine


def _after_fill(engine: Engine) -> None:
    """On PostgreSQL, what autovacuum would soon do: statistics and the visibility map."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


@contextmanager
def scratch_postgres(server_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for the block, dropped afterwards."""
    name = f"newsletter_bench_{secrets.token_hex(4)}"
    server = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with server.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        server.dispose()


def make_app(database_url: str, instance: Path) -> Flask:
    """The app in production mode on the given database; no NEWSLETTER_* from the shell."""
    from newsletter import create_app

    for name in [n for n in os.environ if n.startswith("NEWSLETTER_")]:
        del os.environ[name]
    return create_app(
        {
            "ENV": "production",
            "INSTANCE_PATH": str(instance),
            "DATABASE_URL": database_url,
            "SECRET_KEY": secrets.token_urlsafe(32),
            "BASE_URL": "https://news.example.org",
            # The session cookie is Secure in production: the test client must speak https.
            "PREFERRED_URL_SCHEME": "https",
        }
    )


_CSRF = re.compile(r'name="csrf_token"(?: type="hidden")? value="([^"]+)"')


def sign_in(client: FlaskClient, email: str, password: str) -> None:
    """Sign in through the login form, with the CSRF token the page carries."""
    form = client.get("/admin/login")
    match = _CSRF.search(form.get_data(as_text=True))
    if match is None:
        raise RuntimeError("no CSRF token on /admin/login")
    # Over https, Flask-WTF also wants a same-origin Referer, as a browser sends.
    response = client.post(
        "/admin/login",
        data={"email": email, "password": password, "csrf_token": match[1]},
        headers={"Referer": form.request.url},
    )
    if response.status_code != 302:
        raise RuntimeError(f"sign-in failed: {response.status_code}")


@dataclass
class Page:
    """A page to time, and what its HTML must contain for the answer to count."""

    label: str
    path: str
    expect: list[str]
    times: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1000


def pages(filled: Filled) -> list[Page]:
    """The baseline, the dashboard, two filters (a common and a rare one) and a search."""
    (big_slug, big_name), (small_slug, small_name) = filled.newsletters[0], filled.newsletters[-1]
    last = len(filled.newsletters) - 1
    rare = min(filled.counts[last, "complained"], 50)
    # One person, found by part of the address: LIKE '%...%' has no index to use.
    person = next(n for n in range(filled.subscribers // 2, 0, -1) if filled.lists_of.get(n))
    needle = address(person).split("@")[0] + "@"
    dashboard_rows = [
        f"<td>{filled.counts[i, 'pending']:,}</td><td>{filled.counts[i, 'confirmed']:,}</td>"
        for i in range(len(filled.newsletters))
    ]
    return [
        Page("baseline", "/admin/newsletters", [big_name, small_name]),
        Page("dashboard", "/admin/", dashboard_rows),
        Page(
            "filtered",
            "/admin/subscribers?" + urlencode({"newsletter": big_slug, "status": "confirmed"}),
            [],
        ),
        Page(
            "filtered, rare",
            "/admin/subscribers?" + urlencode({"newsletter": small_slug, "status": "complained"}),
            [f'{small_name}: <span class="state state-complained">'] * rare
            if rare
            else ["No subscriber matches."],
        ),
        Page(
            "search",
            "/admin/subscribers?q=" + quote(needle),
            [address(person), "1 person"],
        ),
    ]


def check(page: Page, html: str, filled: Filled) -> str | None:
    """What is wrong with one answer, or None."""
    for snippet in set(page.expect):
        wanted = page.expect.count(snippet)
        if html.count(snippet) < wanted:
            return f"{page.label}: {snippet!r} found {html.count(snippet)} times, not {wanted}"
    if page.label == "filtered":
        name = filled.newsletters[0][1]
        people = html.count('<td><a href="/admin/subscribers/')
        confirmed = html.count(f'{name}: <span class="state state-confirmed">')
        if people != 50 or confirmed != 50:
            return "filtered: not 50 people confirmed on the largest list"
    return None


def measure(client: FlaskClient, timed: list[Page], repeat: int, filled: Filled) -> list[str]:
    """One warm-up round, then `repeat` rounds in turns; return the problems found."""
    problems: list[str] = []
    for round_no in range(repeat + 1):
        # Rotate the order, so a slow patch of the machine does not fall on one page only.
        shift = round_no % len(timed)
        for page in timed[shift:] + timed[:shift]:
            started = time.perf_counter()
            response = client.get(page.path)
            html = response.get_data(as_text=True)
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                problems.append(f"{page.label}: status {response.status_code}")
            elif round_no == 0 and (problem := check(page, html, filled)):
                problems.append(problem)
            if round_no:
                page.times.append(elapsed)
        if round_no == 0 and problems:
            break
    return problems


def report(timed: list[Page]) -> None:
    """Each page's median, spread and ratio to the baseline; the dashboard against its target."""
    baseline = timed[0].median_ms
    for page in timed:
        spread = f"{min(page.times) * 1000:.1f}-{max(page.times) * 1000:.1f}"
        print(
            f"  {page.label:<15} {page.median_ms:9.1f} ms  x{page.median_ms / baseline:7.1f}"
            f"  (range {spread} ms)  {page.path}"
        )
    dashboard = next(p for p in timed if p.label == "dashboard")
    verdict = "OK" if dashboard.median_ms < TARGET_MS else "<-- OVER TARGET"
    print(
        f"dashboard: {dashboard.median_ms:.1f} ms (target < {TARGET_MS:.0f} ms) {verdict}; "
        f"{dashboard.median_ms / baseline:.1f} x the baseline page"
    )


def benchmark(args: argparse.Namespace, workdir: Path, database_url: str) -> int:
    """Migrate, fill, sign in, time the pages and print the figures."""
    from flask_migrate import upgrade

    from newsletter import accounts
    from newsletter.extensions import db
    from newsletter.models import Role

    app = make_app(database_url, workdir / "instance")
    with app.app_context():
        upgrade()
        db.engine.dispose()
    engine = _fill_engine(database_url)
    try:
        filled = fill(engine, args.rows, datetime.now(UTC))
        _after_fill(engine)
    finally:
        engine.dispose()
    dialect = make_url(database_url).get_backend_name()
    print(
        f"database: {dialect}, {filled.subscriptions:,} subscriptions of {filled.subscribers:,} "
        f"people over {len(filled.newsletters)} newsletters and {DAYS} days, "
        f"filled in {filled.seconds:.0f} s" + (f" ({workdir}, kept)" if args.keep else ""),
        flush=True,
    )
    password = secrets.token_urlsafe(16)
    with app.app_context():
        accounts.create_admin(db.session, ADMIN_EMAIL, password, Role.ADMIN)
        db.session.remove()
    client = app.test_client()
    sign_in(client, ADMIN_EMAIL, password)
    timed = pages(filled)
    problems = measure(client, timed, args.repeat, filled)
    with app.app_context():
        db.engine.dispose()
    for problem in problems:
        print(f"VERIFICATION FAILED: {problem}")
    if problems:
        return 1
    print(f"median of {args.repeat} after a warm-up, Flask test client in process:")
    report(timed)
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="subscriptions [1000000]")
    parser.add_argument("--repeat", type=int, default=15, help="timed requests per page [15]")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="a PostgreSQL server (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/): "
        "run in a scratch database made there, instead of SQLite",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.rows < 100 or args.repeat < 1:
        parser.error("--rows must be at least 100 and --repeat at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the benchmark in a temporary folder, clean up."""
    args = _parse_args(argv)
    # SIGTERM and SIGHUP unwind like Ctrl-C, so the scratch database is dropped on the way out.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda signum, _frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="newsletter-bench-"))
    try:
        if args.postgres:
            with scratch_postgres(args.postgres) as url:
                return benchmark(args, workdir, url)
        return benchmark(args, workdir, f"sqlite:///{workdir / 'newsletter.db'}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

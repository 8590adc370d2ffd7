"""Returned-mail ingest from a Maildir into the database, against the standard library's parser.

Run from the project root:

    .venv/bin/python bench/bounces.py [--messages 100000] [--rounds 3] [--dir /dev/shm]
    .venv/bin/python bench/bounces.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/

It makes a SQLite database (or, with --postgres URL, a scratch PostgreSQL database on that
server, dropped at the end) by the migrations holding one newsletter, N readers and a sent digest
with one delivery each, then writes N messages made from the samples in tests/data/bounces/ into
a Maildir, each about its own reader: their address, the real VERP tag of their delivery
(`newsletter.links.Links.envelope_sender`), our Message-ID of it, and for the unsubscribe sample
the reader's own signed mailto address. Then it times, in alternating rounds over the same files:

- baseline: list new/, read each file, `email.message_from_bytes` (policy compat32);
- ours: the ingest as `newsletter bounces ingest MAILDIR` runs it (`bounces.ingest.ingest_source`:
  read, classify, match by tag, record each event, suppress, unsubscribe, mark handled), in a
  fresh process over a fresh copy of the database and of the Maildir, timing the ingest alone.

Each run's outcomes are checked against the samples' kinds. Then the same ingest over N/10 and
over N messages for each process's peak RSS (getrusage), and once more over an ingested Maildir,
which must find nothing to handle.
"""

from __future__ import annotations

import argparse
import email
import json
import mailbox
import os
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from newsletter.bounces.parse import Kind, parse

TARGET_RATIO = 0.3
TARGET_RSS_GROWTH = 1.2
BOUNCE_ADDRESS = "bounces@news.example.org"
UNSUBSCRIBE_ADDRESS = "unsubscribe@news.example.org"
CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "bounces"
DIGEST_KEY = "b3nchd1g35t0000"
# What each sample's kind comes out as once ingested.
OUTCOME = {
    Kind.HARD: "hard",
    Kind.SOFT: "soft",
    Kind.COMPLAINT: "complaint",
    Kind.AUTOREPLY: "autoreply",
    Kind.OTHER: "other",
    Kind.UNSUBSCRIBE: "unsubscribe",
}


def settings(folder: Path, database_url: str | None = None) -> dict[str, str]:
    """The environment of the app the ingest runs in: a database file in `folder`, or the URL."""
    return {
        "NEWSLETTER_ENV": "testing",
        "NEWSLETTER_SECRET_KEY": "bench-bounces-secret-key-0123456789",
        "NEWSLETTER_BASE_URL": "https://news.example.org",
        "NEWSLETTER_INSTANCE_PATH": str(folder / "instance"),
        "NEWSLETTER_DATABASE_URL": database_url or f"sqlite:///{folder / 'bench.db'}",
        "NEWSLETTER_BOUNCE_ADDRESS": BOUNCE_ADDRESS,
        "NEWSLETTER_UNSUBSCRIBE_MAILTO": UNSUBSCRIBE_ADDRESS,
    }


def app_from(env: dict[str, str]):  # type: ignore[no-untyped-def]
    os.environ.update(env)
    from newsletter import create_app

    return create_app()


class Template:
    """A corpus sample and what in it changes from one generated message to the next."""

    def __init__(self, path: Path) -> None:
        self.name = path.stem
        self.data = path.read_bytes()
        report = parse(
            self.data, bounce_address=BOUNCE_ADDRESS, unsubscribe_address=UNSUBSCRIBE_ADDRESS
        )
        if not (report.recipients and report.tag):
            raise SystemExit(f"{path.name}: a sample needs a recipient and a tag")
        self.kind = report.kind
        self.local, _, self.domain = report.recipients[0].rpartition("@")
        self.tag = report.tag
        self.message_id = report.message_id
        self._local = re.compile(re.escape(self.local.encode()), re.IGNORECASE)

    def make(self, number: int, links) -> bytes:  # type: ignore[no-untyped-def]
        """The sample about reader `number`: their address, their delivery's tag and id."""
        from newsletter.links import DELIVERY, Reader

        data = self._local.sub(self.reader(number).encode(), self.data)
        if self.kind == Kind.UNSUBSCRIBE:
            mine = links.unsubscribe_address(Reader(number + 1, f"k{number}"), 1)
            found = f"unsubscribe+{self.tag}@news.example.org"
        else:
            mine = links.envelope_sender(DELIVERY, number + 1)
            found = f"bounces+{self.tag}@news.example.org"
        data = re.sub(re.escape(found).encode(), mine.encode(), data, flags=re.IGNORECASE)
        if self.message_id:
            ours = f"{DIGEST_KEY}.{number + 1}@news.example.org"
            data = data.replace(self.message_id.encode(), ours.encode())
        return data

    def reader(self, number: int) -> str:
        return f"reader.{number}"

    def address(self, number: int) -> str:
        return f"{self.reader(number)}@{self.domain}"


def templates() -> list[Template]:
    return [Template(path) for path in sorted(CORPUS.glob("*.eml"))]


def write_maildir(path: Path, count: int, samples: list[Template], links) -> int:  # type: ignore[no-untyped-def]
    """N messages, the samples in turn, named as Maildir names them; returns the bytes written.

    Straight into new/, without `mailbox.Maildir.add`'s fsync per message: nobody reads the
    folder while it is written, and losing it in a crash costs only a rerun.
    """
    mailbox.Maildir(path, create=True).close()
    size = 0
    stamp, pid = int(time.time()), os.getpid()
    for number in range(count):
        data = samples[number % len(samples)].make(number, links)
        (path / "new" / f"{stamp}.M{number}P{pid}.bench").write_bytes(data)
        size += len(data)
    return size


class Databases:
    """The prepared database and a fresh copy of it for each ingest: a SQLite file copied, or
    a PostgreSQL database made from the prepared one as its template."""

    def __init__(self, workdir: Path, server: str | None) -> None:
        self.workdir = workdir
        self.server = server
        self.template = f"newsletter_bench_{secrets.token_hex(4)}" if server else None
        self._made: list[str] = []

    def _url(self, name: str) -> str:
        from sqlalchemy.engine import make_url

        assert self.server
        return make_url(self.server).set(database=name).render_as_string(hide_password=False)

    def _admin(self, statement: str) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(self._url("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(statement))
        finally:
            engine.dispose()

    def prepare(self) -> str | None:
        """The database to fill, made empty; its URL (None: the SQLite file in the work folder)."""
        if self.template is None:
            return None
        self._admin(f'CREATE DATABASE "{self.template}"')
        self._made.append(self.template)
        return self._url(self.template)

    def fresh(self, run: Path) -> str | None:
        """A copy of the prepared database for one ingest in `run`; its URL (None: SQLite)."""
        if self.template is None:
            shutil.copy(self.workdir / "bench.db", run / "bench.db")
            return None
        name = f"{self.template}_{run.name}"
        self._admin(f'DROP DATABASE IF EXISTS "{name}"')
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self._made.append(name)
        return self._url(name)

    def drop(self) -> None:
        for name in reversed(dict.fromkeys(self._made)):
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def databases(workdir: Path, server: str | None) -> Iterator[Databases]:
    made = Databases(workdir, server)
    try:
        yield made
    finally:
        if server:
            made.drop()


def prepare_database(
    folder: Path, count: int, samples: list[Template], database_url: str | None = None
):  # type: ignore[no-untyped-def]
    """Tables by the migrations; one list, N confirmed readers, a digest sent to each."""
    from flask_migrate import upgrade
    from sqlalchemy import insert, text

    from newsletter.extensions import db
    from newsletter.links import Links
    from newsletter.models import Delivery, Digest, Newsletter, Subscriber, Subscription

    app = app_from(settings(folder, database_url))
    now = datetime.now(UTC)
    with app.app_context():
        upgrade()
        db.session.execute(insert(Newsletter), [{"id": 1, "slug": "daily", "name": "Daily News"}])
        db.session.execute(
            insert(Digest),
            [{"id": 1, "newsletter_id": 1, "subject": "News", "status": "sent",
              "message_key": DIGEST_KEY, "started_at": now}],
        )  # fmt: skip
        chunk = 20_000
        for first in range(0, count, chunk):
            numbers = range(first, min(first + chunk, count))
            people = [
                {"id": n + 1, "email": samples[n % len(samples)].address(n),
                 "email_key": samples[n % len(samples)].address(n).lower(), "token_key": f"k{n}"}
                for n in numbers
            ]  # fmt: skip
            db.session.execute(insert(Subscriber), people)
            db.session.execute(
                insert(Subscription),
                [{"id": n + 1, "subscriber_id": n + 1, "newsletter_id": 1,
                  "status": "confirmed", "confirmed_at": now} for n in numbers],
            )  # fmt: skip
            db.session.execute(
                insert(Delivery),
                [{"id": n + 1, "digest_id": 1, "subscription_id": n + 1, "status": "sent",
                  "sent_at": now, "attempts": 1} for n in numbers],
            )  # fmt: skip
        db.session.commit()
        if db.engine.dialect.name == "postgresql":
            # What autovacuum would soon do: the planner's statistics of the filled tables.
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE"))
        links = Links.from_config(app.config)
        db.engine.dispose()
    return links


def link_maildir(source: Path, target: Path, count: int) -> None:
    """A Maildir holding the first `count` files of another (hard links: no copying)."""
    mailbox.Maildir(target, create=True).close()
    with os.scandir(source / "new") as entries:
        for number, entry in enumerate(entries):
            if number >= count:
                break
            os.link(entry.path, target / "new" / entry.name)


def baseline(path: Path) -> int:
    """The floor: read every file of new/ and parse it with the standard library."""
    count = 0
    with os.scandir(path / "new") as entries:
        for entry in entries:
            email.message_from_bytes(Path(entry.path).read_bytes())
            count += 1
    return count


def ingest(folder: Path, maildir: Path, database_url: str | None = None) -> dict[str, object]:
    """As `newsletter bounces ingest MAILDIR` runs: every message recorded, marked handled."""
    from newsletter.bounces import ingest as bounces
    from newsletter.bounces.sources import Maildir
    from newsletter.extensions import db
    from newsletter.links import Links

    app = app_from(settings(folder, database_url))
    with app.app_context():
        links, rules = Links.from_config(app.config), bounces.Rules.from_config(app.config)
        started, cpu = time.perf_counter(), time.process_time()
        with Maildir(maildir) as source:
            counts = bounces.ingest_source(db.session, source, links, rules, "maildir")
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        db.engine.dispose()
    return {
        "count": sum(counts.values()),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "kinds": dict(counts),
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def run_ingest(
    workdir: Path, source: Path, count: int, name: str, made: Databases
) -> tuple[dict[str, object], str | None]:
    """The ingest in a fresh process over fresh copies of the database and the Maildir."""
    run = workdir / name
    if run.exists():
        shutil.rmtree(run)
    run.mkdir()
    url = made.fresh(run)
    link_maildir(source, run / "Maildir", count)
    return again(run, run / "Maildir", url), url


def again(run: Path, maildir: Path, database_url: str | None) -> dict[str, object]:
    """The ingest in a fresh process over this database and Maildir as they are."""
    out = subprocess.run(
        [sys.executable, __file__, "--ingest", str(run), str(maildir), database_url or ""],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def expected_kinds(samples: list[Template], count: int) -> Counter[str]:
    return Counter(OUTCOME[samples[n % len(samples)].kind] for n in range(count))


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds else 0.0


def timed(function: object, path: Path) -> tuple[int, float, float]:
    """How many it did, in how many seconds, of which how many on the CPU."""
    started, cpu = time.perf_counter(), time.process_time()
    count = function(path)  # type: ignore[operator]
    return count, time.perf_counter() - started, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", help="where to make the Maildirs (default: the temp folder)")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="a PostgreSQL server (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/): "
        "run in scratch databases made there, instead of SQLite",
    )
    parser.add_argument("--ingest", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ingest:
        folder, maildir, url = args.ingest
        print(json.dumps(ingest(Path(folder), Path(maildir), url or None)))
        return 0

    samples = templates()
    workdir = Path(tempfile.mkdtemp(prefix="bench-bounces-", dir=args.dir))
    try:
        with databases(workdir, args.postgres) as made:
            return benchmark(args, samples, workdir, made)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def benchmark(
    args: argparse.Namespace, samples: list[Template], workdir: Path, made: Databases
) -> int:
    """Prepare, time the rounds, check the outcomes and the memory; 1 when something is wrong."""
    started = time.perf_counter()
    links = prepare_database(workdir, args.messages, samples, made.prepare())
    print(
        f"database: 1 newsletter, {args.messages:,} readers and deliveries"
        f" ({time.perf_counter() - started:.1f} s)"
    )
    started = time.perf_counter()
    size = write_maildir(workdir / "all", args.messages, samples, links)
    print(
        f"wrote {args.messages:,} messages ({size / 1e6:.0f} MB) from {len(samples)} samples"
        f" into a Maildir in {time.perf_counter() - started:.1f} s"
    )
    kinds = Counter(sample.kind.value for sample in samples)
    print("samples: " + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())))
    expected = expected_kinds(samples, args.messages)

    # Warm the page cache so the first round is not the only one reading from disk.
    baseline(workdir / "all")
    failed = False
    base_rates, our_rates, cpu_ratios = [], [], []
    for number in range(1, args.rounds + 1):
        count, seconds, base_cpu = timed(baseline, workdir / "all")
        base_rates.append(rate(count, seconds))
        run, _ = run_ingest(workdir, workdir / "all", args.messages, "round", made)
        our_rates.append(rate(int(run["count"]), float(run["seconds"])))  # type: ignore[call-overload,arg-type]
        cpu_ratios.append(base_cpu / float(run["cpu_seconds"]))  # type: ignore[arg-type]
        print(
            f"  round {number}: email.message_from_bytes {base_rates[-1]:,.0f} msg/s,"
            f" ingest {our_rates[-1]:,.0f} msg/s, ratio {our_rates[-1] / base_rates[-1]:.2f}"
            + ("" if args.postgres else f" (by CPU time {cpu_ratios[-1]:.2f})")
        )
        if Counter(run["kinds"]) != expected:  # type: ignore[arg-type]
            print(f"    outcomes {run['kinds']} != expected {dict(expected)}")
            failed = True
    base, our = statistics.median(base_rates), statistics.median(our_rates)
    ratio = our / base
    verdict = "OK" if ratio >= TARGET_RATIO else "BELOW TARGET"
    print(f"email.message_from_bytes  {base:9,.0f} msg/s (median of {args.rounds})")
    print(f"ingest into the database  {our:9,.0f} msg/s (median of {args.rounds})")
    print(f"ratio ingest/baseline: {ratio:.2f} (target >= {TARGET_RATIO}) {verdict}")
    if not args.postgres:
        # Less moved by other work on the machine; the wall-clock ratio also counts waiting
        # for the disk. (On PostgreSQL the server's share would not be counted.)
        print(f"ratio by CPU time of the two processes: {statistics.median(cpu_ratios):.2f}")
    print("  outcomes: " + ", ".join(f"{k} {n:,}" for k, n in sorted(expected.items())))

    tenth = max(1, args.messages // 10)
    small, _ = run_ingest(workdir, workdir / "all", tenth, "tenth", made)
    large, url = run_ingest(workdir, workdir / "all", args.messages, "full", made)
    for run, count in ((small, tenth), (large, args.messages)):
        print(
            f"ingest of {int(run['count']):,}: peak RSS {int(run['maxrss_kb']) / 1024:.0f} MB"  # type: ignore[call-overload]
        )
        if int(run["count"]) != count:  # type: ignore[call-overload]
            failed = True
    growth = int(large["maxrss_kb"]) / int(small["maxrss_kb"])  # type: ignore[call-overload]
    verdict = "OK" if growth <= TARGET_RSS_GROWTH else "NOT FLAT"
    print(
        f"peak RSS for {args.messages:,} / for {tenth:,}: {growth:.2f}x"
        f" (target <= {TARGET_RSS_GROWTH}x) {verdict}"
    )
    second = again(workdir / "full", workdir / "full" / "Maildir", url)
    print(f"second ingest of the same Maildir: {second['count']} messages (expected 0)")
    failed = failed or second["count"] != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

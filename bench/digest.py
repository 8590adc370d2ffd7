"""Digest sending against Postfix's smtp-sink, with plain smtplib and smtp-source as baselines.

Run from the project root (Debian: `apt-get install postfix` for smtp-sink and smtp-source):

    .venv/bin/python bench/digest.py [--readers 20000] [--big 200000] [--postgres URL]

In one run, against one smtp-sink:
  * ours: `newsletter worker --drain` processes (1, then 2) send a digest of 10 items to every
    confirmed reader, from the snapshot to the last row marked sent;
  * smtplib: the same number of messages, pre-built, of the same size and structure (one of
    ours with only the recipient changed), sent with `smtplib.SMTP.sendmail` over the same
    number of connections (one process each);
  * with --postgres, the floor: that smtplib sender plus an autocommitted UPDATE of a row per
    mail, right after the server took it (bench/digest_floor.py), the least any sender that
    marks each mail can do here; how near two workers come to it says more than how far they
    are from twice one, on a machine whose cores the database and smtp-sink share;
  * smtp-source: Postfix's C client, the same number of messages of the same size over the
    same number of connections: what this machine can do at all.
Then the same with RSA-2048 DKIM signing on, and the peak RSS of one worker for `--readers`
and for `--big` readers. Every figure is a ratio against a baseline measured in this run.

With `--combined`: the site's combined edition instead. `--readers` readers who chose one
combined mail, each following a random subset of 4 lists (15 distinct sets at most), some
items tagged to several lists; one combined edition of every list's items, against a digest
of one list to the same readers in the same run (`ours` above, target >= 0.8 of it), with
the mails rendered counted by the workers' metric (must equal the distinct sets), and the
peak RSS of one worker sending the combined edition to `--readers` and to `--big` readers.
"""

from __future__ import annotations

import argparse
import compileall
import multiprocessing
import os
import resource
import secrets
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, func, insert, select, text  # noqa: E402

TARGET_RATIO = 0.7
TARGET_DKIM = 0.6
TARGET_RSS_GROWTH = 1.5
TARGET_COMBINED = 0.8
LISTS = ("politics", "business", "culture", "sport")
# Items of the single-list digest of --combined: about what a combined reader's mail carries
# (2.1 lists of 12 items on average, less the ones shared, plus its sections and links), so
# the two mails weigh alike.
SINGLE_ITEMS = 24
SENDER = "daily@news.example.org"
NEWSLETTER = Path(sys.executable).parent / "newsletter"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Setup:
    workdir: Path
    database_url: str
    port: int
    env: dict[str, str]


def environment(workdir: Path, database_url: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "NEWSLETTER_ENV": "production",
        "NEWSLETTER_SECRET_KEY": "bench-" + secrets.token_hex(16),
        "NEWSLETTER_BASE_URL": "https://news.example.org",
        "NEWSLETTER_INSTANCE_PATH": str(workdir / "instance"),
        "NEWSLETTER_DATABASE_URL": database_url,
        "NEWSLETTER_SMTP_URL": f"smtp://127.0.0.1:{port}",
    }


def app_for(env: dict[str, str]):  # type: ignore[no-untyped-def]
    os.environ.update({k: v for k, v in env.items() if k.startswith("NEWSLETTER_")})
    from newsletter import create_app

    return create_app()


def populate(env: dict[str, str], readers: int) -> None:
    """A fresh database: one newsletter, 10 items, `readers` confirmed readers."""
    from flask_migrate import upgrade

    from newsletter.extensions import db
    from newsletter.models import Item, Newsletter, utcnow

    app = app_for(env)
    with app.app_context():
        upgrade()
        newsletter = Newsletter(
            slug="daily",
            name="Daily Briefing",
            from_name="Daily Desk",
            from_address=SENDER,
            reply_to="desk@news.example.org",
        )
        db.session.add(newsletter)
        now = utcnow()
        for n in range(10):
            db.session.add(
                Item(
                    guid=f"bench-{n}",
                    title=f"Story {n}: Russian attacks against Ukraine kill 5, injure 38",
                    url=f"https://news.example.org/news/story-{n}",
                    summary=(
                        "Ukrainian air defenses shot down 59 of the 116 Shahed-type attack drones "
                        "launched by Russia overnight, the Air Force said. Forty-five drones were "
                        "reportedly lost on Ukrainian territory. "
                    )
                    * 2,
                    published_at=now - timedelta(minutes=n),
                    newsletters=[newsletter],
                )
            )
        db.session.commit()
        add_readers(db, newsletter.id, 0, readers)
        db.engine.dispose()


def add_readers(db, newsletter_id: int, start: int, stop: int) -> None:  # type: ignore[no-untyped-def]
    from newsletter.models import Subscriber, Subscription, utcnow

    now = utcnow()
    step = 20_000
    for first in range(start, stop, step):
        last = min(first + step, stop)
        db.session.execute(
            insert(Subscriber),
            [
                {
                    "email": f"reader{n}@example.com",
                    "email_key": f"reader{n}@example.com",
                    "token_key": secrets.token_urlsafe(12),
                    "created_at": now,
                }
                for n in range(first, last)
            ],
        )
        ids = db.session.scalars(
            select(Subscriber.id).where(Subscriber.id > first).order_by(Subscriber.id)
        ).all()[: last - first]
        db.session.execute(
            insert(Subscription),
            [
                {
                    "subscriber_id": i,
                    "newsletter_id": newsletter_id,
                    "status": "confirmed",
                    "nonce": "bench",
                    "subscribed_at": now,
                    "confirmed_at": now,
                }
                for i in ids
            ],
        )
        db.session.commit()


def grow(env: dict[str, str], readers: int) -> None:
    """Add readers up to `readers`."""
    from newsletter.extensions import db
    from newsletter.models import Subscription

    app = app_for(env)
    with app.app_context():
        have = db.session.scalar(select(func.count(Subscription.id))) or 0
        add_readers(db, 1, have, readers)
        db.engine.dispose()


def start_digest(env: dict[str, str]) -> tuple[int, int, float]:
    """Compose and start a digest; returns its id, its readers and the snapshot's seconds."""
    from newsletter.digests import states
    from newsletter.extensions import db
    from newsletter.models import Item, Newsletter

    app = app_for(env)
    with app.app_context():
        newsletter = db.session.scalar(select(Newsletter))
        items = list(db.session.scalars(select(Item).order_by(Item.published_at.desc())))
        digest = states.compose(db.session, newsletter, items=items)
        began = time.perf_counter()
        readers = states.start(db.session, digest)
        took = time.perf_counter() - began
        digest_id = digest.id
        db.engine.dispose()
    return digest_id, readers, took


def sample_message(env: dict[str, str]) -> bytes:
    """One reader's mail exactly as the workers build it."""
    from newsletter.digests.compose import Content, PreparedDigest
    from newsletter.extensions import db
    from newsletter.links import Links, Reader
    from newsletter.models import Item, Newsletter

    app = app_for(env)
    with app.app_context():
        newsletter = db.session.scalar(select(Newsletter))
        items = list(db.session.scalars(select(Item).order_by(Item.published_at.desc())))
        content = Content(newsletter, "Daily Briefing", "", items)
        prepared = PreparedDigest(content, "sample", Links.from_config(app.config))
        data = prepared.message(1, "reader0@example.com", Reader(1, "key"))
        db.engine.dispose()
    return data


def check_sent(env: dict[str, str], digest_id: int, readers: int) -> None:
    from newsletter.extensions import db
    from newsletter.models import Digest

    app = app_for(env)
    with app.app_context():
        digest = db.session.get(Digest, digest_id)
        assert digest is not None
        if digest.status != "sent" or digest.sent_count != readers:
            raise SystemExit(
                f"digest {digest_id}: {digest.status}, {digest.sent_count} of {readers} sent"
            )
        db.engine.dispose()


def populate_combined(env: dict[str, str], readers: int) -> None:
    """A fresh database for --combined: 4 daily lists of 10 items each, a few items tagged to
    two of them, a fifth list (monthly, so never combined) of SINGLE_ITEMS of them that every
    reader is on, for the single-list digest; `readers` readers who chose one combined mail,
    each of a random subset of the 4."""
    from flask_migrate import upgrade

    from newsletter.extensions import db
    from newsletter.models import Item, Newsletter, utcnow

    app = app_for(env)
    with app.app_context():
        upgrade()
        single = Newsletter(
            slug="single", name="Daily Briefing", cadence="monthly", from_address=SENDER
        )
        lists = [Newsletter(slug=slug, name=slug.title(), cadence="daily") for slug in LISTS]
        db.session.add_all([single, *lists])
        now = utcnow()
        for n in range(10 * len(LISTS)):
            own = lists[n % len(LISTS)]
            # Every fifth story also belongs to the next list: it must show once.
            tagged = [own, lists[(n + 1) % len(LISTS)]] if n % 5 == 0 else [own]
            db.session.add(
                Item(
                    guid=f"bench-{n}",
                    title=f"Story {n}: Russian attacks against Ukraine kill 5, injure 38",
                    url=f"https://news.example.org/news/story-{n}",
                    summary=(
                        "Ukrainian air defenses shot down 59 of the 116 Shahed-type attack drones "
                        "launched by Russia overnight, the Air Force said. "
                    ),
                    published_at=now - timedelta(minutes=n),
                    newsletters=[single, *tagged] if n < SINGLE_ITEMS else tagged,
                )
            )
        db.session.commit()
        add_combined_readers(db, [n.id for n in lists], single.id, 0, readers)
        db.engine.dispose()


def add_combined_readers(  # type: ignore[no-untyped-def]
    db, lists: list[int], single: int, start: int, stop: int
) -> None:
    """Readers `start`..`stop` who chose one combined mail: each on the single list and on a
    random non-empty subset of `lists` (seeded: the same subsets in every run)."""
    import random

    from newsletter.models import Subscriber, Subscription, utcnow

    chance = random.Random(start)
    now = utcnow()
    step = 20_000
    for first in range(start, stop, step):
        last = min(first + step, stop)
        db.session.execute(
            insert(Subscriber),
            [
                {
                    "email": f"reader{n}@example.com",
                    "email_key": f"reader{n}@example.com",
                    "token_key": secrets.token_urlsafe(12),
                    "created_at": now,
                    "combined": True,
                }
                for n in range(first, last)
            ],
        )
        ids = db.session.scalars(
            select(Subscriber.id).where(Subscriber.id > first).order_by(Subscriber.id)
        ).all()[: last - first]
        rows = []
        for i in ids:
            subset = chance.randrange(1, 2 ** len(lists))
            chosen = [single] + [n for bit, n in enumerate(lists) if subset >> bit & 1]
            rows += [
                {
                    "subscriber_id": i,
                    "newsletter_id": newsletter_id,
                    "status": "confirmed",
                    "nonce": "bench",
                    "subscribed_at": now,
                    "confirmed_at": now,
                }
                for newsletter_id in chosen
            ]
        db.session.execute(insert(Subscription), rows)
        db.session.commit()


def grow_combined(env: dict[str, str], readers: int) -> None:
    """Add combined readers up to `readers`."""
    from newsletter.extensions import db
    from newsletter.models import Newsletter, Subscriber

    app = app_for(env)
    with app.app_context():
        have = db.session.scalar(select(func.count(Subscriber.id))) or 0
        lists = db.session.scalars(
            select(Newsletter.id).where(Newsletter.slug != "single").order_by(Newsletter.id)
        ).all()
        single = db.session.scalar(select(Newsletter.id).where(Newsletter.slug == "single"))
        add_combined_readers(db, list(lists), single, have, readers)
        db.engine.dispose()


def start_single(env: dict[str, str]) -> tuple[int, int]:
    """Start a digest of the single list (10 items) to every reader; its id and readers."""
    from newsletter.digests import states
    from newsletter.extensions import db
    from newsletter.models import Newsletter

    app = app_for(env)
    with app.app_context():
        single = db.session.scalar(select(Newsletter).where(Newsletter.slug == "single"))
        digest = states.compose(db.session, single, items=_items(db, single.id))
        readers = states.start(db.session, digest)
        digest_id = digest.id
        db.engine.dispose()
    return digest_id, readers


def _items(db, newsletter_id: int | None = None):  # type: ignore[no-untyped-def]
    from newsletter.models import Item, item_newsletter

    query = select(Item).order_by(Item.published_at.desc())
    if newsletter_id is not None:
        query = query.join(item_newsletter).where(item_newsletter.c.newsletter_id == newsletter_id)
    return list(db.session.scalars(query))


def start_combined(env: dict[str, str]) -> tuple[int, int, int]:
    """Start a combined daily edition of the 4 lists' 40 items; its id, its readers and the
    distinct sets of lists they follow."""
    from newsletter.digests import states
    from newsletter.extensions import db
    from newsletter.models import Digest, DigestItem, Newsletter, Subscription

    app = app_for(env)
    with app.app_context():
        lists = list(
            db.session.scalars(
                select(Newsletter).where(Newsletter.slug != "single").order_by(Newsletter.id)
            )
        )
        items = _items(db)
        digest = Digest(
            newsletter=None,
            frequency="daily",
            subject="Your daily edition",
            lists=lists,
            entries=[DigestItem(item=item, position=n) for n, item in enumerate(items)],
        )
        db.session.add(digest)
        db.session.commit()
        readers = states.start(db.session, digest)
        ids = [n.id for n in lists]
        follows: dict[int, set[int]] = {}
        for subscriber_id, newsletter_id in db.session.execute(
            select(Subscription.subscriber_id, Subscription.newsletter_id).where(
                Subscription.newsletter_id.in_(ids)
            )
        ):
            follows.setdefault(subscriber_id, set()).add(newsletter_id)
        sets = len({frozenset(s) for s in follows.values()})
        digest_id = digest.id
        db.engine.dispose()
    return digest_id, readers, sets


def mail_sizes(env: dict[str, str]) -> tuple[int, float]:
    """The single-list digest's mail size, and the combined edition's mean over its readers."""
    from collections import Counter

    from newsletter.digests.compose import CombinedContent, Content, PreparedDigest, sections
    from newsletter.extensions import db
    from newsletter.links import Links, Reader
    from newsletter.models import Newsletter, Subscription

    app = app_for(env)
    with app.app_context():
        links = Links.from_config(app.config)
        everything = list(db.session.scalars(select(Newsletter).order_by(Newsletter.id)))
        single = next(n for n in everything if n.slug == "single")
        lists = [n for n in everything if n.slug != "single"]

        def size(prepared: PreparedDigest) -> int:
            return len(prepared.message(1, "reader0@example.com", Reader(1, "key")))

        one = size(PreparedDigest(Content(single, "S", "", _items(db, single.id)), "k", links))
        follows: dict[int, set[int]] = {}
        for subscriber_id, newsletter_id in db.session.execute(
            select(Subscription.subscriber_id, Subscription.newsletter_id).where(
                Subscription.newsletter_id.in_([n.id for n in lists])
            )
        ):
            follows.setdefault(subscriber_id, set()).add(newsletter_id)
        readers = Counter(frozenset(s) for s in follows.values())
        items = _items(db)
        total = 0
        for chosen, count in readers.items():
            content = CombinedContent(
                "daily", "S", "", sections([n for n in lists if n.id in chosen], items)
            )
            total += size(PreparedDigest(content, "k", links)) * count
        db.engine.dispose()
    return one, total / sum(readers.values())


def renders(directory: Path) -> int:
    """The digest mails the workers that wrote their metrics to `directory` rendered."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return int(registry.get_sample_value("newsletter_digest_renders_total") or 0)


def combined_run(env: dict[str, str], workdir: Path, workers: int) -> tuple[float, int, int]:
    """Send one combined edition with `workers` workers; its rate, renders and distinct sets."""
    digest_id, readers, sets = start_combined(env)
    directory = workdir / f"metrics-{secrets.token_hex(4)}"
    directory.mkdir()
    seconds = run_workers(env, workers, {"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    check_sent(env, digest_id, readers)
    return readers / seconds, renders(directory), sets


def single_run(env: dict[str, str], workers: int) -> float:
    digest_id, readers = start_single(env)
    seconds = run_workers(env, workers)
    check_sent(env, digest_id, readers)
    return readers / seconds


def peak_rss_combined(env: dict[str, str]) -> float:
    """Peak RSS of one worker sending a whole combined edition."""
    digest_id, readers, _ = start_combined(env)
    probe = (
        "import resource, subprocess, sys;"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(NEWSLETTER), "worker", "--drain"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    check_sent(env, digest_id, readers)
    return int(out.split()[-1]) / 1024


def combined_bench(env: dict[str, str], workdir: Path, args: argparse.Namespace) -> None:
    """--combined: the combined edition against a single list's digest, in the same run."""
    began = time.perf_counter()
    populate_combined(env, args.readers)
    print(f"populated in {time.perf_counter() - began:.1f} s")
    one, mean = mail_sizes(env)
    print(f"mail size: single-list digest {one:,} bytes, combined edition {mean:,.0f} on average")
    # A warm-up: page cache, first connections.
    single_run(env, 1)
    for workers in (1, 2):
        single: list[float] = []
        together: list[float] = []
        counted = []
        for _ in range(args.rounds):
            single.append(single_run(env, workers))
            rate, rendered, sets = combined_run(env, workdir, workers)
            together.append(rate)
            counted.append((rendered, sets))
        s, c = statistics.median(single), statistics.median(together)
        print(f"\n{workers} worker(s), median of {args.rounds}:")
        print(f"  single-list digest  {s:8,.0f} msg/s")
        print(f"  combined edition    {c:8,.0f} msg/s")
        print(f"  combined / single   {c / s:8.2f}   (target >= {TARGET_COMBINED})")
        for rendered, sets in counted:
            # Each worker renders each set once, when it first meets one of its readers.
            print(
                f"  renders {rendered} for {sets} distinct sets of lists "
                f"(target: {sets} per worker, {sets * workers} at most)"
            )
    if not args.no_rss:
        small = peak_rss_combined(env)
        grow_combined(env, args.big)
        big = peak_rss_combined(env)
        print(
            f"\npeak RSS of one worker, combined edition: {small:.0f} MB for {args.readers:,} "
            f"readers, {big:.0f} MB for {args.big:,}: {big / small:.2f}x "
            f"(target <= {TARGET_RSS_GROWTH}x)"
        )


def run_workers(env: dict[str, str], count: int, extra: dict[str, str] | None = None) -> float:
    """Start `count` workers with --drain and wait for all; returns the seconds."""
    began = time.perf_counter()
    processes = [
        subprocess.Popen(
            [str(NEWSLETTER), "worker", "--drain"],
            env={**env, **(extra or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(count)
    ]
    for process in processes:
        _, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"worker failed: {err.decode()[-2000:]}")
    return time.perf_counter() - began


def ours(
    env: dict[str, str],
    workers: int,
    extra: dict[str, str] | None = None,
    *,
    cpu: tuple[int, list[dict[str, float]]] | None = None,
) -> float:
    """The rate of `workers` workers sending a digest; with `cpu` (smtp-sink's process id, a
    list), where the machine's CPU went during the send is appended to the list."""
    digest_id, readers, _ = start_digest(env)
    shares = CpuShares(cpu[0]) if cpu is not None else None
    seconds = run_workers(env, workers, extra)
    if shares is not None and cpu is not None:
        cpu[1].append(shares.per_mail(readers))
    check_sent(env, digest_id, readers)
    return readers / seconds


def floor_rate(
    url: str,
    port: int,
    readers: int,
    processes: int,
    body: bytes,
    *,
    cpu: tuple[int, list[dict[str, float]]] | None = None,
) -> float:
    """The floor's rate (bench/digest_floor.py) with `processes` senders; `cpu` as for `ours`."""
    import digest_floor

    digest_floor.fill(url, readers)
    share = readers // processes
    shares = [(url, port, 1 + n * share, share, body) for n in range(processes)]
    accounting = CpuShares(cpu[0]) if cpu is not None else None
    rate = forked_rate(digest_floor.send_share, shares, share * processes)
    if accounting is not None and cpu is not None:
        cpu[1].append(accounting.per_mail(share * processes))
    return rate


def _cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """A process's CPU time; with `reaped`, also that of its children that have exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # gone since it was listed
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if reaped:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _postgres_cpu() -> float:
    """CPU time of the local PostgreSQL server: every process of it, and through the
    postmaster's reaped children the backends and autovacuum workers that have ended."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            parent_comm = Path(f"/proc/{parent}/comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if comm == "postgres":
            total += _cpu_seconds(int(entry.name), reaped=parent_comm != "postgres")
    return total


def _machine() -> tuple[int, int]:
    """All CPU ticks of the machine so far, and the idle ones (idle and waiting for I/O)."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(ticks), ticks[3] + ticks[4]


class CpuShares:
    """Where the machine's CPU goes from now until `per_mail`: the sending processes (this
    process's children, workers with their start-up), the local PostgreSQL server, smtp-sink,
    and the share of the machine left idle."""

    def __init__(self, sink_pid: int) -> None:
        self.sink_pid = sink_pid
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.senders = children.ru_utime + children.ru_stime
        self.postgres = _postgres_cpu()
        self.sink = _cpu_seconds(sink_pid)
        self.machine = _machine()

    def per_mail(self, mails: int) -> dict[str, float]:
        """µs of CPU per mail of each part, and the machine's idle share in %."""
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        total, idle = (now - then for now, then in zip(_machine(), self.machine, strict=True))
        return {
            "senders": (children.ru_utime + children.ru_stime - self.senders) * 1e6 / mails,
            "postgres": (_postgres_cpu() - self.postgres) * 1e6 / mails,
            "smtp-sink": (_cpu_seconds(self.sink_pid) - self.sink) * 1e6 / mails,
            "idle": 100 * idle / total if total else 0.0,
        }


def _smtplib_share(port: int, data: bytes, first: int, count: int) -> None:
    head, _, rest = data.partition(b"\r\n")  # the first line is To:
    assert head.startswith(b"To: ")
    smtp = smtplib.SMTP("127.0.0.1", port)
    smtp.ehlo()
    for n in range(first, first + count):
        to = f"reader{n}@example.com"
        smtp.sendmail(SENDER, [to], b"To: " + to.encode() + b"\r\n" + rest)
    smtp.quit()


def forked_rate(target: Callable[..., None], shares: list[tuple[object, ...]], sent: int) -> float:
    """Run `target` once per argument tuple, each in a forked process at the same time;
    `sent` messages in all, per second of the whole."""
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=target, args=args) for args in shares]
    began = time.perf_counter()
    for process in processes:
        process.start()
    for process in processes:
        process.join()
        assert process.exitcode == 0
    return sent / (time.perf_counter() - began)


def plain_smtplib(port: int, data: bytes, messages: int, connections: int) -> float:
    share = messages // connections
    shares = [(port, data, n * share, share) for n in range(connections)]
    return forked_rate(_smtplib_share, shares, share * connections)


def smtp_source(port: int, size: int, messages: int, connections: int) -> float:
    began = time.perf_counter()
    subprocess.run(
        [
            "smtp-source",
            "-d",  # keep each connection for the next message, as we do
            "-s",
            str(connections),
            "-m",
            str(messages),
            "-l",
            str(size),
            "-f",
            SENDER,
            "-t",
            "reader@example.com",
            f"127.0.0.1:{port}",
        ],
        check=True,
    )
    return messages / (time.perf_counter() - began)


def peak_rss_mb(env: dict[str, str]) -> float:
    """Peak RSS of one worker sending a whole digest."""
    digest_id, readers, _ = start_digest(env)
    probe = (
        "import resource, subprocess, sys;"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(NEWSLETTER), "worker", "--drain"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    check_sent(env, digest_id, readers)
    return int(out.split()[-1]) / 1024


def dkim_env(workdir: Path) -> dict[str, str]:
    from newsletter.mail import dkim

    pem, _, _ = dkim.generate("bench", "news.example.org", "rsa")
    key = workdir / "dkim.pem"
    key.write_bytes(pem)
    return {
        "NEWSLETTER_DKIM_PRIVATE_KEY": str(key),
        "NEWSLETTER_DKIM_SELECTOR": "bench",
        "NEWSLETTER_DKIM_DOMAIN": "news.example.org",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=20_000)
    parser.add_argument("--big", type=int, default=200_000, help="readers for the RSS check")
    parser.add_argument("--postgres", help="a PostgreSQL server URL instead of SQLite")
    parser.add_argument(
        "--database", default="bench_digest", help="the scratch database's name with --postgres"
    )
    parser.add_argument("--no-rss", action="store_true", help="skip the --big RSS check")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each rate")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="print the CPU per mail of the workers, a local PostgreSQL and smtp-sink",
    )
    parser.add_argument(
        "--combined",
        action="store_true",
        help="the combined edition of 4 lists against a single list's digest",
    )
    args = parser.parse_args()
    if not shutil.which("smtp-sink") or not shutil.which("smtp-source"):
        raise SystemExit("smtp-sink and smtp-source are needed: apt-get install postfix")

    workdir = Path(tempfile.mkdtemp(prefix="bench-digest-"))
    (workdir / "instance").mkdir()
    if args.postgres:
        base = args.postgres.rstrip("/")
        admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{args.database}"'))
            conn.execute(text(f'CREATE DATABASE "{args.database}"'))
        admin.dispose()
        database_url = f"{base}/{args.database}"
    else:
        database_url = f"sqlite:///{workdir / 'bench.db'}"
    port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{port}", "1000"])
    time.sleep(0.5)
    try:
        env = environment(workdir, database_url, port)
        print(f"database: {database_url.split('://')[0]}; readers: {args.readers:,}")
        if args.combined:
            combined_bench(env, workdir, args)
            return
        began = time.perf_counter()
        populate(env, args.readers)
        print(f"populated in {time.perf_counter() - began:.1f} s")
        data = sample_message(env)
        size = len(data)
        print(f"one digest mail: {size:,} bytes, multipart/alternative, quoted-printable")
        _, _, snapshot = start_digest(env)
        print(f"snapshot of {args.readers:,} readers into the ledger: {snapshot * 1000:.0f} ms")
        # The workers start from bytecode, as an installed package's do, also in a checkout
        # where Python was told not to write it (PYTHONDONTWRITEBYTECODE).
        compileall.compile_dir(ROOT / "newsletter", quiet=1)
        # That digest is sent as a warm-up (page cache, first connections).
        run_workers(env, 1)

        signing = dkim_env(workdir)
        results: dict[int, float] = {}
        # With --cpu, where the CPU went in each round: of ours, of the floor.
        cpu: dict[str, dict[int, list[dict[str, float]]]] = {
            kind: {1: [], 2: []} for kind in ("ours", "floor")
        }
        # On PostgreSQL, the least any sender that marks each mail can do on this machine,
        # with this very mail: the scale for ours, one worker and two (bench/digest_floor.py).
        floors: dict[int, float] = {}
        floor_url = None
        rest = data.partition(b"\r\n")[2]  # the mail without its To: line
        if args.postgres:
            import digest_floor

            libpq = "postgresql://" + args.postgres.rstrip("/").split("://", 1)[1]
            floor_url = digest_floor.prepare(libpq, f"{args.database}_floor")
        for workers in (1, 2):
            kinds = ("source", "smtplib", "floor", "ours", "dkim")
            rounds: dict[str, list[float]] = {k: [] for k in kinds}
            # Alternating rounds, medians compared: the machine's other load moves every rate.
            for _ in range(args.rounds):
                rounds["smtplib"].append(plain_smtplib(port, data, args.readers, workers))
                rounds["source"].append(smtp_source(port, size, args.readers, workers))
                if floor_url is not None:
                    accounted = (sink.pid, cpu["floor"][workers]) if args.cpu else None
                    rounds["floor"].append(
                        floor_rate(floor_url, port, args.readers, workers, rest, cpu=accounted)
                    )
                accounted = (sink.pid, cpu["ours"][workers]) if args.cpu else None
                rounds["ours"].append(ours(env, workers, cpu=accounted))
                rounds["dkim"].append(ours(env, workers, signing))
            m = {k: statistics.median(v) for k, v in rounds.items() if v}
            results[workers] = m["ours"]
            if floor_url is not None:
                floors[workers] = m["floor"]
            print(f"\n{workers} worker(s) / connection(s), median of {args.rounds}:")
            print(f"  smtp-source         {m['source']:8,.0f} msg/s")
            print(f"  smtplib pre-built   {m['smtplib']:8,.0f} msg/s")
            print(f"  ours                {m['ours']:8,.0f} msg/s")
            print(f"  ours, DKIM RSA-2048 {m['dkim']:8,.0f} msg/s")
            if floor_url is not None:
                print(f"  smtplib + UPDATE    {m['floor']:8,.0f} msg/s   (the floor)")
                print(f"  ours / floor        {m['ours'] / m['floor']:8.2f}")
            ratio = m["ours"] / m["smtplib"]
            print(f"  ours / smtplib      {ratio:8.2f}   (target >= {TARGET_RATIO})")
            print(f"  ours / smtp-source  {m['ours'] / m['source']:8.2f}")
            print(f"  DKIM on / off       {m['dkim'] / m['ours']:8.2f}   (target >= {TARGET_DKIM})")
            each = ", ".join(
                f"{o / b:.2f}" for o, b in zip(rounds["ours"], rounds["smtplib"], strict=True)
            )
            print(f"  ours / smtplib by round: {each}")
            for kind, runs in cpu.items():
                if runs[workers]:
                    shares = {
                        k: statistics.median(r[k] for r in runs[workers]) for k in runs[workers][0]
                    }
                    parts = ", ".join(f"{k} {v:,.0f}" for k, v in shares.items() if k != "idle")
                    idle = shares["idle"]
                    print(f"  {kind}, CPU per mail (µs): {parts}; machine idle {idle:.0f} %")
        print(f"\n2 workers / 1 worker: {results[2] / results[1]:.2f} (target > 1)")
        if floor_url is not None:
            print(f"the floor's 2 processes / 1: {floors[2] / floors[1]:.2f}")

        if not args.no_rss:
            small = peak_rss_mb(env)
            grow(env, args.big)
            big = peak_rss_mb(env)
            print(
                f"\npeak RSS of one worker: {small:.0f} MB for {args.readers:,} readers, "
                f"{big:.0f} MB for {args.big:,}: {big / small:.2f}x "
                f"(target <= {TARGET_RSS_GROWTH}x)"
            )
    finally:
        sink.terminate()
        sink.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

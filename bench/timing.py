"""Does the signup's answer take the same time whoever the address belongs to?

Run from the project root:

    .venv/bin/python bench/timing.py [--requests 200] [--postgres [URL]]

A fresh instance (SQLite in a temporary folder, or with --postgres a scratch PostgreSQL
database and Redis) gets addresses in each state: pending, confirmed, unsubscribed and
suppressed (a hard bounce), each a different address per request, plus addresses never seen
("new", and a second such group as a control: the ratio between those two is what this
machine's noise alone makes). The app runs under gunicorn (2 sync workers) with
`newsletter worker` beside it, as in production. One client posts the signup form for every
group in turn, in a shuffled order per round, and times each answer from the first byte sent
to the last byte read. It prints each group's median and the largest ratio between two group
medians (target <= 1.05).
"""

from __future__ import annotations

import argparse
import http.client
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import subscribe as common

GROUPS = ("new", "pending", "confirmed", "unsubscribed", "suppressed")
# A second group of new addresses, measured like the others: what two groups that cannot
# differ differ by on this machine, for reading the ratio.
CONTROL = "new, again"
TARGET = 1.05


def seed(tag: str, count: int) -> dict[str, list[str]]:
    """Addresses in each state, `count` of each; the new ones are only made up."""
    from newsletter import create_app, suppression
    from newsletter.extensions import db
    from newsletter.models import (
        Newsletter,
        Subscriber,
        Subscription,
        SubscriptionStatus,
        SuppressionReason,
    )

    groups = {
        g: [f"timing-{tag}-{g.replace(', ', '-')}-{i}@example.com" for i in range(count)]
        for g in (*GROUPS, CONTROL)
    }
    states = {
        "pending": SubscriptionStatus.PENDING,
        "confirmed": SubscriptionStatus.CONFIRMED,
        "unsubscribed": SubscriptionStatus.UNSUBSCRIBED,
        "suppressed": SubscriptionStatus.CONFIRMED,
    }
    app = create_app()
    with app.app_context():
        daily = db.session.query(Newsletter).filter_by(slug=common.SLUG).one()
        for group, status in states.items():
            for address in groups[group]:
                person = Subscriber(email=address, email_key=address)
                db.session.add(person)
                db.session.add(Subscription(subscriber=person, newsletter=daily, status=status))
        db.session.flush()
        for address in groups["suppressed"]:
            suppression.suppress(db.session, address, SuppressionReason.BOUNCED)
        db.session.commit()
        db.engine.dispose()
    return groups


def post(port: int, address: str) -> tuple[float, int]:
    """One signup as a browser without JavaScript sends it: seconds taken and status."""
    body = urllib.parse.urlencode({"email": address, "newsletter": common.SLUG})
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "text/html",
        "User-Agent": "bench/timing.py",
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.connect()
        started = time.perf_counter()
        conn.request("POST", "/subscribe", body, headers)
        response = conn.getresponse()
        response.read()
        took = time.perf_counter() - started
    finally:
        conn.close()
    return took, response.status


def measure(port: int, groups: dict[str, list[str]], seed_value: int) -> dict[str, list[float]]:
    """Every group's addresses posted, interleaved in a shuffled order each round."""
    rng = random.Random(seed_value)
    times: dict[str, list[float]] = {g: [] for g in groups}
    count = len(groups[GROUPS[0]])
    for i in range(count):
        order = list(groups)
        rng.shuffle(order)
        for group in order:
            took, status = post(port, groups[group][i])
            if status != 200:
                raise RuntimeError(f"{group} {groups[group][i]}: status {status}")
            times[group].append(took)
    return times


def benchmark(args: argparse.Namespace, workdir: Path) -> int:
    instance = workdir / "instance"
    env = common._environment(instance, args.postgres, args.redis if args.postgres else None)
    common.use_environment(env)
    common.prepare_database()
    tag = secrets.token_hex(3)
    warmup = seed(tag + "w", 20)
    groups = seed(tag, args.requests)
    where = "PostgreSQL and Redis" if args.postgres else "SQLite"
    print(
        f"gunicorn, {args.workers} sync workers, {where}, `newsletter worker` running; "
        f"{args.requests} requests per group, interleaved, one at a time"
    )
    log = (workdir / "worker.log").open("wb")
    worker = subprocess.Popen(
        [_newsletter(), "worker"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with common.gunicorn("timing", common.NEWSLETTER_APP, args.workers, workdir) as server:
            port = int(urllib.parse.urlsplit(server.url).port or 80)
            measure(port, warmup, 1)
            times = measure(port, groups, 2)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    medians = {g: statistics.median(t) for g, t in times.items() if g in GROUPS}
    for group in (*GROUPS, CONTROL):
        t = sorted(times[group])
        p90 = t[int(len(t) * 0.9) - 1]
        median = statistics.median(t)
        print(f"  {group:<13} median {median * 1000:6.2f} ms   p90 {p90 * 1000:6.2f} ms")
    ratio = max(medians.values()) / min(medians.values())
    verdict = "" if ratio <= TARGET else "  <-- ABOVE TARGET"
    print(f"largest ratio between group medians: {ratio:.3f} (target <= {TARGET}){verdict}")
    control = statistics.median(times[CONTROL]) / medians["new"]
    control = max(control, 1 / control)
    print(f"noise floor: two groups of new addresses differ by {control:.3f}")
    return 0


def _newsletter() -> str:
    return str(Path(sys.executable).with_name("newsletter"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="per group [200]")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers [2]")
    parser.add_argument(
        "--postgres", nargs="?", const=common.DEFAULT_POSTGRES, help="PostgreSQL URL"
    )
    parser.add_argument("--redis", default=common.DEFAULT_REDIS, help="with --postgres")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda signum, _frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="newsletter-timing-") as workdir:
        return benchmark(args, Path(workdir))


if __name__ == "__main__":
    sys.exit(main())

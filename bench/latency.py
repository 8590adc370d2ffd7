"""From the signup's answer to its confirmation mail at the SMTP server, at 200 signups/s.

Run from the project root:

    apt-get install -y postfix                 # for smtp-sink, the SMTP server that takes the mail
    .venv/bin/python bench/latency.py [--rate 200] [--duration 20] [--postgres [URL]]

A fresh instance (SQLite in a temporary folder, or with --postgres a scratch PostgreSQL
database and Redis) runs under gunicorn (2 sync workers) with ONE `newsletter worker` sending
to Postfix's `smtp-sink` on a free port. Signups with new addresses are posted at a steady
`--rate` (open loop: each is sent at its moment, however long the others take). For every
signup the time its answer was read is noted; the outbox row's `sent_at` is written by the
worker right after the SMTP server accepted the mail. The script prints the distribution of
the difference (target: p99 under 2 s).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import subscribe as common

TARGET_P99 = 2.0


def post(port: int, address: str) -> tuple[float, int]:
    """One signup; the wall-clock time its answer was read, and the status."""
    body = urllib.parse.urlencode({"email": address, "newsletter": common.SLUG})
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "text/html",
        "User-Agent": "bench/latency.py",
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/subscribe", body, headers)
        response = conn.getresponse()
        response.read()
        return time.time(), response.status
    finally:
        conn.close()


def load(port: int, addresses: list[str], rate: float) -> dict[str, float]:
    """Post every address at its moment (open loop); return when each answer came."""
    answered: dict[str, float] = {}
    failures: list[str] = []
    lock = threading.Lock()
    start = time.monotonic() + 0.5

    def one(i: int, address: str) -> None:
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        at, status = post(port, address)
        with lock:
            if status == 200:
                answered[address] = at
            else:
                failures.append(f"{address}: {status}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        for future in [pool.submit(one, i, a) for i, a in enumerate(addresses)]:
            future.result()
    took = time.monotonic() - start
    print(f"sent {len(addresses)} signups in {took:.1f} s: {len(addresses) / took:.0f}/s")
    if failures:
        print(f"{len(failures)} answers were not 200, e.g. {failures[0]}")
    return answered


def sent_times(addresses: set[str], wait: float) -> dict[str, float]:
    """When the worker had each address's confirmation accepted, waiting up to `wait` s."""
    from sqlalchemy import select

    from newsletter import create_app
    from newsletter.extensions import db
    from newsletter.models import MailKind, OutboxMessage

    app = create_app()
    found: dict[str, float] = {}
    deadline = time.monotonic() + wait
    with app.app_context():
        while True:
            rows = db.session.execute(
                select(OutboxMessage.to_address, OutboxMessage.sent_at).where(
                    OutboxMessage.kind == MailKind.CONFIRMATION,
                    OutboxMessage.sent_at.is_not(None),
                )
            ).all()
            db.session.rollback()
            found = {r.to_address: r.sent_at.timestamp() for r in rows if r.to_address in addresses}
            if len(found) >= len(addresses) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        db.engine.dispose()
    return found


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def _sink_user() -> list[str]:
    """smtp-sink refuses to run as root without a user to switch to (Postfix's own)."""
    return ["-u", "postfix"] if os.geteuid() == 0 else []


def benchmark(args: argparse.Namespace, workdir: Path) -> int:
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not Path(sink).exists():
        print("bench/latency.py needs Postfix's smtp-sink: apt-get install -y postfix")
        return 2
    smtp_port = common.free_port()
    instance = workdir / "instance"
    env = common._environment(instance, args.postgres, args.redis if args.postgres else None)
    env["NEWSLETTER_SMTP_URL"] = f"smtp://127.0.0.1:{smtp_port}"
    common.use_environment(env)
    common.prepare_database()
    tag = secrets.token_hex(3)
    count = int(args.rate * args.duration)
    addresses = [f"latency-{tag}-{i}@example.com" for i in range(count)]
    where = "PostgreSQL and Redis" if args.postgres else "SQLite"
    print(
        f"gunicorn, {args.workers} sync workers, {where}; one `newsletter worker` sending to "
        f"smtp-sink on 127.0.0.1:{smtp_port}; {args.rate:g} signups/s for {args.duration:g} s"
    )
    procs: list[subprocess.Popen[bytes]] = []
    newsletter = str(Path(sys.executable).with_name("newsletter"))
    try:
        with (workdir / "sink.log").open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [sink, *_sink_user(), "-c", f"127.0.0.1:{smtp_port}", "256"],
                    stdout=out,
                    stderr=out,
                )
            )
        with (workdir / "worker.log").open("wb") as out:
            procs.append(
                subprocess.Popen([newsletter, "worker"], stdout=out, stderr=subprocess.STDOUT)
            )
        time.sleep(0.5)
        if procs[0].poll() is not None:
            print(f"smtp-sink did not start: {(workdir / 'sink.log').read_text()}")
            return 2
        with common.gunicorn("latency", common.NEWSLETTER_APP, args.workers, workdir) as server:
            port = int(urllib.parse.urlsplit(server.url).port or 80)
            answered = load(port, addresses, args.rate)
            sent = sent_times(set(answered), wait=60)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    latencies = [sent[a] - answered[a] for a in answered if a in sent]
    missing = len(answered) - len(latencies)
    if not latencies:
        print("no confirmation reached the SMTP server")
        print((workdir / "worker.log").read_text()[-3000:])
        return 1
    p99 = _percentile(latencies, 0.99)
    print(
        f"answer -> mail accepted by the SMTP server, {len(latencies)} signups: "
        f"median {statistics.median(latencies) * 1000:.0f} ms, "
        f"p95 {_percentile(latencies, 0.95) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"max {max(latencies) * 1000:.0f} ms"
        + (f"; {missing} not sent within 60 s" if missing else "")
    )
    verdict = "" if p99 < TARGET_P99 and not missing else "  <-- ABOVE TARGET"
    print(f"p99 {p99:.2f} s (target < {TARGET_P99:g} s){verdict}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200, help="signups per second [200]")
    parser.add_argument("--duration", type=float, default=20, help="seconds of load [20]")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers [2]")
    parser.add_argument(
        "--postgres", nargs="?", const=common.DEFAULT_POSTGRES, help="PostgreSQL URL"
    )
    parser.add_argument("--redis", default=common.DEFAULT_REDIS, help="with --postgres")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda signum, _frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="newsletter-latency-") as workdir:
        return benchmark(args, Path(workdir))


if __name__ == "__main__":
    sys.exit(main())

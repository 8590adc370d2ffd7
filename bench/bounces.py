"""Returned-mail ingest from a Maildir against the standard library's email parser alone.

Run from the project root:

    .venv/bin/python bench/bounces.py [--messages 100000] [--rounds 3] [--dir /dev/shm]

It writes N messages made from the samples in tests/data/bounces/ (each with its own reader,
VERP tag and Message-ID) into a Maildir in a temporary folder, then times, in alternating
rounds over the same files:

- baseline: list new/, read each file, `email.message_from_bytes` (policy compat32);
- ours: `newsletter.bounces.sources.Maildir` and `newsletter.bounces.parse.parse` for each.

Then it runs the ingest as a command would (a fresh process: read, parse, mark each message
handled, which moves it to cur/ as Seen) over a Maildir of N/10 messages and over the one of
N, checks every report against what was written, reads each process's peak RSS (getrusage),
and runs it once more over the N to see that nothing is handled twice.
"""

from __future__ import annotations

import argparse
import email
import json
import mailbox
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from newsletter.bounces.parse import parse
from newsletter.bounces.sources import Maildir

TARGET_RATIO = 0.3
TARGET_RSS_GROWTH = 1.2
BOUNCE_ADDRESS = "bounces@news.example.org"
UNSUBSCRIBE_ADDRESS = "unsubscribe@news.example.org"
CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "bounces"
TAG = re.compile(r"n(\d+)s(\d+)")


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

    def make(self, number: int, index: int) -> bytes:
        """The sample for reader `number`, its tag naming both."""
        data = self._local.sub(self.reader(number).encode(), self.data)
        data = data.replace(self.tag.encode(), f"n{number}s{index}".encode())
        if self.message_id:
            data = data.replace(self.message_id.encode(), self.expected_id(number).encode())
        return data

    def reader(self, number: int) -> str:
        return f"reader.{number}"

    def expected_id(self, number: int) -> str | None:
        if not self.message_id:
            return None
        left, _, domain = self.message_id.partition("@")
        return f"{left.partition('.')[0]}.{number}@{domain}"


def templates() -> list[Template]:
    return [Template(path) for path in sorted(CORPUS.glob("*.eml"))]


def write_maildir(path: Path, count: int, samples: list[Template]) -> int:
    """N messages, the samples in turn, named as Maildir names them; returns the bytes written.

    Straight into new/, without `mailbox.Maildir.add`'s fsync per message: nobody reads the
    folder while it is written, and losing it in a crash costs only a rerun.
    """
    mailbox.Maildir(path, create=True).close()
    size = 0
    stamp, pid = int(time.time()), os.getpid()
    for number in range(count):
        index = number % len(samples)
        data = samples[index].make(number, index)
        (path / "new" / f"{stamp}.M{number}P{pid}.bench").write_bytes(data)
        size += len(data)
    return size


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


def ours(path: Path) -> int:
    """Read through the Maildir source and classify each message."""
    count = 0
    for message in Maildir(path):
        parse(message.data, bounce_address=BOUNCE_ADDRESS, unsubscribe_address=UNSUBSCRIBE_ADDRESS)
        count += 1
    return count


def ingest(path: Path) -> dict[str, object]:
    """As a command would: read, classify, check against what was written, mark handled."""
    samples = templates()
    kinds: Counter[str] = Counter()
    wrong = []
    started = time.perf_counter()
    for message in Maildir(path):
        report = parse(
            message.data, bounce_address=BOUNCE_ADDRESS, unsubscribe_address=UNSUBSCRIBE_ADDRESS
        )
        kinds[report.kind.value] += 1
        found = TAG.fullmatch(report.tag or "")
        if found is None:
            wrong.append(f"{message.name}: tag {report.tag!r}")
        else:
            number, index = int(found.group(1)), int(found.group(2))
            sample = samples[index]
            recipient = f"{sample.reader(number)}@{sample.domain}"
            expected = (sample.kind, recipient, sample.expected_id(number))
            got = (report.kind, report.recipients[0] if report.recipients else None)
            if (*got, report.message_id) != expected:
                wrong.append(f"{message.name}: {(*got, report.message_id)} != {expected}")
        message.handled()
    seconds = time.perf_counter() - started
    return {
        "count": sum(kinds.values()),
        "seconds": seconds,
        "kinds": dict(kinds),
        "wrong": wrong[:5],
        "wrong_count": len(wrong),
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def run_ingest(path: Path) -> dict[str, object]:
    """The ingest in a fresh process, so its peak RSS is its own."""
    out = subprocess.run(
        [sys.executable, __file__, "--ingest", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds else 0.0


def timed(function: object, path: Path) -> tuple[int, float]:
    started = time.perf_counter()
    count = function(path)  # type: ignore[operator]
    return count, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", help="where to make the Maildirs (default: the temp folder)")
    parser.add_argument("--ingest", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ingest:
        print(json.dumps(ingest(Path(args.ingest))))
        return 0

    samples = templates()
    workdir = Path(tempfile.mkdtemp(prefix="bench-bounces-", dir=args.dir))
    try:
        started = time.perf_counter()
        size = write_maildir(workdir / "all", args.messages, samples)
        tenth = max(1, args.messages // 10)
        link_maildir(workdir / "all", workdir / "tenth", tenth)
        print(
            f"wrote {args.messages:,} messages ({size / 1e6:.0f} MB) from {len(samples)} samples"
            f" into a Maildir in {time.perf_counter() - started:.1f} s"
        )
        kinds = Counter(sample.kind.value for sample in samples)
        print("samples: " + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())))

        # Warm the page cache so the first round is not the only one reading from disk.
        baseline(workdir / "all")
        base_rates, our_rates = [], []
        for number in range(1, args.rounds + 1):
            count, seconds = timed(baseline, workdir / "all")
            base_rates.append(rate(count, seconds))
            count, seconds = timed(ours, workdir / "all")
            our_rates.append(rate(count, seconds))
            print(
                f"  round {number}: email.message_from_bytes {base_rates[-1]:,.0f} msg/s,"
                f" ours {our_rates[-1]:,.0f} msg/s, ratio {our_rates[-1] / base_rates[-1]:.2f}"
            )
        base, our = statistics.median(base_rates), statistics.median(our_rates)
        ratio = our / base
        verdict = "OK" if ratio >= TARGET_RATIO else "BELOW TARGET"
        print(f"email.message_from_bytes  {base:9,.0f} msg/s (median of {args.rounds})")
        print(f"ours (sources + parse)    {our:9,.0f} msg/s (median of {args.rounds})")
        print(f"ratio ours/baseline: {ratio:.2f} (target >= {TARGET_RATIO}) {verdict}")

        failed = False
        small = run_ingest(workdir / "tenth")
        large = run_ingest(workdir / "all")
        for run, expected in ((small, tenth), (large, args.messages)):
            count = int(run["count"])  # type: ignore[call-overload]
            print(
                f"ingest of {count:,} (read, parse, mark handled):"
                f" {rate(count, float(run['seconds'])):,.0f} msg/s,"  # type: ignore[arg-type]
                f" peak RSS {int(run['maxrss_kb']) / 1024:.0f} MB,"  # type: ignore[call-overload]
                f" {run['wrong_count']} misread"
            )
            print("  " + ", ".join(f"{kind} {n:,}" for kind, n in sorted(run["kinds"].items())))  # type: ignore[attr-defined]
            if count != expected or run["wrong_count"]:
                print(f"  expected {expected:,} messages, all read as written: {run['wrong']}")
                failed = True
        growth = int(large["maxrss_kb"]) / int(small["maxrss_kb"])  # type: ignore[call-overload]
        verdict = "OK" if growth <= TARGET_RSS_GROWTH else "NOT FLAT"
        print(
            f"peak RSS for {args.messages:,} / for {tenth:,}: {growth:.2f}x"
            f" (target <= {TARGET_RSS_GROWTH}x) {verdict}"
        )
        again = run_ingest(workdir / "all")
        print(f"second ingest of the same Maildir: {again['count']} messages (expected 0)")
        failed = failed or again["count"] != 0
        return 1 if failed else 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Subscriber import on SQLite against bare email_validator over the same rows.

Run from the project root:

    .venv/bin/python bench/import.py [--rows 1000000] [--mode confirm|consented] [--inline]

It writes a CSV of generated rows (mostly valid, some invalid, some repeated) to a temporary
folder, times `email_validator.validate_email(address, check_deliverability=False)` over every
address of the file, then imports the file into a fresh SQLite database in a child process
(`newsletter.imports.importer.run`, as `newsletter subscribers import` runs it) and compares
the rates.
The child's peak memory is read from the kernel while it runs (the child and the helper
process it starts, added up) and after it ends (getrusage). The rows written are checked.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import dataclass
from pathlib import Path

TARGET_RATIO = 0.5
TARGET_RSS_MB = 300
TARGET_SECONDS = 600
SLUG = "bench"
DOMAINS = (
    "gmail.com",
    "ukr.net",
    "i.ua",
    "outlook.com",
    "proton.me",
    "yahoo.com",
    "kyivindependent.com",
    "example.org",
    "uni-lviv.edu.ua",
    "mail.example.co.uk",
)
NAMES = ("olena", "taras", "kate", "iryna", "andriy", "oksana", "maria", "dmytro", "john", "anna")
INVALID = ("{n}.example.com", "reader{n}@", "@example{n}.org", "reader {n}@example.com", "")


@dataclass
class Expected:
    """What the generated file should import as."""

    rows: int = 0
    valid: int = 0
    invalid: int = 0
    duplicates: int = 0


def address(n: int) -> str:
    """The address of generated row n."""
    return f"{NAMES[n % len(NAMES)]}.{n}@{DOMAINS[n % len(DOMAINS)]}"


def generate(path: Path, rows: int, seed: int = 4) -> Expected:
    """Write the CSV: 97 % new addresses, 1 % invalid, 2 % repeats of an earlier row."""
    rnd = random.Random(seed)
    expected = Expected(rows=rows)
    valid_rows = array("l")
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["email", "name", "locale", "subscribed_at"])
        for n in range(rows):
            draw = rnd.random()
            if draw < 0.01:
                email = rnd.choice(INVALID).format(n=n)
                expected.invalid += 1
            elif draw < 0.03 and valid_rows:
                # An earlier address in capitals: the same person, so a duplicate.
                earlier = valid_rows[rnd.randrange(len(valid_rows))]
                email = address(earlier).upper()
                expected.duplicates += 1
            else:
                email = address(n)
                valid_rows.append(n)
                expected.valid += 1
            locale = rnd.choice(("uk", "en", "", "pl"))
            since = f"2024-{1 + n % 12:02d}-{1 + n % 28:02d}" if n % 3 == 0 else ""
            writer.writerow([email, NAMES[n % len(NAMES)].title(), locale, since])
    return expected


def validate_rate(path: Path) -> float:
    """Addresses per second through bare validate_email, over every address of the file."""
    from email_validator import EmailNotValidError, validate_email

    with path.open(newline="", encoding="utf-8") as source:
        reader = csv.reader(source)
        next(reader)
        addresses = [row[0] for row in reader]
    started = time.perf_counter()
    for address in addresses:
        try:
            validate_email(address, check_deliverability=False)
        except EmailNotValidError:
            pass
    return len(addresses) / (time.perf_counter() - started)


def _rss_kb(pid: int) -> int:
    """Resident memory of one process, from /proc (Linux); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@dataclass
class Peaks:
    """Peak resident memory in kB, sampled every 0.1 s: the import, its helper, both."""

    own: int = 0
    helper: int = 0
    together: int = 0


def run_child(
    workdir: Path, csv_path: Path, mode: str, inline: bool
) -> tuple[dict[str, object], float, Peaks]:
    """Import in a child process; return its job counters, seconds taken and peak memory."""
    command = [sys.executable, __file__, "--child", str(workdir), str(csv_path), mode]
    if inline:
        command.append("--inline")
    peaks = Peaks()
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            own = _rss_kb(process.pid)
            helper = sum(_rss_kb(child) for child in _children(process.pid))
            peaks.own = max(peaks.own, own)
            peaks.helper = max(peaks.helper, helper)
            peaks.together = max(peaks.together, own + helper)
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"the import failed (exit {process.returncode})")
    counts = json.loads(output.strip().splitlines()[-1])
    # The kernel's own figure for the import process, which sampling may miss by a little.
    peaks.own = max(peaks.own, int(counts["max_rss_kb"]))
    return counts, elapsed, peaks


def child(workdir: Path, csv_path: Path, mode: str, inline: bool) -> None:
    """In the child: a fresh database, one newsletter, then the import as the command runs it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from newsletter import create_app
    from newsletter.extensions import db
    from newsletter.imports import csvfile, importer, jobs
    from newsletter.models import ImportMode, Newsletter

    app = create_app(
        {
            "ENV": "production",
            # Production's checks hold here too: a key as long as they ask for.
            "SECRET_KEY": secrets.token_urlsafe(32),
            "BASE_URL": "https://news.example.org",
            "INSTANCE_PATH": str(workdir / "instance"),
        }
    )
    with app.app_context():
        db.create_all()
        db.session.add(Newsletter(slug=SLUG, name="Bench"))
        db.session.commit()
        note = "bench: consented elsewhere" if mode == "consented" else None
        job = jobs.create_job(db.session, SLUG, csv_path.name, ImportMode(mode), note)
        report = jobs.report_path(app.instance_path, job.id)
        with jobs.open_source(csv_path) as source, jobs.open_report(report) as out:
            importer.run(
                db.session,
                job,
                source,
                out,
                parallel_after=None if inline else csvfile.PARALLEL_AFTER,
            )
        counts = {
            "status": str(job.status),
            "error": job.error,
            "rows_read": job.rows_read,
            "added": job.added,
            "unchanged": job.unchanged,
            "rejected": job.rejected,
            "report_lines": sum(1 for _ in report.open(encoding="utf-8-sig")) - 1,
        }
        for table in ("subscriber", "subscription", "consent_event", "outbox_message"):
            counts[table] = db.session.execute(db.text(f"SELECT count(*) FROM {table}")).scalar()
    own, helper = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    counts["max_rss_kb"] = own.ru_maxrss
    counts["cpu_seconds"] = own.ru_utime + own.ru_stime
    counts["helper_cpu_seconds"] = helper.ru_utime + helper.ru_stime
    print(json.dumps(counts))


def check(counts: dict, expected: Expected, mode: str) -> list[str]:
    """Differences between what the import wrote and what the file holds."""
    wanted = {
        "status": "done",
        "rows_read": expected.rows,
        "added": expected.valid,
        "unchanged": 0,
        "rejected": expected.invalid + expected.duplicates,
        "report_lines": expected.invalid + expected.duplicates,
        "subscriber": expected.valid,
        "subscription": expected.valid,
        "consent_event": 2 * expected.valid,
        "outbox_message": expected.valid if mode == "confirm" else 0,
    }
    return [
        f"{key}: {counts.get(key)} != {value}"
        for key, value in wanted.items()
        if counts.get(key) != value
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--mode", choices=["confirm", "consented"], default="confirm")
    parser.add_argument("--inline", action="store_true", help="check addresses in one process")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--child", nargs=3, metavar=("WORKDIR", "CSV", "MODE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        workdir, csv_path, mode = args.child
        child(Path(workdir), Path(csv_path), mode, args.inline)
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="bench-import-"))
    try:
        csv_path = workdir / "subscribers.csv"
        started = time.perf_counter()
        expected = generate(csv_path, args.rows)
        size_mb = csv_path.stat().st_size / 1e6
        print(
            f"generated {args.rows:,} rows ({size_mb:.0f} MB): {expected.valid:,} new, "
            f"{expected.invalid:,} invalid, {expected.duplicates:,} repeated "
            f"in {time.perf_counter() - started:.1f} s"
        )
        before = validate_rate(csv_path)
        print(f"bare validate_email: {before:,.0f} addresses/s")
        counts, seconds, peaks = run_child(workdir, csv_path, args.mode, args.inline)
        after = validate_rate(csv_path)
        print(f"bare validate_email again: {after:,.0f} addresses/s")
        baseline = (before + after) / 2
        rate = args.rows / seconds
        ratio = rate / baseline
        how = "one process" if args.inline else "rows checked by a helper process"
        print(
            f"import ({args.mode}, {how}): {seconds:.1f} s, {rate:,.0f} rows/s: "
            f"{counts['added']:,} added, {counts['unchanged']:,} unchanged, "
            f"{counts['rejected']:,} rejected"
        )
        print(
            f"CPU: import process {counts['cpu_seconds']:.1f} s, "
            f"helper {counts['helper_cpu_seconds']:.1f} s"
        )
        below = "" if ratio >= TARGET_RATIO else "  <-- BELOW TARGET"
        print(f"ratio import/validate_email: {ratio:.2f} (target >= {TARGET_RATIO}){below}")
        above = "" if peaks.together / 1024 < TARGET_RSS_MB else "  <-- ABOVE TARGET"
        print(
            f"peak RSS: import process {peaks.own / 1024:.0f} MB, helper "
            f"{peaks.helper / 1024:.0f} MB, both together {peaks.together / 1024:.0f} MB "
            f"(target < {TARGET_RSS_MB} MB){above}"
        )
        print(f"time: {seconds / 60:.1f} min (target <= {TARGET_SECONDS // 60} min)")
        problems = check(counts, expected, args.mode)
        for problem in problems:
            print(f"MISMATCH {problem}")
        return 1 if problems else 0
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    os.environ.pop("NEWSLETTER_DATABASE_URL", None)
    sys.exit(main())

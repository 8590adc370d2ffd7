"""The least a digest sender can do on this machine: plain smtplib and one autocommitted
UPDATE per mail on PostgreSQL, no application code; one process against two.

    .venv/bin/python bench/digest_floor.py [--postgres URL] [--readers 20000] [--rounds 3]

Each process keeps one SMTP connection to Postfix's `smtp-sink` and one database
connection, sends a pre-built mail of a digest's size to each of its share of the rows and
marks each row sent right after the server took the mail, as `newsletter worker` does. It
prints both rates and their ratio: how much a second sender can add on this machine at all,
the scale for `bench/digest.py`'s "2 workers / 1 worker".
"""

from __future__ import annotations

import argparse
import smtplib
import statistics
import subprocess
import time

import psycopg
from digest import floor_rate, free_port  # bench/, beside this script

SIZE = 21_600  # bytes: about the single-list digest of bench/digest.py
SENDER = "news@example.org"


def prepare(server: str, database: str) -> str:
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}"')
        conn.execute(f'CREATE DATABASE "{database}"')
    url = f"{server}/{database}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE delivery (id serial PRIMARY KEY, address text, status text)")
        conn.execute("CREATE INDEX delivery_due ON delivery (status, id)")
    return url


def fill(url: str, readers: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE delivery RESTART IDENTITY")
        conn.execute(
            "INSERT INTO delivery (address, status) SELECT 'reader' || g || '@example.com', "
            "'queued' FROM generate_series(1, %s) g",
            (readers,),
        )
        conn.execute("VACUUM ANALYZE delivery")


def send_share(url: str, port: int, first: int, count: int, body: bytes) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        smtp = smtplib.SMTP("127.0.0.1", port)
        smtp.ehlo()
        for row in range(first, first + count):
            to = f"reader{row}@example.com"
            smtp.sendmail(SENDER, [to], b"To: " + to.encode() + b"\r\n" + body)
            conn.execute("UPDATE delivery SET status = 'sent' WHERE id = %s", (row,), prepare=True)
        smtp.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--database", default="bench_digest_floor")
    parser.add_argument("--readers", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    url = prepare(args.postgres.rstrip("/"), args.database)
    line = b"x" * 76 + b"\r\n"
    body = b"Subject: digest\r\nContent-Type: text/plain\r\n\r\n" + line * (SIZE // len(line))
    port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{port}", "1000"])
    time.sleep(0.5)
    try:
        rates: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(args.rounds):
            for processes in (1, 2):
                rates[processes].append(floor_rate(url, port, args.readers, processes, body))
    finally:
        sink.terminate()
        sink.wait()
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    rounds = ", ".join(f"{b / a:.2f}" for a, b in zip(rates[1], rates[2], strict=True))
    print(f"smtplib + UPDATE per mail: 1 process {one:,.0f} msg/s, 2 processes {two:,.0f} msg/s")
    print(f"2 processes / 1 process: {two / one:.2f} (rounds {rounds})")


if __name__ == "__main__":
    main()

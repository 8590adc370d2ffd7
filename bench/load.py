"""Signups at a steady rate against the production stack while a digest goes out.

Run from the project root (Debian: `apt-get install postfix` for smtp-sink; PostgreSQL on
127.0.0.1:5432 and Redis on 127.0.0.1:6379, as for `make run-prod`):

    .venv/bin/python bench/load.py [--seconds 60] [--rate 50] [--readers 20000]

The stack is the one `make run-prod` starts: gunicorn with gunicorn.conf.py, PostgreSQL, Redis
and two `newsletter worker` processes, here on a fresh database of its own (`--database`,
dropped and made again), a Redis database of its own (`--redis`) and an instance folder in a
temporary folder; all mail goes to Postfix's smtp-sink, whose log of the envelope names each
recipient. A separate process posts the signup form at a steady rate (open loop: each request
leaves at its time whether or not the earlier ones were answered; its latency counts from that
time), each from a reader address of its own in X-Forwarded-For as a proxy would send it, so
the per-IP limit counts in Redis. After `--warmup` seconds (checked, not timed) come the
`--seconds` that are timed; `--digest-after` seconds into them a digest of 10 items to
`--readers` confirmed readers is started. Then it waits (at most `--settle` seconds) for the
mail, and checks:

  * every request was answered 200 (errors: anything else, a timeout, a dropped connection);
  * every accepted signup is a pending subscription in the database and got exactly one
    confirmation mail, and no other address of the run got one;
  * the digest reached every reader exactly once, and the ledger says so.

It prints the figures, then one line `LOAD_JSON {...}` with all of them, and exits 1 when a
check fails. `run(argv)` does the same from Python and returns that summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(BENCH_DIR))

import digest  # noqa: E402  (bench/digest.py: the same newsletter, items and readers)

BIN = Path(sys.executable).parent
SLUG = "daily"  # the list digest.populate makes, and the one readers sign up to
SIGNUP_DOMAIN = "signup.example.org"
REQUEST_TIMEOUT = 10.0


# --- the load generator: a process of its own -------------------------------------------------


@dataclass
class Sample:
    """One signup request: when it was due (wall clock), how long until its answer, which."""

    due: float
    seconds: float
    status: int  # the HTTP status; 0 for no answer (timeout, connection refused or dropped)
    index: int
    error: str = ""


def address(tag: str, index: int) -> str:
    """The address the load's request `index` signs up."""
    return f"load-{tag}-{index}@{SIGNUP_DOMAIN}"


def _request(host: str, tag: str, index: int) -> bytes:
    body = f"email=load-{tag}-{index}%40{SIGNUP_DOMAIN}&newsletter={SLUG}".encode()
    # As nginx passes it on (docs/production.md), each signup from a reader address of its
    # own: the per-IP limit counts in Redis as it would for real readers.
    client = f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"
    head = (
        f"POST /subscribe HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        "Accept: text/html\r\n"
        "User-Agent: newsletter bench/load.py\r\n"
        f"X-Forwarded-For: {client}\r\n"
        "X-Forwarded-Proto: https\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# gunicorn.conf.py keeps an idle connection 5 s; one idle longer than this is not reused, so a
# request never goes out on a connection the server is closing.
_IDLE_AT_MOST = 3.0


class _Connections:
    """Kept-alive HTTP connections to one server, opened as needed up to a limit."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.since: dict[asyncio.StreamWriter, float] = {}
        self.open = 0
        self.freed = asyncio.Condition()

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with self.freed:
            while not self.idle and self.open >= self.limit:
                await self.freed.wait()
            now = time.monotonic()
            while self.idle:
                conn = self.idle.pop()
                if now - self.since.pop(conn[1]) < _IDLE_AT_MOST:
                    return conn
                conn[1].close()
                self.open -= 1
            self.open += 1
        try:
            return await asyncio.open_connection(self.host, self.port)
        except BaseException:
            await self.drop(None)
            raise

    async def give_back(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        async with self.freed:
            self.since[conn[1]] = time.monotonic()
            self.idle.append(conn)
            self.freed.notify()

    async def drop(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
        if conn is not None:
            conn[1].close()
        async with self.freed:
            self.open -= 1
            self.freed.notify()


async def _one(
    pool: _Connections, host: str, tag: str, index: int, due: float, samples: list[Sample]
) -> None:
    conn = None
    status, error = 0, ""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            conn = await pool.take()
            reader, writer = conn
            writer.write(_request(host, tag, index))
            await writer.drain()
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionError("connection closed before an answer")
            status = int(status_line.split()[1])
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            await reader.readexactly(length)
        if close:
            await pool.drop(conn)
        else:
            await pool.give_back(conn)
    except (TimeoutError, OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
        error = type(exc).__name__
        status = 0
        if conn is not None:
            await pool.drop(conn)
    samples.append(Sample(due, time.time() - due, status, index, error))


async def _generate(url: str, rate: float, seconds: float, tag: str, connections: int) -> dict:
    host_port = url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    pool = _Connections(host, int(port or 80), connections)
    samples: list[Sample] = []
    total = int(rate * seconds)
    loop = asyncio.get_running_loop()
    tasks = set()
    behind = 0.0
    start_wall = time.time() + 0.2
    start_mono = loop.time() + 0.2
    for index in range(total):
        at = start_mono + index / rate
        wait = at - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            behind = max(behind, -wait)
        task = asyncio.create_task(
            _one(pool, "news.example.org", tag, index, start_wall + index / rate, samples)
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*list(tasks))
    for _, writer in pool.idle:
        writer.close()
    return {
        "start": start_wall,
        "seconds": seconds,
        "rate": rate,
        "behind_seconds": behind,
        "samples": [asdict(s) for s in samples],
    }


def generate(url: str, rate: float, seconds: float, tag: str, connections: int, out: str) -> None:
    """Post signups at `rate` a second for `seconds`; write what came back to `out` (JSON)."""
    result = asyncio.run(_generate(url, rate, seconds, tag, connections))
    Path(out).write_text(json.dumps(result))


# --- the stack --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Stack:
    """The processes of one run and where they write."""

    workdir: Path
    env: dict[str, str]
    web_url: str
    sink_log: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise SystemExit(f"{name} exited ({process.returncode}):\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.workdir / f"{name}.err"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _start(stack: Stack, name: str, command: Sequence[str], stdout: Path | None = None) -> None:
    with (
        open(stdout or os.devnull, "wb") as out,
        open(stack.workdir / f"{name}.err", "wb") as err,
    ):
        # Sessions of their own: a Ctrl-C reaches this script, which stops them in order.
        stack.processes[name] = subprocess.Popen(
            command, env=stack.env, cwd=ROOT, stdout=out, stderr=err, start_new_session=True
        )


def _stop(process: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_http(stack: Stack, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            with urllib.request.urlopen(stack.web_url + path, timeout=2) as reply:
                if reply.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"{exc.code} {exc.read()[:300]!r}"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise SystemExit(f"{path} not ready after {timeout:.0f} s: {last}\n{stack.tail('gunicorn')}")


@contextmanager
def running_stack(
    args: argparse.Namespace, workdir: Path, app_side: ProcessPoolExecutor
) -> Iterator[Stack]:
    """smtp-sink, gunicorn and the workers on a fresh database, stopped at the end."""
    from sqlalchemy import create_engine, text

    base = args.postgres.rstrip("/")
    admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{args.database}"'))
    admin.dispose()
    instance = workdir / "instance"
    instance.mkdir(mode=0o700)
    sink_port, web_port = free_port(), free_port()
    env = {
        **os.environ,
        "NEWSLETTER_ENV": "production",
        "NEWSLETTER_SECRET_KEY": "bench-" + secrets.token_hex(24),
        "NEWSLETTER_BASE_URL": "https://news.example.org",
        "NEWSLETTER_DATABASE_URL": f"{base}/{args.database}",
        "NEWSLETTER_REDIS_URL": args.redis,
        "NEWSLETTER_INSTANCE_PATH": str(instance),
        "NEWSLETTER_SMTP_URL": f"smtp://127.0.0.1:{sink_port}",
        "NEWSLETTER_BIND": f"127.0.0.1:{web_port}",
        "NEWSLETTER_TRUSTED_PROXIES": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(instance / "prometheus"),
    }
    if args.web_processes:
        env["WEB_CONCURRENCY"] = str(args.web_processes)
    os.makedirs(env["PROMETHEUS_MULTIPROC_DIR"], mode=0o700)
    stack = Stack(workdir, env, f"http://127.0.0.1:{web_port}", workdir / "smtp-sink.err")
    began = time.perf_counter()
    subprocess.run(
        [str(BIN / "newsletter"), "db", "upgrade"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    app_side.submit(digest.populate, env, args.readers).result()
    took = time.perf_counter() - began
    print(f"database {args.database}: {args.readers:,} readers in {took:.1f} s")
    with ExitStack() as stop:
        for name in ("worker-2", "worker-1", "gunicorn", "smtp-sink"):
            stop.callback(lambda n=name: n in stack.processes and _stop(stack.processes[n]))
        # -v logs each SMTP command, without the message: RCPT TO names every recipient.
        sink = ["smtp-sink", "-v", "-u", "nobody", f"127.0.0.1:{sink_port}", "1000"]
        _start(stack, "smtp-sink", sink)
        gunicorn = [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")]
        _start(stack, "gunicorn", gunicorn, stdout=workdir / "access.log")
        for n in range(1, args.workers + 1):
            _start(stack, f"worker-{n}", [str(BIN / "newsletter"), "worker"])
        _wait_http(stack, "/healthz", 60)
        # Ready: the database is migrated and a worker has been seen.
        _wait_http(stack, "/readyz", 60)
        yield stack


# --- the mail seen by smtp-sink ---------------------------------------------------------------


_RCPT = re.compile(rb"RCPT TO:<([^>]*)>", re.IGNORECASE)


class SinkLog:
    """Recipients in smtp-sink's -v log, each with when it was first read here."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.rest = b""
        self.counts: Counter[str] = Counter()
        self.first_seen: dict[str, float] = {}
        self.lock = threading.Lock()

    def read(self) -> None:
        with self.lock, self.path.open("rb") as log:
            log.seek(self.offset)
            chunk = log.read()
            self.offset += len(chunk)
            now = time.time()
            data = self.rest + chunk
            complete, _, self.rest = data.rpartition(b"\n")
            for match in _RCPT.finditer(complete):
                recipient = match.group(1).decode("utf-8", "replace").lower()
                self.counts[recipient] += 1
                self.first_seen.setdefault(recipient, now)

    @contextmanager
    def watched(self, every: float = 0.1) -> Iterator[None]:
        """Read the log every `every` seconds in a thread while the block runs."""
        done = threading.Event()

        def loop() -> None:
            while not done.wait(every):
                self.read()

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            self.read()


# --- a run ------------------------------------------------------------------------------------


def _percentile(values: Sequence[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _digest_state(env: dict[str, str], digest_id: int) -> tuple[str, int, dict[str, int]]:
    """The digest's status, its count of mails sent, and its ledger's rows by status."""
    from sqlalchemy import text

    engine = _engine(env)
    with engine.connect() as conn:
        status, sent = conn.execute(
            text("SELECT status, sent_count FROM digest WHERE id = :id"), {"id": digest_id}
        ).one()
        ledger = dict(
            conn.execute(
                text("SELECT status, count(*) FROM delivery WHERE digest_id = :id GROUP BY status"),
                {"id": digest_id},
            ).all()
        )
    return str(status), int(sent or 0), {str(k): int(v) for k, v in ledger.items()}


def _digest_window(env: dict[str, str], digest_id: int) -> list[float]:
    """When the digest started, and finished if it did (seconds since the epoch)."""
    from sqlalchemy import text

    with _engine(env).connect() as conn:
        row = conn.execute(
            text("SELECT started_at, finished_at FROM digest WHERE id = :id"), {"id": digest_id}
        ).one()
    return [moment.timestamp() for moment in row if moment is not None]


_ENGINES: dict[str, Any] = {}


def _engine(env: dict[str, str]) -> Any:
    from sqlalchemy import create_engine

    url = env["NEWSLETTER_DATABASE_URL"]
    if url not in _ENGINES:
        _ENGINES[url] = create_engine(url, pool_size=1)
    return _ENGINES[url]


def _server_times(access_log: Path) -> list[float]:
    """Seconds gunicorn spent on each signup, from its access log (JSON lines)."""
    times = []
    for line in access_log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("path") == "/subscribe" and entry.get("method") == "POST":
            times.append(float(entry["duration_ms"]) / 1000)
    return times


def _signed_up(env: dict[str, str], tag: str) -> Counter[str]:
    """The run's addresses in the database, each with its subscriptions' statuses."""
    from sqlalchemy import text

    with _engine(env).connect() as conn:
        rows = conn.execute(
            text(
                "SELECT s.email, sub.status FROM subscriber s "
                "JOIN subscription sub ON sub.subscriber_id = s.id "
                "JOIN newsletter n ON n.id = sub.newsletter_id AND n.slug = :slug "
                "WHERE s.email LIKE :pattern"
            ),
            {"slug": SLUG, "pattern": f"load-{tag}-%"},
        ).all()
    return Counter(f"{email.lower()}|{status}" for email, status in rows)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """One run as the command line describes; returns the summary it prints last."""
    args = parser().parse_args(argv)
    if args.generate:
        url, rate, seconds, tag, connections, out = args.generate
        generate(url, float(rate), float(seconds), tag, int(connections), out)
        return {}
    for tool in ("smtp-sink",):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed: apt-get install postfix")
    workdir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    tag = secrets.token_hex(4)
    # The app is made (tables filled, the digest started) in a process of its own: a caller
    # that imports this module keeps its environment, logging and app as they were.
    spawn = multiprocessing.get_context("spawn")
    try:
        with (
            ProcessPoolExecutor(max_workers=1, mp_context=spawn) as app_side,
            running_stack(args, workdir, app_side) as stack,
        ):
            return _measure(args, stack, tag, app_side)
    finally:
        for engine in _ENGINES.values():
            engine.dispose()
        _ENGINES.clear()
        if args.keep:
            print(f"kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _measure(
    args: argparse.Namespace, stack: Stack, tag: str, app_side: ProcessPoolExecutor
) -> dict[str, Any]:
    sink = SinkLog(stack.sink_log)
    results = stack.workdir / "samples.json"
    generator = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--generate",
        stack.web_url,
        str(args.rate),
        str(args.warmup + args.seconds),
        tag,
        str(args.connections),
        str(results),
    ]
    print(
        f"load: {args.rate:g} signups/s for {args.seconds:g} s after {args.warmup:g} s of warm-up "
        f"(open loop, up to "
        f"{args.connections} connections); digest to {args.readers:,} readers "
        f"{args.digest_after:g} s in; {args.workers} workers"
    )
    with sink.watched():
        loader = subprocess.Popen(generator, cwd=ROOT)
        time.sleep(args.warmup + args.digest_after)
        stack.check_alive()
        digest_id, readers, _ = app_side.submit(digest.start_digest, stack.env).result()
        loader.wait()
        if loader.returncode != 0:
            raise SystemExit(f"the load generator failed ({loader.returncode})")
        load = json.loads(results.read_text())
        every = [Sample(**s) for s in load["samples"]]
        # The warm-up's signups are checked like the others, but not timed.
        load["start"] += args.warmup
        samples = [s for s in every if s.due >= load["start"] - 1e-6]
        warmup_errors = sum(1 for s in every if s.status != 200 and s.due < load["start"] - 1e-6)
        accepted = {address(tag, s.index) for s in every if s.status == 200}
        unanswered = {address(tag, s.index) for s in every if s.status != 200}
        # Wait for the mail: the digest's and a confirmation for every accepted signup.
        deadline = time.monotonic() + args.settle
        while time.monotonic() < deadline:
            stack.check_alive()
            status = _digest_state(stack.env, digest_id)[0]
            waiting = sum(1 for a in accepted if a not in sink.counts)
            if waiting == 0 and status == "sent":
                break
            time.sleep(0.5)
        # A mail sent twice would come after the first: a little longer to see it.
        time.sleep(args.grace)
    settled_after = time.time() - (load["start"] + args.seconds)
    digest_status, digest_sent, ledger = _digest_state(stack.env, digest_id)
    digest_window = _digest_window(stack.env, digest_id)
    in_db = _signed_up(stack.env, tag)
    server = _server_times(stack.workdir / "access.log")
    return report(
        args,
        samples,
        warmup_errors,
        load,
        accepted,
        unanswered,
        sink,
        tag,
        (digest_status, digest_sent, ledger, readers, digest_window),
        in_db,
        settled_after,
        server,
    )


def report(
    args: argparse.Namespace,
    samples: list[Sample],
    warmup_errors: int,
    load: dict[str, Any],
    accepted: set[str],
    unanswered: set[str],
    sink: SinkLog,
    tag: str,
    digest_info: tuple[str, int, dict[str, int], int, list[float]],
    in_db: Counter[str],
    settled_after: float,
    server: list[float],
) -> dict[str, Any]:
    """Print the figures and the checks; the summary as a dict (also printed as JSON)."""
    failures: list[str] = []
    ok = [s for s in samples if s.status == 200]
    errors = [s for s in samples if s.status != 200]
    span = max((s.due + s.seconds for s in samples), default=load["start"]) - load["start"]
    latencies = [s.seconds for s in ok]
    status, sent_count, ledger, readers, window = digest_info
    during_from = window[0]
    during_to = window[1] if len(window) > 1 else float("inf")
    during = [s.seconds for s in ok if during_from <= s.due <= during_to]
    outside = [s.seconds for s in ok if not during_from <= s.due <= during_to]

    # Confirmations: one per accepted signup; none to an address that was not signed up.
    prefix = f"load-{tag}-"
    mailed = {a: n for a, n in sink.counts.items() if a.startswith(prefix)}
    missing = sorted(a for a in accepted if a not in mailed)
    twice = sorted(a for a, n in mailed.items() if n > 1)
    strangers = sorted(a for a in mailed if a not in accepted and a not in unanswered)
    # A request that timed out may still have been served: its mail is no fault.
    late = sorted(a for a in mailed if a in unanswered)
    pending = {a for a in accepted if in_db.get(f"{a}|pending") == 1}
    not_in_db = sorted(accepted - pending)
    delays = [
        sink.first_seen[address(tag, s.index)] - (s.due + s.seconds)
        for s in ok
        if address(tag, s.index) in sink.first_seen
    ]

    # The digest: every reader once.
    reader_counts = [sink.counts.get(f"reader{n}@example.com", 0) for n in range(readers)]
    digest_missing = sum(1 for n in reader_counts if n == 0)
    digest_twice = sum(1 for n in reader_counts if n > 1)
    digest_seconds = window[1] - window[0] if len(window) > 1 else float("nan")

    if errors:
        kinds = Counter(s.error or str(s.status) for s in errors)
        failures.append(f"{len(errors)} signups not answered 200: {dict(kinds)}")
    if warmup_errors:
        failures.append(f"{warmup_errors} signups of the warm-up not answered 200")
    if missing:
        failures.append(f"{len(missing)} accepted signups got no confirmation, e.g. {missing[:3]}")
    if twice:
        failures.append(f"{len(twice)} addresses got more than one confirmation, e.g. {twice[:3]}")
    if strangers:
        failures.append(f"{len(strangers)} confirmations to addresses never signed up")
    if not_in_db:
        failures.append(
            f"{len(not_in_db)} accepted signups are not one pending subscription, "
            f"e.g. {not_in_db[:3]}"
        )
    if digest_missing or digest_twice:
        failures.append(
            f"digest: {digest_missing} readers got nothing, {digest_twice} got it more than once"
        )
    if status != "sent" or sent_count != readers or ledger.get("sent", 0) != readers:
        failures.append(f"digest {status}, {sent_count} counted sent, ledger {ledger}")
    behind = float(load["behind_seconds"])
    if behind > 1.0:
        # The generator itself could not keep the rate: the figures are not the server's.
        failures.append(f"the load generator fell {behind:.2f} s behind its schedule")

    ms = 1000.0
    summary: dict[str, Any] = {
        "bench": "load",
        "ok": not failures,
        "rate_target": args.rate,
        "seconds": args.seconds,
        "requests": len(samples),
        "accepted": len(ok),
        "errors": len(errors),
        "warmup_errors": warmup_errors,
        "rate_achieved": round(len(ok) / span, 1) if span > 0 else 0.0,
        "p50_ms": round(_percentile(latencies, 0.50) * ms, 1),
        "p99_ms": round(_percentile(latencies, 0.99) * ms, 1),
        "max_ms": round(max(latencies, default=float("nan")) * ms, 1),
        "server_p50_ms": round(_percentile(server, 0.50) * ms, 1),
        "server_p99_ms": round(_percentile(server, 0.99) * ms, 1),
        "during_digest": {
            "requests": len(during),
            "p50_ms": round(_percentile(during, 0.50) * ms, 1),
            "p99_ms": round(_percentile(during, 0.99) * ms, 1),
        },
        "outside_digest": {
            "requests": len(outside),
            "p50_ms": round(_percentile(outside, 0.50) * ms, 1),
            "p99_ms": round(_percentile(outside, 0.99) * ms, 1),
        },
        "confirmations": {
            "expected": len(accepted),
            "mailed_once": sum(1 for a in accepted if mailed.get(a) == 1),
            "missing": len(missing),
            "duplicates": len(twice),
            "to_strangers": len(strangers),
            "for_unanswered": len(late),
            "not_pending_in_db": len(not_in_db),
            "delay_p50_s": round(_percentile(delays, 0.50), 2),
            "delay_p99_s": round(_percentile(delays, 0.99), 2),
        },
        "digest": {
            "readers": readers,
            "delivered_once": sum(1 for n in reader_counts if n == 1),
            "missing": digest_missing,
            "duplicates": digest_twice,
            "status": status,
            "seconds": round(digest_seconds, 1),
            "rate": round(readers / digest_seconds, 0) if digest_seconds == digest_seconds else 0,
        },
        "settled_after_s": round(settled_after, 1),
        "generator_behind_s": round(behind, 3),
        "failures": failures,
    }
    c, d = summary["confirmations"], summary["digest"]
    print(
        f"signups: {len(samples):,} sent at {args.rate:g}/s, {len(ok):,} answered 200 "
        f"({summary['rate_achieved']:,.1f}/s achieved), {len(errors)} errors"
    )
    print(
        f"latency: p50 {summary['p50_ms']:.1f} ms, p99 {summary['p99_ms']:.1f} ms, "
        f"max {summary['max_ms']:.1f} ms"
    )
    print(
        f"  in gunicorn (its access log, warm-up included): p50 {summary['server_p50_ms']:.1f} ms, "
        f"p99 {summary['server_p99_ms']:.1f} ms"
    )
    inside, other = summary["during_digest"], summary["outside_digest"]
    print(
        f"  while the digest was sent ({len(during):,} requests): p50 {inside['p50_ms']:.1f} ms, "
        f"p99 {inside['p99_ms']:.1f} ms; otherwise ({len(outside):,}): "
        f"p50 {other['p50_ms']:.1f} ms, p99 {other['p99_ms']:.1f} ms"
    )
    print(
        f"confirmations: {c['mailed_once']:,} of {c['expected']:,} accepted signups mailed once, "
        f"{c['missing']} missing, {c['duplicates']} twice, {c['to_strangers']} to strangers; "
        f"{c['not_pending_in_db']} not pending in the database; delay after the 200: "
        f"p50 {c['delay_p50_s']:.2f} s, p99 {c['delay_p99_s']:.2f} s"
    )
    print(
        f"digest: {d['delivered_once']:,} of {readers:,} readers once, {d['missing']} missing, "
        f"{d['duplicates']} twice; {d['status']} in {d['seconds']:.1f} s ({d['rate']:,.0f} msg/s "
        f"while the signups ran)"
    )
    for failure in failures:
        print(f"FAILED: {failure}")
    print("LOAD_JSON " + json.dumps(summary))
    return summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="how long the signups go on")
    p.add_argument("--rate", type=float, default=50.0, help="signups a second (open loop)")
    p.add_argument("--readers", type=int, default=20_000, help="the digest's confirmed readers")
    p.add_argument("--digest-after", type=float, default=5.0, help="seconds into the load")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of signups before, not timed")
    p.add_argument("--workers", type=int, default=2, help="newsletter worker processes")
    p.add_argument("--web-processes", type=int, help="gunicorn processes (WEB_CONCURRENCY)")
    p.add_argument("--connections", type=int, default=64, help="the generator's at most")
    p.add_argument("--settle", type=float, default=180.0, help="seconds to wait for the mail")
    p.add_argument("--grace", type=float, default=3.0, help="seconds to look for second copies")
    p.add_argument(
        "--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432", help="server URL"
    )
    p.add_argument("--database", default="bench_load", help="dropped and made again")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/13", help="rate limits' Redis")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    p.add_argument("--generate", nargs=6, help=argparse.SUPPRESS)
    return p


def main() -> None:
    summary = run()
    if summary and not summary["ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

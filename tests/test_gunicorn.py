"""The production stack for real: gunicorn with two web processes, PostgreSQL, Redis, workers."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from newsletter import trial

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG_URL = os.environ.get("NEWSLETTER_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("NEWSLETTER_TEST_REDIS_URL")
TOKEN = "metrics-" + secrets.token_hex(16)

pytestmark = pytest.mark.skipif(
    not (PG_URL and REDIS_URL),
    reason="needs PostgreSQL and Redis: set NEWSLETTER_TEST_DATABASE_URL and "
    "NEWSLETTER_TEST_REDIS_URL",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def prod_database() -> Iterator[str]:
    """A database of its own beside the test one, made by `make run-prod`'s helper, then gone."""
    assert PG_URL
    url = make_url(PG_URL)
    url = url.set(database=f"{url.database}_prod")
    rendered = url.render_as_string(hide_password=False)
    _drop(rendered)
    assert trial.ensure_database(rendered)
    assert not trial.ensure_database(rendered)  # there now: left alone
    try:
        yield rendered
    finally:
        _drop(rendered)


def _drop(url: str) -> None:
    admin = make_url(url).set(database="postgres")
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            name = make_url(url).database
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def _environment(tmp_path: Path, database: str, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("NEWSLETTER_", "PROMETHEUS_", "WEB_CONCURRENCY"))
    }
    env.update(
        {
            "NEWSLETTER_ENV": "production",
            "NEWSLETTER_DATABASE_URL": database,
            "NEWSLETTER_REDIS_URL": str(REDIS_URL),
            "NEWSLETTER_INSTANCE_PATH": str(tmp_path / "instance"),
            "NEWSLETTER_METRICS_TOKEN": TOKEN,
            "PATH": f"{BIN}:{env.get('PATH', '')}",
            **extra,
        }
    )
    return env


def _get(url: str, headers: dict[str, str] | None = None, data: bytes | None = None):  # type: ignore[no-untyped-def]
    # The local trial's certificate is self-signed.
    context = ssl._create_unverified_context()
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def _wait_for(url: str, status: int = 200, within: float = 60.0) -> tuple[int, str]:
    deadline = time.monotonic() + within
    last: tuple[int, str] = (0, "")
    while time.monotonic() < deadline:
        try:
            code, body, _ = _get(url)
            last = (code, body)
            if code == status:
                return last
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer {status} in {within} s: last {last}")


def _metrics(base: str) -> dict[str, object]:
    code, body, _ = _get(f"{base}/metrics", {"Authorization": f"Bearer {TOKEN}"})
    assert code == 200
    return {family.name: family for family in text_string_to_metric_families(body)}


def _sample(families, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    for family in families.values():
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    return 0.0


def test_gunicorn_with_two_workers_counts_every_signup_once(tmp_path, prod_database):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = _environment(
        tmp_path,
        prod_database,
        NEWSLETTER_SECRET_KEY=secrets.token_urlsafe(48),
        NEWSLETTER_BASE_URL="https://news.example.org",
        NEWSLETTER_BIND=f"127.0.0.1:{port}",
        WEB_CONCURRENCY="2",
    )
    upgrade = subprocess.run(
        [BIN / "newsletter", "db", "upgrade"], env=env, cwd=tmp_path, capture_output=True
    )
    assert upgrade.returncode == 0, upgrade.stderr
    seed = subprocess.run([BIN / "newsletter", "seed-demo"], env=env, cwd=tmp_path)
    assert seed.returncode == 0
    log = (tmp_path / "gunicorn.log").open("w+")
    web = subprocess.Popen(
        [BIN / "gunicorn", "-c", ROOT / "gunicorn.conf.py"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for(f"{base}/healthz")
        # Several requests, so both web processes answer some.
        for n in range(6):
            body = f"email=reader{n}%40example.com&newsletter=daily".encode()
            code, page, headers = _get(f"{base}/subscribe", data=body)
            assert code == 200, page
            assert "Thank you for signing up" in page or "Successfully subscribed" in page
            assert headers["X-Request-ID"]
        drained = subprocess.run(
            [BIN / "newsletter", "worker", "--drain"], env=env, cwd=tmp_path, capture_output=True
        )
        assert drained.returncode == 0, drained.stderr
        mail = next((tmp_path / "instance" / "outbox").glob("*.eml")).read_text()
        confirm = re.search(r"https://news\.example\.org(/confirm/[A-Za-z0-9_.\-]+)", mail)
        assert confirm is not None
        assert _get(f"{base}{confirm.group(1)}")[0] == 200

        families = _metrics(base)
        assert _sample(families, "newsletter_signups_total", newsletter="daily") == 6
        assert (
            _sample(
                families, "newsletter_request_duration_seconds_count", endpoint="public.subscribe"
            )
            == 6
        )
        assert (
            _sample(families, "newsletter_subscriptions", newsletter="daily", status="pending") == 6
        )
        pids = {
            json.loads(line)["process"]
            for line in (tmp_path / "gunicorn.log").read_text().splitlines()
            if '"gunicorn.access"' in line
        }
        assert len(pids) >= 1
    finally:
        web.send_signal(signal.SIGTERM)
        web.wait(timeout=30)
        log.close()
    lines = (tmp_path / "gunicorn.log").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(records) == len([line for line in lines if line.strip()])
    access = [r for r in records if r["logger"] == "gunicorn.access"]
    token = confirm.group(1).removeprefix("/confirm/")
    assert token not in "\n".join(lines)
    assert any(r["path"] == f"/confirm/{token[:8]}\u2026" for r in access)
    assert "reader0@example.com" not in "\n".join(lines)


def test_make_run_prod_starts_answers_and_stops_on_ctrl_c(tmp_path, prod_database):
    port = _free_port()
    env = _environment(
        tmp_path,
        prod_database,
        PROD_PORT=str(port),
        NEWSLETTER_READY_WORKER_WITHIN="60",
    )
    run = subprocess.Popen(
        ["make", "--no-print-directory", "run-prod", f"PROD_PORT={port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a terminal gives it
        text=True,
    )
    base = f"https://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/healthz", within=90)
        code, body = _wait_for(f"{base}/readyz", within=60)
        # Ready once one worker beats; the second may take a few seconds more on a busy machine.
        deadline = time.monotonic() + 60
        while json.loads(body)["checks"]["workers"]["workers"] < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            code, body, _ = _get(f"{base}/readyz")
        checks = json.loads(body)["checks"]
        assert checks["workers"]["workers"] >= 2  # the two it started (and any drain before)
        assert checks["migrations"]["ok"]
        code, page, headers = _get(f"{base}/")
        assert code == 200
        assert headers["Strict-Transport-Security"].startswith("max-age=")
        assert "Content-Security-Policy" in headers
    finally:
        # Ctrl-C: the terminal signals the whole foreground group.
        os.killpg(run.pid, signal.SIGINT)
        try:
            output, _ = run.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            raise
    assert "Production stack: https://localhost:" in output
    # Nothing of it is left running.
    left = subprocess.run(
        ["pgrep", "-g", str(run.pid)], capture_output=True, text=True
    ).stdout.split()
    assert left == []
    with pytest.raises(OSError):
        _get(f"{base}/healthz")
    key = tmp_path / "instance" / "production-secret-key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "instance" / "tls-key.pem").stat().st_mode & 0o777 == 0o600

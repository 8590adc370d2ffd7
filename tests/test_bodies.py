"""Request bodies are bounded whatever their transfer encoding, on both documented servers."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from newsletter.models import QueuedSignup

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LIMIT = 256 * 1024  # MAX_CONTENT_LENGTH's default


def test_declared_too_large_signup_gets_the_413_page(client, db, newsletters):
    body = b"email=reader%40example.com&newsletter=daily&x=" + b"a" * LIMIT
    response = client.post(
        "/subscribe",
        data=body,
        content_type="application/x-www-form-urlencoded",
        headers={"Accept": "text/html"},
    )
    assert response.status_code == 413
    assert response.mimetype == "text/html"
    assert "What was sent is too large." in response.get_data(as_text=True)
    assert db.session.scalar(select(func.count(QueuedSignup.id))) == 0


def test_declared_too_large_body_is_refused_where_nothing_reads_it(client):
    response = client.post("/", data=b"a" * (LIMIT + 1), headers={"Accept": "text/html"})
    assert response.status_code == 413


def test_declared_too_large_api_call_gets_a_problem(client, newsletters):
    body = json.dumps({"email": "reader@example.com", "newsletters": ["daily"], "x": "a" * LIMIT})
    response = client.post("/api/v1/subscriptions", data=body, content_type="application/json")
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["status"] == 413


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(log.read_text())
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"not listening after 60 s:\n{log.read_text()}")


def _server(command: list[str], env: dict[str, str], log: Path, port: int) -> Iterator[int]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, process, log)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _environment(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NEWSLETTER_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    instance = tmp_path / "instance"
    env.update(
        NEWSLETTER_ENV="production",
        NEWSLETTER_INSTANCE_PATH=str(instance),
        NEWSLETTER_DATABASE_URL=f"sqlite:///{instance / 'newsletter.db'}",
        NEWSLETTER_SECRET_KEY=secrets.token_urlsafe(32),
        NEWSLETTER_BASE_URL="https://news.example.org",
    )
    return env


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[int]:
    """`newsletter run`, as `make run` starts it."""
    port = _free_port()
    env = _environment(tmp_path)
    env["NEWSLETTER_ENV"] = "development"
    command = [str(BIN / "newsletter"), "run", "--host", "127.0.0.1", "--port", str(port)]
    yield from _server(command, env, tmp_path / "run.log", port)


@pytest.fixture
def gunicorn_server(tmp_path: Path) -> Iterator[int]:
    """gunicorn with the project's gunicorn.conf.py, one process."""
    port = _free_port()
    env = _environment(tmp_path)
    env.update(NEWSLETTER_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="1")
    command = [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")]
    yield from _server(command, env, tmp_path / "gunicorn.log", port)


def _kernel_buffers() -> int:
    """The most a TCP connection here can hold unread: the receiver's buffer at its largest
    (autotuned up to tcp_rmem's maximum) and the sender's."""
    total = 0
    for name in ("tcp_rmem", "tcp_wmem"):
        try:
            total += int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
        except (OSError, IndexError, ValueError):
            total += 32 * 1024 * 1024
    return total


CHUNK = b"a" * 65536
# Bytes that can leave the client without the server reading them: a server that stops at
# the limit takes no more than this; one that reads on takes everything.
UNREAD = LIMIT + _kernel_buffers() + 1024 * 1024
TOTAL = max(64 * 1024 * 1024, 2 * UNREAD)


def _chunked_post(port: int, path: str, content_type: str, accept: str) -> tuple[bytes, int]:
    """POST a chunked body of TOTAL bytes; return the answer read and the bytes sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sent = 0
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: {content_type}\r\nAccept: {accept}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        )
        sock.sendall(head.encode())
        frame = f"{len(CHUNK):x}\r\n".encode() + CHUNK + b"\r\n"
        try:
            while sent < TOTAL:
                sock.sendall(frame)
                sent += len(CHUNK)
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the server stopped reading: what we want
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return answer, sent
    finally:
        sock.close()


@pytest.mark.parametrize("server", ["dev_server", "gunicorn_server"])
@pytest.mark.parametrize(
    ("path", "content_type", "accept", "kind"),
    [
        ("/subscribe", "application/x-www-form-urlencoded", "text/html", "text/html"),
        ("/api/v1/subscriptions", "application/json", "application/json", "problem+json"),
        ("/", "text/plain", "text/html", None),
    ],
    ids=["page", "api", "unread"],
)
def test_chunked_body_is_cut_at_the_limit(request, server, path, content_type, accept, kind):
    port = request.getfixturevalue(server)
    answer, sent = _chunked_post(port, path, content_type, accept)
    # Never read to the end: the server stopped at the limit, and what left the client
    # beyond it is what the kernel's buffers hold.
    assert sent <= UNREAD, f"{sent} bytes sent, {UNREAD} the most the buffers hold"
    if kind is not None and answer:
        status_line, _, rest = answer.partition(b"\r\n")
        assert b" 413 " in status_line, answer[:300]
        assert kind.encode() in rest.split(b"\r\n\r\n")[0]

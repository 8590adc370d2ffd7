"""The README's first five minutes, followed as a newcomer would, against a fresh `make run`.

Every command block of that section runs as written, in order, and must exit 0; the steps a
newcomer does in the browser (sign up in a box, confirm from the development mailbox) are done
here over HTTP, as the browser would.
"""

from __future__ import annotations

import email
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
READER = "you@example.org"


def first_five_minutes() -> list[str]:
    """The shell blocks of the README's section, in order."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The first five minutes", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _request(url: str, data: dict[str, str] | None = None) -> tuple[int, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with urllib.request.urlopen(url, data=body, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait(what: str, check, within: float = 120.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"waited {within:.0f} s for {what}")


def _up(url: str) -> bool:
    try:
        return _request(url)[0] == 200
    except OSError:
        return False


def _mails(outbox: Path) -> list[EmailMessage]:
    if not outbox.is_dir():
        return []
    return [
        email.message_from_bytes(path.read_bytes(), policy=default)  # type: ignore[misc]
        for path in sorted(outbox.glob("*.eml"))
    ]


def _text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content()  # type: ignore[no-any-return]


def _mail_with(outbox: Path, words: str) -> EmailMessage | None:
    return next((m for m in _mails(outbox) if words in str(m["Subject"])), None)


def test_the_first_five_minutes_work_as_written(tmp_path: Path) -> None:
    blocks = first_five_minutes()
    assert blocks[0] == "make run" and len(blocks) == 3
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    instance = tmp_path / "instance"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    # Only where the instance lives and the port differ from a newcomer's machine.
    env.update(
        {
            "NEWSLETTER_INSTANCE_PATH": str(instance),
            "PORT": str(port),
            "PATH": f"{BIN}:{env.get('PATH', '')}",
        }
    )
    log = (tmp_path / "make-run.log").open("w")
    run = subprocess.Popen(
        ["bash", "-c", blocks[0]],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait("the demo to answer", lambda: _up(f"{base}/"))

        # 1. A reader signs up in the Daily Briefing box.
        status, page = _request(f"{base}/subscribe", {"email": READER, "newsletter": "daily"})
        assert status == 200, page

        # 2. The confirmation mail, its link, the button.
        outbox = instance / "outbox"
        confirmation = _wait("the confirmation", lambda: _mail_with(outbox, "confirm"))
        link = re.search(rf"{re.escape(base)}/confirm/\S+", _text(confirmation))
        assert link is not None
        status, page = _request(link.group(0))
        token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
        form = {"csrf_token": token.group(1)} if token else {}
        status, page = _request(link.group(0), form)
        assert status == 200 and "Subscription confirmed" in page
        _wait("the welcome mail", lambda: _mail_with(outbox, "Welcome"))

        # 3. An admin account: the command asks for the password twice.
        created = subprocess.run(
            ["bash", "-c", blocks[1]],
            cwd=ROOT,
            env=env,
            input="correct horse battery staple\n" * 2,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        assert "Account you@example.org created (admin)." in created.stdout

        # 4. A digest to every confirmed reader, the newcomer among them.
        sent = subprocess.run(
            ["bash", "-c", blocks[2]],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        digests = [
            m
            for m in _mails(outbox)
            if m["List-Unsubscribe-Post"] and "Welcome" not in str(m["Subject"])
        ]
        assert [str(m["To"]) for m in digests] == [READER]
    finally:
        os.killpg(run.pid, signal.SIGINT)
        try:
            run.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        log.close()
    left = subprocess.run(["pgrep", "-g", str(run.pid)], capture_output=True, text=True)
    assert left.stdout.split() == [], (tmp_path / "make-run.log").read_text()

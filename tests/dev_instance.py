"""A newcomer's development instance: `make run` as the README gives it, on a free port, with
its instance folder in a temporary directory; what the tests of the README share."""

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
T = TypeVar("T")


def first_five_minutes() -> list[str]:
    """The shell blocks of the README's section, in order."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The first five minutes", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request(url: str, data: dict[str, str] | None = None) -> tuple[int, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with urllib.request.urlopen(url, data=body, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait(what: str, check: Callable[[], T | None], within: float = 120.0) -> T:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"waited {within:.0f} s for {what}")


def _up(url: str) -> bool:
    try:
        return request(url)[0] == 200
    except OSError:
        return False


def mails(outbox: Path) -> list[EmailMessage]:
    if not outbox.is_dir():
        return []
    return [
        email.message_from_bytes(path.read_bytes(), policy=default)  # type: ignore[misc]
        for path in sorted(outbox.glob("*.eml"))
    ]


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content()  # type: ignore[no-any-return]


def mail_with(outbox: Path, words: str) -> EmailMessage | None:
    return next((m for m in mails(outbox) if words in str(m["Subject"])), None)


@dataclass
class Instance:
    base: str
    outbox: Path
    env: dict[str, str]

    def run(self, block: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """A command block of the README, in a second terminal of this instance."""
        return subprocess.run(
            ["bash", "-c", block],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            **kwargs,  # type: ignore[call-overload]
        )


@contextmanager
def make_run(tmp_path: Path) -> Iterator[Instance]:
    """`make run` (the README's first block) until the demo answers; Ctrl-C at the end, and
    nothing of it left running."""
    port = free_port()
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
    log_path = tmp_path / "make-run.log"
    log = log_path.open("w")
    run = subprocess.Popen(
        ["bash", "-c", first_five_minutes()[0]],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait("the demo to answer", lambda: _up(f"{base}/"))
        yield Instance(base, instance / "outbox", env)
    finally:
        os.killpg(run.pid, signal.SIGINT)
        try:
            run.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        log.close()
    # make returns on Ctrl-C while the worker may still be finishing its current message.
    left = wait_for_exit(run.pid)
    assert left == [], log_path.read_text()


def wait_for_exit(group: int, within: float = 30.0) -> list[str]:
    """The processes of a process group still running after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        found = subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True)
        left = found.stdout.split()
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)

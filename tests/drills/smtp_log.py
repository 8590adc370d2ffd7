"""A real SMTP server for the drills, in a process of its own: `python smtp_log.py PORT LOG`.

It accepts every message and appends one line per recipient to LOG, before it answers 250:
`recipient<TAB>subject<TAB>message-id`. The drills stop it (SIGTERM, or SIGKILL) to take the
mail server away and start it again on the same port; the log outlives it.
"""

from __future__ import annotations

import re
import signal
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

_HEADER = re.compile(rb"^(subject|message-id):[ \t]*(.*(?:\r?\n[ \t].*)*)", re.I | re.M)


class LogHandler:
    """Appends each accepted recipient to the log, flushed at once."""

    def __init__(self, log) -> None:  # type: ignore[no-untyped-def]
        self.log = log
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        head = content.split(b"\r\n\r\n", 1)[0]
        found = {name.lower(): value for name, value in _HEADER.findall(head)}
        subject = re.sub(rb"\s+", b" ", found.get(b"subject", b"")).decode(errors="replace")
        message_id = found.get(b"message-id", b"").strip().decode(errors="replace")
        lines = "".join(f"{to}\t{subject}\t{message_id}\n" for to in envelope.rcpt_tos)
        with self.lock:
            self.log.write(lines)
            self.log.flush()
        return "250 2.0.0 Accepted"


def main() -> None:
    port, path = int(sys.argv[1]), sys.argv[2]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with open(path, "a", encoding="utf-8") as log:
        controller = Controller(
            LogHandler(log),
            hostname="127.0.0.1",
            port=port,
            server_hostname="mail.drill",
            ready_timeout=10,
            decode_data=False,
        )
        controller.start()
        print("ready", flush=True)
        stop.wait()
        controller.stop()


if __name__ == "__main__":
    main()
